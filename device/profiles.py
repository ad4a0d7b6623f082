"""The profile store: one file per enrolled person, in one directory.

Where: ``--profiles DIR`` > ``$VOICEGATE_PROFILES`` > ``$XDG_DATA_HOME/voicegate/profiles`` >
``~/.local/share/voicegate/profiles``. The directory is created 0700 on the first enrolment.
It holds one ``NAME.json`` per person (the file's format and checks: :mod:`.profile_format`).

Writes are atomic (a temporary file in the same directory, fsync, rename, fsync of the
directory). A lock file (``.lock``, ``fcntl.flock``) serialises read-modify-write (enrol,
remove, rename); readers take it shared, so ``listen`` never reads a half-done change.
Every problem is a :class:`ProfileError` (a ModelError: exit 5): no access, never a guess.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import tempfile
from pathlib import Path

import numpy as np

from .audio import PathLike
from .profile_format import (  # noqa: F401  (EmptyStoreError, NameTakenError, OtherEncoderError: the store's errors too)
    NAME_PATTERN, EmptyStoreError, NameTakenError, OtherEncoderError, Profile, ProfileError, Session,
    check_name, check_rows, check_seconds, utc_now,
)

log = logging.getLogger(__name__)

PROFILES_ENV = "VOICEGATE_PROFILES"
SUFFIX = ".json"
LOCK_NAME = ".lock"
MAX_PROFILE_BYTES = 16 * 1024 * 1024
NOT_A_FOLDER = "is not a folder (a file, or a link to something missing: a disk not mounted?)"  # the store path
DIR_MODE, FILE_MODE = 0o700, 0o600


def default_dir() -> Path:
    from .xdg import base

    return base("XDG_DATA_HOME") / "voicegate" / "profiles"


def resolve_dir(path: PathLike | None = None) -> Path:
    """``path`` > ``$VOICEGATE_PROFILES`` > the per-user data directory. An empty ``path`` or
    variable is an error (ProfileError), never "the default": ``--profiles ''`` must not enrol
    into, or decide against, a store nobody named."""
    if path is not None:
        if not str(path).strip():
            raise ProfileError("--profiles is empty: name the profile store folder")
        return Path(path)
    env = os.environ.get(PROFILES_ENV)
    if env is not None and not env.strip():
        raise ProfileError(f"${PROFILES_ENV} is set but empty: name the profile store folder, or unset it")
    return Path(env) if env else default_dir()


class ProfileStore:
    """The profiles in one directory (see the module docstring)."""

    def __init__(self, root: PathLike | None = None):
        self.root = resolve_dir(root)

    def __repr__(self) -> str:
        return f"ProfileStore({str(self.root)!r})"

    def exists(self) -> bool:
        """Has a store been created here (the directory exists)?"""
        return self.root.is_dir()

    def path(self, name: str) -> Path:
        return self.root / (check_name(name) + SUFFIX)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        try:
            entries = os.listdir(self.root)
        except OSError as e:
            raise ProfileError(f"{self.root}: cannot list the profiles ({e.strerror or e})") from None
        out = [e[: -len(SUFFIX)] for e in entries if e.endswith(SUFFIX) and not e.startswith(".")]
        return sorted(n for n in out if NAME_PATTERN.fullmatch(n))

    def signature(self) -> tuple:
        """Changes whenever a profile is added, removed, renamed or rewritten (for reloads).

        From the directory listing and each file's inode, size and mtime: an atomic rewrite
        (a new inode) is always seen; an in-place edit within the same mtime tick (a few ms)
        of the previous write is not, until the next change.
        """
        sig = []
        for n in self.names():
            try:
                st = self.path(n).stat()
            except OSError:
                continue
            sig.append((n, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(sig)

    @contextlib.contextmanager
    def lock(self, exclusive: bool = False):
        """Hold the store's lock file (shared for reading, exclusive for changes)."""
        if exclusive:
            self.create()
        elif not self.root.is_dir():
            yield
            return
        flags = os.O_RDWR | os.O_CREAT if exclusive else os.O_RDONLY  # readers create nothing
        try:
            fd = os.open(self.root / LOCK_NAME, flags, FILE_MODE)
        except OSError as e:
            # a store nobody has written through (no lock file), or a read-only one: read it as is
            # (every file in it is whole: writes are atomic renames)
            if exclusive or e.errno not in (errno.ENOENT, errno.EACCES, errno.EROFS):
                raise ProfileError(f"{self.root}: cannot open the lock file ({e.strerror or e})") from None
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def create(self) -> None:
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as e:
            raise ProfileError(f"{self.root}: cannot create the profile store ({e.strerror or e})") from None

    # -- reading ------------------------------------------------------------------------------
    def load(self, name: str, encoder_sha256: str | None = None, embedding_dim: int | None = None) -> Profile:
        """One profile; refused if unreadable, corrupt, or made with another encoder (another
        sha256, or embeddings of another size than the encoder's ``embedding_dim``)."""
        p = self.path(name)
        try:
            st = p.stat()
            if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read forever
                raise ProfileError(f"{p}: is not a regular file")
            if st.st_size > MAX_PROFILE_BYTES:
                raise ProfileError(f"{p}: too large for a profile")
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ProfileError(f"no profile named {name!r} in {self.root}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ProfileError(f"{p}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
        prof = Profile.from_json(text, str(p))
        if prof.name != name:
            raise ProfileError(f"{p}: holds the profile of {prof.name!r}, not {name!r} (renamed by "
                               "hand? use voicegate profiles rename)")
        problem = prof.mismatch(encoder_sha256, embedding_dim)
        if problem:
            raise OtherEncoderError(problem)
        return prof

    def load_all(self, encoder_sha256: str | None = None, embedding_dim: int | None = None) -> list[Profile]:
        """Every profile (EmptyStoreError if none); any bad profile refuses the whole store."""
        with self.lock():
            names = self.names()
            if not names:
                where = ("holds no profiles" if self.root.is_dir() else "does not exist yet"
                         if not os.path.lexists(self.root) else
                         NOT_A_FOLDER)
                raise EmptyStoreError(
                    f"no one is enrolled: the profile store {self.root} {where}; enrol someone "
                    "with: voicegate enroll NAME FILE... (or --mic)"
                )
            return [self.load(n, encoder_sha256, embedding_dim) for n in names]

    # -- writing ------------------------------------------------------------------------------
    def _write(self, profile: Profile) -> Path:
        """Atomic write + rename (caller holds the exclusive lock)."""
        path = self.path(profile.name)
        data = profile.to_json().encode("utf-8")
        fd, tmp = tempfile.mkstemp(prefix=f".{profile.name}.", suffix=".tmp", dir=self.root)
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._sync_dir()
        return path

    def _sync_dir(self) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def add_session(self, name: str, encoder_sha256: str, embedding_dim: int, session: Session,
                    replace: bool = False) -> Profile:
        """Add an enrolment session to NAME (a new profile, or ``replace`` the old one)."""
        check_name(name)
        try:
            check_rows(np.asarray(session.embeddings), int(embedding_dim))
            check_seconds(session.speech_seconds)
        except ValueError as e:
            raise ProfileError(f"not storing {name!r}: {e}") from None
        with self.lock(exclusive=True):
            prof = None
            if not replace and self.path(name).exists():
                prof = self.load(name, encoder_sha256, embedding_dim)  # another encoder: re-enrol
            if prof is None:
                prof = Profile(name, encoder_sha256, int(embedding_dim))
            prof.sessions.append(session)
            prof.updated = utc_now()
            try:
                self._write(prof)
            except OSError as e:
                raise ProfileError(f"{self.root}: cannot write the profile ({e.strerror or e})") from None
            return prof

    def _must_exist(self, name: str) -> None:
        """remove/rename never create a store (that would end the demo household's first-run role)."""
        if not self.root.is_dir():
            raise ProfileError(f"no profile named {name!r}: there is no profile store at {self.root}")

    def remove(self, name: str) -> None:
        self._must_exist(name)
        with self.lock(exclusive=True):
            try:
                self.path(name).unlink()
            except FileNotFoundError:
                raise ProfileError(f"no profile named {name!r} in {self.root}") from None
            self._sync_dir()

    def rename(self, old: str, new: str) -> Profile:
        self._must_exist(old)
        with self.lock(exclusive=True):
            if self.path(new).exists():
                raise NameTakenError(f"a profile named {new!r} exists already: remove it first, or choose another name")
            prof = self.load(old)
            prof.name, prof.updated = new, utc_now()
            self._write(prof)
            self.path(old).unlink()
            self._sync_dir()
            return prof

"""Speaker corpora: find the recordings of a corpus and the role of each speaker.

Three layouts are understood, and :func:`load_corpus` tells them apart on its own:

* **manifest**: ``manifest.csv`` (columns ``path, speaker, recording``, optional ``seconds``, any
  further columns kept as metadata) with ``roles.json`` beside it, as in ``../shared/data``.
  Rows that share a ``recording`` value are one recording: their files are joined in manifest
  order (the Arabic commands corpus keeps the 1 s clips of one round together this way).
* **daps**: ``<root>/<version>/<speaker>_<script>_<version>.wav`` (``clean/f1_script1_clean.wav``,
  ``iphone_livingroom1/f1_script1_iphone_livingroom1.wav``, ...). The split unit is the script
  read by one speaker (``f1_script1``): every version of it (clean, device, room) is the same
  reading, so all versions stay in one split. By default every version found is used; pass
  ``versions=["clean"]`` for the clean studio takes only.
* **folders**: ``<root>/<speaker>/**/*.wav|flac|ogg``: one folder per speaker, one recording per file.

Roles come from ``roles.json`` beside the corpus (DAPS without one: the study's allowed speakers
f1 f7 f8 m3 m6 m8, everybody else a not-allowed training speaker) and can be overridden.
Speakers that no list names are not-allowed training speakers; a log line says so.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
MANIFEST_NAME = "manifest.csv"
ROLES_NAME = "roles.json"
LAYOUTS = ("auto", "manifest", "daps", "folders")

# The study's allowed DAPS speakers (6 of 20).
DAPS_ALLOWED = ("f1", "f7", "f8", "m3", "m6", "m8")

ROLE_ALLOWED = "allowed"
ROLE_NOT_ALLOWED = "not_allowed_train"
ROLE_HELDOUT = "heldout_impostors"
ROLE_NAMES = (ROLE_ALLOWED, ROLE_NOT_ALLOWED, ROLE_HELDOUT)


class CorpusError(ValueError):
    """The corpus cannot be read (bad layout, bad manifest, conflicting roles)."""


# --- recordings ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recording:
    """One piece of audio of one speaker: one file, or several files joined in order.

    ``recording`` is the split unit: every Recording sharing it (the DAPS versions of one
    script) lands in the same split. ``item`` names this piece uniquely within the corpus.
    """

    paths: tuple[Path, ...]
    speaker: str
    recording: str
    item: str
    seconds: Optional[float] = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def path(self) -> Path:
        return self.paths[0]

    def to_dict(self) -> dict:
        return {
            "paths": [str(p) for p in self.paths],
            "speaker": self.speaker,
            "recording": self.recording,
            "item": self.item,
            "seconds": self.seconds,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Recording":
        return cls(
            paths=tuple(Path(p) for p in d["paths"]),
            speaker=str(d["speaker"]),
            recording=str(d["recording"]),
            item=str(d.get("item", d["recording"])),
            seconds=None if d.get("seconds") is None else float(d["seconds"]),
            meta=dict(d.get("meta", {})),
        )


# --- roles -----------------------------------------------------------------------------------
def _names(values: Optional[Iterable]) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        values = values.split(",")
    out = []
    for v in values:
        v = str(v).strip()
        if v and v not in out:
            out.append(v)
    return tuple(out)


@dataclass(frozen=True)
class Roles:
    """Who the gate lets in, who else training may use, and who is kept out for open-set tests."""

    allowed: tuple[str, ...] = ()
    not_allowed_train: tuple[str, ...] = ()
    heldout_impostors: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "allowed", _names(self.allowed))
        object.__setattr__(self, "not_allowed_train", _names(self.not_allowed_train))
        object.__setattr__(self, "heldout_impostors", _names(self.heldout_impostors))
        seen: dict[str, str] = {}
        for role in ROLE_NAMES:
            for spk in getattr(self, role):
                if spk in seen:
                    raise CorpusError(f"speaker {spk!r} is both {seen[spk]} and {role}")
                seen[spk] = role

    def role_of(self, speaker: str) -> str:
        if speaker in self.allowed:
            return ROLE_ALLOWED
        if speaker in self.heldout_impostors:
            return ROLE_HELDOUT
        return ROLE_NOT_ALLOWED

    def label_of(self, speaker: str) -> int:
        """Class index: 1 = allowed, 0 = not allowed (training speakers and impostors alike)."""
        return 1 if speaker in self.allowed else 0

    def to_dict(self) -> dict:
        return {r: list(getattr(self, r)) for r in ROLE_NAMES}

    @classmethod
    def from_dict(cls, d: dict) -> "Roles":
        unknown = set(d) - set(ROLE_NAMES)
        if unknown:
            raise CorpusError(f"roles: unknown keys {sorted(unknown)} (expected {list(ROLE_NAMES)})")
        return cls(*(d.get(r, ()) for r in ROLE_NAMES))

    @classmethod
    def from_file(cls, path: os.PathLike | str) -> "Roles":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CorpusError(f"{path}: cannot read roles ({e})") from None
        if not isinstance(data, dict):
            raise CorpusError(f"{path}: roles must be a JSON object")
        return cls.from_dict(data)

    def with_overrides(
        self,
        allowed: Optional[Iterable[str]] = None,
        impostors: Optional[Iterable[str]] = None,
    ) -> "Roles":
        """Replace the allowed and/or held-out lists; displaced speakers become training speakers.

        A speaker named in both overrides is an error. Anyone dropped from ``allowed`` or from
        ``heldout_impostors`` becomes a not-allowed training speaker (logged).
        """
        new_allowed = self.allowed if allowed is None else _names(allowed)
        new_heldout = self.heldout_impostors if impostors is None else _names(impostors)
        if impostors is None:  # an allowed override may pull a speaker out of the held-out list
            new_heldout = tuple(s for s in new_heldout if s not in new_allowed)
        elif allowed is None:  # and an impostor override out of the allowed list
            new_allowed = tuple(s for s in new_allowed if s not in new_heldout)
        both = set(new_allowed) & set(new_heldout)
        if both:
            raise CorpusError(f"speakers {sorted(both)} are both allowed and held-out impostors")
        everyone = [*self.allowed, *self.not_allowed_train, *self.heldout_impostors]
        taken = set(new_allowed) | set(new_heldout)
        rest = tuple(s for s in everyone if s not in taken)
        moved = [s for s in rest if s not in self.not_allowed_train]
        if moved:
            log.info("roles override: %s now train as not-allowed speakers", ", ".join(moved))
        return Roles(new_allowed, rest, new_heldout)

    def resolve(self, speakers: Iterable[str]) -> "Roles":
        """These roles with every speaker of the corpus placed; unlisted ones are not-allowed."""
        listed = set(self.allowed) | set(self.not_allowed_train) | set(self.heldout_impostors)
        present = sorted(set(speakers))
        extra = [s for s in present if s not in listed]
        if extra:
            shown = ", ".join(extra[:10]) + (f" (+{len(extra) - 10} more)" if len(extra) > 10 else "")
            log.info("%d speaker(s) not named in the roles become not_allowed_train: %s", len(extra), shown)
        missing = [s for s in self.allowed if s not in set(present)]
        if missing:
            log.warning("allowed speaker(s) with no recordings in the corpus: %s", ", ".join(missing))
        return Roles(self.allowed, (*self.not_allowed_train, *extra), self.heldout_impostors)


# --- corpus ----------------------------------------------------------------------------------
@dataclass
class Corpus:
    root: Path
    layout: str
    recordings: list[Recording]
    roles: Roles
    manifest_path: Optional[Path] = None

    @property
    def speakers(self) -> list[str]:
        return sorted({r.speaker for r in self.recordings})

    def by_speaker(self) -> dict[str, list[Recording]]:
        out: dict[str, list[Recording]] = {}
        for r in self.recordings:
            out.setdefault(r.speaker, []).append(r)
        return out


def _audio_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def _seconds(paths: Sequence[Path]) -> Optional[float]:
    """Duration from the file headers (None if any file cannot be read; preparation reports it)."""
    import soundfile as sf

    total = 0.0
    for p in paths:
        try:
            info = sf.info(str(p))
            total += info.frames / info.samplerate
        except Exception:
            return None
    return total


def _parse_daps_name(stem: str, version: str) -> Optional[tuple[str, str]]:
    """``f1_script1_iphone_livingroom1`` in folder ``iphone_livingroom1`` -> (f1, script1)."""
    suffix = "_" + version
    if not stem.endswith(suffix):
        return None
    head = stem[: -len(suffix)]
    speaker, sep, script = head.partition("_")
    if not sep or not speaker or not script:
        return None
    return speaker, script


def _daps_versions(root: Path) -> list[str]:
    versions = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in d.iterdir():
            if (
                f.suffix.lower() in AUDIO_SUFFIXES
                and not f.name.startswith(".")
                and _parse_daps_name(f.stem, d.name)
            ):
                versions.append(d.name)
                break
    return versions


def detect_layout(root: os.PathLike | str) -> str:
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"{root}: corpus folder not found")
    if (root / MANIFEST_NAME).is_file():
        return "manifest"
    if _daps_versions(root):
        return "daps"
    if any(_audio_files(d) for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        return "folders"
    raise CorpusError(
        f"{root}: no corpus found (expected {MANIFEST_NAME}, DAPS <version>/<speaker>_<script>_"
        "<version>.wav files, or one folder of audio per speaker)"
    )


def load_manifest(root: os.PathLike | str, manifest: Optional[os.PathLike | str] = None) -> list[Recording]:
    """Recordings of a manifest corpus; rows sharing ``recording`` are joined in manifest order."""
    root = Path(root)
    mpath = Path(manifest) if manifest else root / MANIFEST_NAME
    try:
        with open(mpath, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise CorpusError(f"{mpath}: cannot read manifest ({e})") from None
    need = {"path", "speaker", "recording"}
    if not rows or not need <= set(rows[0]):
        raise CorpusError(f"{mpath}: needs a header with columns {sorted(need)} and at least one row")
    groups: dict[tuple[str, str], list[dict]] = {}
    for i, row in enumerate(rows, start=2):
        if not row["path"] or not row["speaker"] or not row["recording"]:
            raise CorpusError(f"{mpath}:{i}: empty path, speaker or recording")
        groups.setdefault((row["speaker"], row["recording"]), []).append(row)
    owners: dict[str, str] = {}
    recordings = []
    for (speaker, rec), grp in groups.items():
        if owners.setdefault(rec, speaker) != speaker:
            raise CorpusError(f"{mpath}: recording {rec!r} belongs to two speakers")
        paths = tuple(Path(r["path"]) if Path(r["path"]).is_absolute() else root / r["path"] for r in grp)
        try:
            seconds = sum(float(r["seconds"]) for r in grp) if "seconds" in grp[0] else None
        except (TypeError, ValueError):
            seconds = None
        extra = [k for k in grp[0] if k not in ("path", "speaker", "recording", "seconds")]
        meta = {k: grp[0][k] for k in extra if all(r.get(k) == grp[0][k] for r in grp)}
        meta["files"] = len(paths)
        recordings.append(Recording(paths, speaker, rec, rec, seconds, meta))
    return recordings


def load_daps(root: os.PathLike | str, versions: Optional[Sequence[str]] = None) -> list[Recording]:
    """Recordings of a DAPS-layout corpus: one per (speaker, script, version) file.

    ``recording`` = ``<speaker>_<script>`` so all versions of one reading share a split;
    ``item`` = the file stem. ``versions=None`` takes every version folder found.
    """
    root = Path(root)
    found = _daps_versions(root)
    if versions is None:
        chosen = found
    else:
        chosen = list(_names(versions))
        missing = [v for v in chosen if v not in found]
        if missing:
            raise CorpusError(f"{root}: DAPS version(s) not found: {missing} (found: {found})")
    recordings = []
    for version in chosen:
        for f in sorted((root / version).iterdir()):
            if f.suffix.lower() not in AUDIO_SUFFIXES or f.name.startswith("."):
                continue  # DAPS archives carry macOS "._*" resource files
            parsed = _parse_daps_name(f.stem, version)
            if parsed is None:
                log.warning("%s: not a <speaker>_<script>_%s file name; ignored", f, version)
                continue
            speaker, script = parsed
            recordings.append(
                Recording(
                    (f,),
                    speaker,
                    f"{speaker}_{script}",
                    f.stem,
                    _seconds((f,)),
                    {"version": version, "script": script},
                )
            )
    return recordings


def load_folders(root: os.PathLike | str) -> list[Recording]:
    """Recordings of a folder-per-speaker corpus: ``<root>/<speaker>/**/<file>``, one per file."""
    root = Path(root)
    recordings = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _audio_files(d)
        stems = [f.stem for f in files]
        for f in files:
            rel = f.relative_to(d)
            name = f.stem if stems.count(f.stem) == 1 else rel.with_suffix("").as_posix()
            rec = f"{d.name}/{name}"
            recordings.append(Recording((f,), d.name, rec, rec, _seconds((f,)), {}))
    return recordings


def default_roles(root: Path, layout: str, speakers: Iterable[str]) -> Roles:
    """``roles.json`` beside the corpus; without one, the study's DAPS roles or no allowed speaker."""
    roles_path = root / ROLES_NAME
    if roles_path.is_file():
        return Roles.from_file(roles_path)
    if layout == "daps":
        log.info("%s: no %s; using the study's DAPS roles (allowed %s)", root, ROLES_NAME, " ".join(DAPS_ALLOWED))
        return Roles(allowed=DAPS_ALLOWED)
    log.warning("%s: no %s and no --allowed list: no speaker is allowed", root, ROLES_NAME)
    return Roles()


def load_corpus(
    root: os.PathLike | str,
    layout: str = "auto",
    versions: Optional[Sequence[str]] = None,
    allowed: Optional[Iterable[str]] = None,
    impostors: Optional[Iterable[str]] = None,
) -> Corpus:
    """Find a corpus's recordings and resolve every speaker's role.

    ``allowed`` / ``impostors`` replace the lists of the default roles (see
    :meth:`Roles.with_overrides`); ``versions`` picks DAPS versions (default: all found).
    """
    root = Path(root).expanduser().resolve()
    if layout not in LAYOUTS:
        raise CorpusError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    if layout == "auto":
        layout = detect_layout(root)
    if versions is not None and layout != "daps":
        raise CorpusError(f"{root}: versions only apply to a DAPS-layout corpus (this one is {layout})")
    if layout == "manifest":
        recordings = load_manifest(root)
    elif layout == "daps":
        recordings = load_daps(root, versions)
    else:
        recordings = load_folders(root)
    if not recordings:
        raise CorpusError(f"{root}: no recordings found ({layout} layout)")
    speakers = {r.speaker for r in recordings}
    roles = default_roles(root, layout, speakers)
    if allowed is not None or impostors is not None:
        roles = roles.with_overrides(allowed, impostors)
    roles = roles.resolve(speakers)
    log.info(
        "%s: %s layout, %d recordings (%d split units), %d speakers",
        root,
        layout,
        len(recordings),
        len({r.recording for r in recordings}),
        len(speakers),
    )
    return Corpus(root, layout, recordings, roles, root / MANIFEST_NAME if layout == "manifest" else None)

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
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .roles import (  # noqa: F401 - re-exported: corpus.Roles, corpus.ROLE_* as before
    ROLE_ALLOWED,
    ROLE_HELDOUT,
    ROLE_NAMES,
    ROLE_NOT_ALLOWED,
    CorpusError,
    Roles,
    _names,
)

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
MANIFEST_NAME = "manifest.csv"
ROLES_NAME = "roles.json"
LAYOUTS = ("auto", "manifest", "daps", "folders")

# The study's allowed DAPS speakers (6 of 20).
DAPS_ALLOWED = ("f1", "f7", "f8", "m3", "m6", "m8")





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
    missing = [p for r in recordings for p in r.paths if not p.is_file()]
    if missing:  # a corpus with holes: its splits would silently differ from what the manifest says
        raise CorpusError(f"{mpath}: {len(missing)} file(s) it lists are missing, e.g. {missing[0]}")
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


def check_roles_file(root: Path, roles: Roles, speakers: set, allowed_overridden: bool,
                     impostors_overridden: bool) -> None:
    """A ``roles.json`` that names nobody, or an allowed / held-out speaker the corpus does not
    have, is refused (CorpusError): a typo in the held-out list would otherwise put the speaker
    meant to be kept out into training, silently. Unknown training speakers are only logged."""
    where = root / ROLES_NAME
    if not (roles.allowed or roles.not_allowed_train or roles.heldout_impostors):
        raise CorpusError(f"{where}: names no speaker (expected lists {', '.join(ROLE_NAMES)}); "
                          "remove the file to place every speaker as a training speaker")
    for role, overridden in (("allowed", allowed_overridden), ("heldout_impostors", impostors_overridden)):
        unknown = sorted(set(getattr(roles, role)) - speakers) if not overridden else []
        if unknown:
            raise CorpusError(f"{where}: {role} names {len(unknown)} speaker(s) the corpus does not have: "
                              f"{', '.join(unknown[:5])} ({len(speakers)} speakers, e.g. "
                              f"{', '.join(sorted(speakers)[:5])})")
    unknown = sorted(set(roles.not_allowed_train) - speakers)
    if unknown:
        log.warning("%s: not_allowed_train names %d speaker(s) with no recordings: %s", where,
                    len(unknown), ", ".join(unknown[:5]))


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
    if (root / ROLES_NAME).is_file():
        check_roles_file(root, roles, speakers, allowed is not None, impostors is not None)
    for flag, names in (("--allowed", allowed), ("--impostors", impostors)):
        unknown = sorted(set(_names(names)) - speakers)
        if unknown:  # a typo would otherwise train on the speaker meant to be held out
            raise CorpusError(f"{flag}: no speaker {', '.join(unknown[:5])} in {root} "
                              f"({len(speakers)} speakers, e.g. {', '.join(sorted(speakers)[:5])})")
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

"""Which corpus a model was trained on, without a machine's paths (issue 14).

A shipped model's contract names its training corpus by **name** (the corpus folder's name, e.g.
``librispeech``), never by an absolute path, and carries a **fingerprint**: the sha256 of the
corpus's ``manifest.csv`` and the recording ids of every split (with a digest of each list).
``voicegate eval`` finds the corpus again with ``--corpus`` or ``$VOICEGATE_SHARED_DATA/<name>``
(:func:`resolve_corpus`) and compares fingerprints (:func:`differences`), so a changed corpus
cannot silently move former training recordings into "test".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterable, Optional

SHARED_DATA_ENV = "VOICEGATE_SHARED_DATA"
FINGERPRINT_VERSION = 1
# config fields that hold paths: a shipped artefact keeps only a name (or nothing) for them
PATH_FIELDS = ("corpus", "cache_dir", "cache", "noise_dir")


class CorpusNotFound(FileNotFoundError):
    """The model's training corpus is not on this machine."""


def is_absolute_path(text: str) -> bool:
    """Does ``text`` look like an absolute path of some machine (POSIX, home-relative, Windows)?"""
    return bool(re.match(r"^(/|~|[A-Za-z]:[\\/]|\\\\)", text))


def absolute_paths(value, where: str = "") -> list[str]:
    """Every string inside ``value`` (nested dicts / lists) that looks like an absolute path."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in absolute_paths(v, f"{where}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in absolute_paths(v, f"{where}[{i}]")]
    if isinstance(value, str) and is_absolute_path(value):
        return [f"{where}: {value}"]
    return []


def portable_data_config(data_config: dict) -> dict:
    """The preparation config with its paths replaced by names: the corpus by its folder name,
    the cache dropped (a machine's folder), a noise folder by its name ("auto"/None kept)."""
    d = dict(data_config)
    if d.get("corpus"):
        d["corpus"] = Path(str(d["corpus"])).expanduser().name
    for key in ("cache_dir", "cache"):
        if key in d:
            d[key] = None
    noise = d.get("noise_dir")
    if noise and str(noise) not in ("auto", "none"):
        d["noise_dir"] = Path(str(noise)).name
    return d


def shared_data_dir() -> Path:
    """The folder that holds the shared corpora: ``$VOICEGATE_SHARED_DATA`` if set, else
    ``shared/data`` beside the repository checkout (``../shared/data`` from its root). The
    benchmarks, the tests and ``models/make_demo.py`` read their default corpora from here."""
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def resolve_corpus(stored: str, override: Optional[str] = None) -> Path:
    """The folder of the corpus a contract names: ``override`` (``--corpus``) if given, else
    ``<shared_data_dir()>/<name>``; a legacy absolute path is used only where it exists."""
    if override:
        return Path(override).expanduser()
    path = Path(str(stored)).expanduser()
    if path.is_absolute() and path.exists():
        return path
    name = path.name  # a name, or the last part of a legacy path
    shared = shared_data_dir() / name
    if shared.exists():
        return shared  # never the current folder: the same command finds the same corpus anywhere
    raise CorpusNotFound(f"the model's training corpus {name!r} is not here: pass --corpus FOLDER "
                         f"or set {SHARED_DATA_ENV} to the folder that holds {name}/")


def _digest(items: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def manifest_sha256(root: Path) -> Optional[str]:
    """sha256 of ``<root>/manifest.csv`` (None for layouts without one: DAPS, folder per speaker)."""
    path = Path(root) / "manifest.csv"
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(root: Path, split_of: Iterable[tuple[str, str]]) -> dict:
    """The corpus fingerprint from ``(recording id, split)`` pairs (any repeats are collapsed)."""
    splits: dict[str, set] = {}
    for rec, split in split_of:
        splits.setdefault(str(split), set()).add(str(rec))
    recordings = {s: sorted(v) for s, v in sorted(splits.items())}
    return {
        "version": FINGERPRINT_VERSION,
        "name": Path(root).name,
        "manifest_sha256": manifest_sha256(root),
        "recordings": recordings,
        "recordings_sha256": {s: _digest(v) for s, v in recordings.items()},
    }


def differences(stored: dict, current: dict) -> list[str]:
    """What differs between a contract's fingerprint and the corpus here (empty: the same)."""
    out = []
    if stored.get("manifest_sha256") != current.get("manifest_sha256"):
        out.append(f"manifest.csv sha256 {str(stored.get('manifest_sha256'))[:12]} in the model, "
                   f"{str(current.get('manifest_sha256'))[:12]} here")
    old, new = stored.get("recordings", {}), current.get("recordings", {})
    for split in sorted(set(old) | set(new)):
        a, b = set(old.get(split, ())), set(new.get(split, ()))
        if a != b:
            out.append(f"split {split}: {len(b - a)} recording(s) not in the model's {split}, "
                       f"{len(a - b)} of its {split} missing")
    moved = set(old.get("train", ())) & (set(new.get("test", ())) | set(new.get("val", ())))
    if moved:
        out.append(f"{len(moved)} former training recording(s) are now in val/test, e.g. {sorted(moved)[:3]}")
    return out


def summary(fp: dict) -> str:
    return json.dumps({s: len(v) for s, v in fp.get("recordings", {}).items()})

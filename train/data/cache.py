"""The prepared cache on disk: the window table, the memory-mapped images, the cache key.

A build is written to a temporary folder and swapped into place at the end (``swap_into_place``),
so an interrupted run never leaves a broken cache behind; ``meta.json`` is written last and marks
the cache complete.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

import numpy as np

from voicegate.device.features import FEATURE_VERSION, IMAGE_SIZE, feature_contract

from voicegate.train.data.config import PREPARE_VERSION, PrepareConfig
from voicegate.train.data.corpus import Corpus, CorpusError, Roles
from voicegate.train.data.splits import ALL_SPLITS, TRAIN

CACHE_FORMAT = "voicegate-prepared-1"
INDEX_COLUMNS = ("speaker", "recording", "item", "split", "label", "role", "aug", "start_s")
IMAGES_DTYPE = np.dtype("<f2")
NPY_HEADER_BYTES = 128  # a v1.0 .npy header for any (N, 224, 224) float16 shape is 128 bytes
FILES = ("images.npy", "index.csv", "meta.json", "report.json")


class WindowIndex:
    """One row per window, as columns of numpy arrays (see INDEX_COLUMNS)."""

    def __init__(self, columns: dict[str, np.ndarray]):
        missing = [c for c in INDEX_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"window index lacks columns {missing}")
        self.speaker = np.asarray(columns["speaker"], dtype=str)
        self.recording = np.asarray(columns["recording"], dtype=str)
        self.item = np.asarray(columns["item"], dtype=str)
        self.split = np.asarray(columns["split"], dtype=str)
        self.label = np.asarray(columns["label"], dtype=np.int64)
        self.role = np.asarray(columns["role"], dtype=str)
        self.aug = np.asarray(columns["aug"], dtype=np.int32)
        self.start_s = np.asarray(columns["start_s"], dtype=np.float32)
        n = {len(getattr(self, c)) for c in INDEX_COLUMNS}
        if len(n) != 1:
            raise ValueError("window index columns differ in length")

    def __len__(self) -> int:
        return len(self.label)

    def column(self, name: str) -> np.ndarray:
        return getattr(self, name)

    def rows(self, idx) -> list[dict]:
        return [{c: getattr(self, c)[i].item() for c in INDEX_COLUMNS} for i in np.atleast_1d(idx)]

    @classmethod
    def from_rows(cls, rows: list[tuple]) -> "WindowIndex":
        cols = list(zip(*rows)) if rows else [[] for _ in INDEX_COLUMNS]
        return cls({c: np.array(v) for c, v in zip(INDEX_COLUMNS, cols)})

    def to_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(INDEX_COLUMNS)
            for i in range(len(self)):
                w.writerow(
                    [
                        self.speaker[i],
                        self.recording[i],
                        self.item[i],
                        self.split[i],
                        int(self.label[i]),
                        self.role[i],
                        int(self.aug[i]),
                        f"{float(self.start_s[i]):.4f}",
                    ]
                )

    @classmethod
    def from_csv(cls, path: Path) -> "WindowIndex":
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(header) != INDEX_COLUMNS:
                raise CorpusError(f"{path}: not a window index (header {header})")
            rows = [tuple(r) for r in reader]
        if not rows:
            return cls.from_rows([])
        cols = list(zip(*rows))
        d = dict(zip(INDEX_COLUMNS, cols))
        d["label"] = np.array(d["label"], dtype=np.int64)
        d["aug"] = np.array(d["aug"], dtype=np.int32)
        d["start_s"] = np.array(d["start_s"], dtype=np.float32)
        return cls({c: np.asarray(v) for c, v in d.items()})


class PreparedCorpus:
    """A prepared cache: ``images`` (float16 memmap, (N, 224, 224)) and its window ``index``."""

    def __init__(self, root: Path, images: np.ndarray, index: WindowIndex, meta: dict, report: dict):
        if images.shape != (len(index), IMAGE_SIZE, IMAGE_SIZE):
            raise CorpusError(f"{root}: images {images.shape} do not match the index ({len(index)} rows)")
        self.root = Path(root)
        self.images = images
        self.index = index
        self.meta = meta
        self.report = report
        self.reused = False  # set by prepare_corpus when an existing cache was returned

    @classmethod
    def open(cls, cache_dir: os.PathLike | str) -> "PreparedCorpus":
        root = Path(cache_dir)
        missing = [f for f in FILES if not (root / f).is_file()]
        if missing:
            raise CorpusError(f"{root}: not a prepared corpus (missing {', '.join(missing)})")
        meta = json.loads((root / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT:
            raise CorpusError(f"{root}: cache format {meta.get('format')!r}, expected {CACHE_FORMAT!r}")
        version = meta.get("feature_contract", {}).get("feature_version")
        if version != FEATURE_VERSION:
            raise CorpusError(
                f"{root}: windows were rendered with feature version {version!r}, this code is "
                f"{FEATURE_VERSION!r}; prepare the corpus again"
            )
        images = np.load(root / "images.npy", mmap_mode="r")
        index = WindowIndex.from_csv(root / "index.csv")
        report = json.loads((root / "report.json").read_text())
        return cls(root, images, index, meta, report)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labels(self) -> np.ndarray:
        return self.index.label

    @property
    def roles(self) -> Roles:
        return Roles.from_dict(self.meta["roles"])

    def indices(self, split: str, aug: bool = True) -> np.ndarray:
        """Row numbers of ``split``; ``aug=False`` leaves out augmented copies."""
        if split not in ALL_SPLITS:
            raise ValueError(f"unknown split {split!r} (choose from {', '.join(ALL_SPLITS)})")
        mask = self.index.split == split
        if not aug:
            mask &= self.index.aug == 0
        return np.flatnonzero(mask)

    def class_counts(self, split: str, aug: bool = True) -> dict[str, int]:
        lab = self.labels[self.indices(split, aug)]
        return {"allowed": int((lab == 1).sum()), "not_allowed": int((lab == 0).sum())}

    def class_weights(self, split: str = TRAIN, aug: bool = True) -> np.ndarray:
        """Inverse-frequency weights [w_not_allowed, w_allowed] (mean 1 over the split's windows)."""
        c = self.class_counts(split, aug)
        return inverse_frequency_weights([c["not_allowed"], c["allowed"]])

    def batch(self, idx) -> np.ndarray:
        """Model input for rows ``idx``: float32 (b, 1, 224, 224) in [0, 1]."""
        idx = np.asarray(idx)
        return np.asarray(self.images[idx], dtype=np.float32)[:, None]


def inverse_frequency_weights(counts) -> np.ndarray:
    """Per-class weights total / (n_classes * count): 1 each for a balanced set, 0 for an absent class."""
    counts = np.asarray(counts, dtype=np.float64)
    w = np.where(counts > 0, counts.sum() / (counts.size * np.maximum(counts, 1)), 0.0)
    return w.astype(np.float32)


def rel_path(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _stat(path: Path) -> list:
    try:
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return [None, None]


def cache_key(cfg: PrepareConfig, corpus: Corpus, noise: list[Path]) -> str:
    """Hash of everything that decides the cache's content."""
    payload = {
        "prepare_version": PREPARE_VERSION,
        "feature_contract": feature_contract(),
        "config": cfg.key_dict(),
        "roles": corpus.roles.to_dict(),
        "recordings": [
            [r.speaker, r.recording, r.item, [[rel_path(p, corpus.root), *_stat(p)] for p in r.paths]]
            for r in corpus.recordings
        ],
        "noise": [[str(p), *_stat(p)] for p in noise],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class ImageWriter:
    """Appends float16 windows to an .npy file whose header is written when it is closed."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "wb")
        self.f.write(b"\0" * NPY_HEADER_BYTES)
        self.n = 0

    def write(self, images: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(images, dtype=IMAGES_DTYPE).tobytes())
        self.n += len(images)

    def close(self) -> None:
        buf = io.BytesIO()
        header = {"descr": IMAGES_DTYPE.str, "fortran_order": False, "shape": (self.n, IMAGE_SIZE, IMAGE_SIZE)}
        np.lib.format.write_array_header_1_0(buf, header)
        if len(buf.getvalue()) != NPY_HEADER_BYTES:  # cannot happen for 3-D shapes; guard anyway
            raise RuntimeError(f"unexpected .npy header size {len(buf.getvalue())}")
        self.f.seek(0)
        self.f.write(buf.getvalue())
        self.f.close()


def existing_key(cache: Path) -> Optional[str]:
    try:
        meta = json.loads((cache / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("key") if meta.get("format") == CACHE_FORMAT else None


def swap_into_place(tmp: Path, cache: Path) -> None:
    old = None
    if cache.exists():
        old = cache.parent / f".{cache.name}.old-{uuid.uuid4().hex[:8]}"
        cache.rename(old)
    tmp.rename(cache)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

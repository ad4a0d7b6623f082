"""``voicegate prepare``: turn a speaker corpus into cached, leak-free spectrogram windows.

Each recording is loaded with the device's ``load_audio``, trimmed with ``trim_silence``, cut
with ``frame_windows`` and rendered with ``spectrogram``: the very featurizer the gate runs.
Training recordings are cut every ``train_hop_seconds`` and also give augmented copies (more
for the allowed class, which is the small one); val, test and held-out recordings are cut every
``eval_hop_seconds``, the device's decision hop, and are never augmented.

The cache folder holds:

* ``images.npy``: float16 (N, 224, 224) windows in [0, 1] (open it with ``mmap_mode="r"``);
* ``index.csv``: one row per window: ``speaker, recording, item, split, label, role, aug, start_s``
  (``split`` in train/val/test/heldout, ``label`` 1 = allowed, ``aug`` 0 = clean, k = copy k,
  ``start_s`` = the window start in the trimmed recording, seconds);
* ``augmentations.csv``: what each augmented copy did (pitch, noise kind, SNR, shift);
* ``meta.json``: the config, the cache key, the feature contract and the roles;
* ``report.json`` / ``report.md``: the split report (windows per speaker and split, seconds
  before and after trimming, class counts, skipped files, leakage computed from the index).

The cache key hashes the config, the corpus files (path, size, mtime), the noise files, the
roles and the feature contract, so a second run with the same inputs reuses the cache, and any
change rebuilds it. A build is written to a temporary folder and renamed into place at the end,
so an interrupted run never leaves a broken cache behind.

Nothing heavy is imported at module level: this module builds the CLI's ``--help``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import numpy as np

from voicegate.device.audio import SAMPLE_RATE, AudioError, load_audio, trim_silence
from voicegate.device.features import (
    FEATURE_VERSION,
    IMAGE_SIZE,
    INFER_HOP_SECONDS,
    TRAIN_HOP_SECONDS,
    WINDOW_SAMPLES,
    feature_contract,
    frame_windows,
    spectrogram,
)

from voicegate.train.data.corpus import ROLE_NAMES, Corpus, CorpusError, Recording, Roles, load_corpus
from voicegate.train.data.splits import ALL_SPLITS, DEFAULT_FRACTIONS, TRAIN, count_heldout_violations, count_leakage
from voicegate.train.data.splits import keyed_rng, split_recordings

log = logging.getLogger(__name__)

PREPARE_VERSION = 1  # bump when preparation changes what it writes for the same inputs
CACHE_FORMAT = "voicegate-prepared-1"
INDEX_COLUMNS = ("speaker", "recording", "item", "split", "label", "role", "aug", "start_s")
IMAGES_DTYPE = np.dtype("<f2")
NPY_HEADER_BYTES = 128  # a v1.0 .npy header for any (N, 224, 224) float16 shape is 128 bytes
RENDER_CHUNK = 64  # windows rendered at once (bounds memory on long recordings)
CACHE_ENV = "VOICEGATE_CACHE"
FILES = ("images.npy", "index.csv", "meta.json", "report.json")


# --- configuration ---------------------------------------------------------------------------
@dataclass
class PrepareConfig:
    corpus: str
    cache_dir: Optional[str] = None  # None: $VOICEGATE_CACHE or ~/.cache/voicegate, then <name>-<key>
    layout: str = "auto"
    allowed: Optional[list[str]] = None  # overrides roles.json's allowed list
    impostors: Optional[list[str]] = None  # overrides roles.json's heldout_impostors list
    versions: Optional[list[str]] = None  # DAPS versions; None = every version found
    seed: int = 0
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    train_hop_seconds: float = TRAIN_HOP_SECONDS
    eval_hop_seconds: float = INFER_HOP_SECONDS
    aug_copies_allowed: int = 4
    aug_copies_other: int = 1
    snr_db: tuple[float, float] = (5.0, 20.0)
    pitch_semitones: float = 1.5
    pitch_prob: float = 0.5
    noise_prob: float = 0.8
    max_shift_seconds: float = TRAIN_HOP_SECONDS
    noise_dir: Optional[str] = "auto"  # "auto": <corpus>/../noise if present; None: synthetic only
    max_recordings_per_speaker: Optional[int] = None  # keep the first N recording ids (tests)
    max_read_seconds: Optional[float] = 3600.0  # decode at most this much of any one file
    progress: bool = True
    force: bool = False  # rebuild even when a matching cache exists

    NOT_IN_KEY = ("cache_dir", "progress", "force")

    def __post_init__(self):
        self.split_fractions = tuple(float(f) for f in self.split_fractions)  # type: ignore[assignment]
        self.snr_db = tuple(float(f) for f in self.snr_db)  # type: ignore[assignment]
        if self.aug_copies_allowed < 0 or self.aug_copies_other < 0:
            raise ValueError("augmented copies must be >= 0")
        if self.train_hop_seconds <= 0 or self.eval_hop_seconds <= 0:
            raise ValueError("window hops must be > 0 seconds")
        if len(self.snr_db) != 2 or self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"snr_db must be (low, high), got {self.snr_db}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["split_fractions"] = list(self.split_fractions)
        d["snr_db"] = list(self.snr_db)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PrepareConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"PrepareConfig: unknown fields {sorted(unknown)}")
        return cls(**d)

    def key_dict(self) -> dict:
        d = self.to_dict()
        for k in self.NOT_IN_KEY:
            d.pop(k, None)
        d["corpus"] = str(Path(self.corpus).expanduser().resolve())
        return d


def default_cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "voicegate"


# --- the window table ------------------------------------------------------------------------
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


# --- helpers ---------------------------------------------------------------------------------
def inverse_frequency_weights(counts) -> np.ndarray:
    """Per-class weights total / (n_classes * count): 1 each for a balanced set, 0 for an absent class."""
    counts = np.asarray(counts, dtype=np.float64)
    w = np.where(counts > 0, counts.sum() / (counts.size * np.maximum(counts, 1)), 0.0)
    return w.astype(np.float32)


def _rel(path: Path, root: Path) -> str:
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
            [r.speaker, r.recording, r.item, [[_rel(p, corpus.root), *_stat(p)] for p in r.paths]]
            for r in corpus.recordings
        ],
        "noise": [[str(p), *_stat(p)] for p in noise],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def limit_recordings(recordings: list[Recording], per_speaker: Optional[int]) -> list[Recording]:
    """Keep the first ``per_speaker`` recording ids (sorted) of each speaker, all their items."""
    if per_speaker is None:
        return recordings
    keep: dict[str, list[str]] = {}
    for r in sorted(recordings, key=lambda r: (r.speaker, r.recording)):
        ids = keep.setdefault(r.speaker, [])
        if r.recording not in ids and len(ids) < per_speaker:
            ids.append(r.recording)
    return [r for r in recordings if r.recording in keep[r.speaker]]


def window_starts(n_samples: int, n_windows: int, hop_seconds: float) -> np.ndarray:
    """Start (samples) of each window ``frame_windows`` cut: the hop grid, the last one end-aligned."""
    if n_samples <= WINDOW_SAMPLES:
        return np.zeros(n_windows, dtype=np.int64)
    hop = max(1, int(round(hop_seconds * SAMPLE_RATE)))
    return np.minimum(np.arange(n_windows, dtype=np.int64) * hop, n_samples - WINDOW_SAMPLES)


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


def render(x: np.ndarray, hop_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``x`` rendered by the device featurizer, and their starts in seconds."""
    windows = frame_windows(x, hop_seconds)
    starts = window_starts(x.size, len(windows), hop_seconds) / SAMPLE_RATE
    images = np.concatenate([spectrogram(windows[i : i + RENDER_CHUNK]) for i in range(0, len(windows), RENDER_CHUNK)])
    return images, starts


@dataclass
class SpeakerStats:
    role: str
    label: int
    recordings: set = field(default_factory=set)
    items: int = 0
    seconds_raw: float = 0.0
    seconds_trimmed: float = 0.0
    windows: dict = field(default_factory=dict)  # split -> {"clean": n, "augmented": n}

    def add_windows(self, split: str, aug: int, n: int) -> None:
        d = self.windows.setdefault(split, {"clean": 0, "augmented": 0})
        d["augmented" if aug else "clean"] += n


def load_recording(rec: Recording, cfg: PrepareConfig, root: Path, skipped: list) -> Optional[np.ndarray]:
    """The joined audio of ``rec``; unreadable files are reported in ``skipped`` and left out."""
    parts = []
    for p in rec.paths:
        try:
            parts.append(load_audio(p, max_seconds=cfg.max_read_seconds))
        except AudioError as e:
            reason = str(e)
            prefix = f"{p}: "
            reason = reason[len(prefix) :] if reason.startswith(prefix) else reason
            log.warning("skipped %s: %s", _rel(p, root), reason)
            skipped.append({"file": _rel(p, root), "recording": rec.item, "reason": reason})
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


# --- preparation -----------------------------------------------------------------------------
def prepare_corpus(cfg: PrepareConfig) -> PreparedCorpus:
    """Prepare ``cfg.corpus`` (or reuse a matching cache) and open the result."""
    from voicegate.train.data.augment import find_noise_dir, noise_files

    t0 = time.perf_counter()
    corpus = load_corpus(cfg.corpus, cfg.layout, cfg.versions, cfg.allowed, cfg.impostors)
    corpus.recordings = sorted(
        limit_recordings(corpus.recordings, cfg.max_recordings_per_speaker),
        key=lambda r: (r.speaker, r.recording, r.item),
    )
    noise_dir = find_noise_dir(corpus.root, cfg.noise_dir)
    noise = list(noise_files(noise_dir))
    key = cache_key(cfg, corpus, noise)
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_root() / f"{corpus.root.name}-{key[:16]}"
    cache = cache.resolve()
    existing = _existing_key(cache)
    if existing == key and not cfg.force:
        try:
            pc = PreparedCorpus.open(cache)
            pc.reused = True
            log.info("reusing the prepared cache %s (key %s)", cache, key[:16])
            return pc
        except (CorpusError, OSError, ValueError) as e:
            log.warning("cache %s is unusable (%s); rebuilding", cache, e)
    elif existing is not None:
        log.info("cache %s was prepared with other inputs%s; rebuilding", cache, " (forced)" if cfg.force else "")
    elif cache.exists() and any(cache.iterdir()):
        raise CorpusError(f"{cache}: exists and is not a voicegate cache; choose another --cache folder")

    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.parent / f".{cache.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _build(cfg, corpus, noise_dir, key, tmp, t0)
        _swap_into_place(tmp, cache)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return PreparedCorpus.open(cache)


def _existing_key(cache: Path) -> Optional[str]:
    try:
        meta = json.loads((cache / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("key") if meta.get("format") == CACHE_FORMAT else None


def _swap_into_place(tmp: Path, cache: Path) -> None:
    old = None
    if cache.exists():
        old = cache.parent / f".{cache.name}.old-{uuid.uuid4().hex[:8]}"
        cache.rename(old)
    tmp.rename(cache)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _build(cfg: PrepareConfig, corpus: Corpus, noise_dir: Optional[Path], key: str, out: Path, t0: float) -> None:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from voicegate.train.data.augment import Augmenter, load_noises

    roles = corpus.roles
    assignment = split_recordings(corpus.recordings, roles, cfg.seed, cfg.split_fractions)
    augmenter = Augmenter(
        noises=load_noises(noise_dir),
        snr_db=cfg.snr_db,
        pitch_semitones=cfg.pitch_semitones,
        pitch_prob=cfg.pitch_prob,
        noise_prob=cfg.noise_prob,
        max_shift_seconds=cfg.max_shift_seconds,
    )
    log.info(
        "preparing %s: %d recordings, noise: %s",
        corpus.root,
        len(corpus.recordings),
        ", ".join(augmenter.noise_kinds()),
    )
    writer = ImageWriter(out / "images.npy")
    rows: list[tuple] = []
    aug_rows: list[dict] = []
    skipped: list[dict] = []
    stats: dict[str, SpeakerStats] = {}
    timing = {"load_trim": 0.0, "render": 0.0, "augment": 0.0}
    try:
        with logging_redirect_tqdm():
            bar = tqdm(corpus.recordings, desc="prepare", unit="rec", disable=None if cfg.progress else True)
            for rec in bar:
                split = assignment[rec.recording]
                role, label = roles.role_of(rec.speaker), roles.label_of(rec.speaker)
                st = stats.setdefault(rec.speaker, SpeakerStats(role, label))
                t = time.perf_counter()
                x = load_recording(rec, cfg, corpus.root, skipped)
                if x is None:
                    continue
                try:
                    speech = trim_silence(x)
                except AudioError as e:
                    files = ", ".join(_rel(p, corpus.root) for p in rec.paths)
                    log.warning("skipped %s: %s", files, e)
                    skipped.append({"file": files, "recording": rec.item, "reason": str(e)})
                    continue
                timing["load_trim"] += time.perf_counter() - t
                st.recordings.add(rec.recording)
                st.items += 1
                st.seconds_raw += x.size / SAMPLE_RATE
                st.seconds_trimmed += speech.size / SAMPLE_RATE
                hop = cfg.train_hop_seconds if split == TRAIN else cfg.eval_hop_seconds
                t = time.perf_counter()
                images, starts = render(speech, hop)
                writer.write(images)
                timing["render"] += time.perf_counter() - t
                base = (rec.speaker, rec.recording, rec.item, split, label, role)
                rows.extend((*base, 0, float(s)) for s in starts)
                st.add_windows(split, 0, len(images))
                if split != TRAIN:
                    continue
                copies = cfg.aug_copies_allowed if label == 1 else cfg.aug_copies_other
                for k in range(1, copies + 1):
                    t = time.perf_counter()
                    y, params = augmenter(speech, keyed_rng(cfg.seed, "augment", rec.item, k))
                    timing["augment"] += time.perf_counter() - t
                    t = time.perf_counter()
                    images, starts = render(y, cfg.train_hop_seconds)
                    writer.write(images)
                    timing["render"] += time.perf_counter() - t
                    shift = params["shift_s"] if y.size < speech.size else 0.0
                    rows.extend((*base, k, float(s) + shift) for s in starts)
                    st.add_windows(split, k, len(images))
                    aug_rows.append({"item": rec.item, "aug": k, **params})
    finally:
        writer.close()
    if not rows:
        raise CorpusError(f"{corpus.root}: no usable recordings (all {len(skipped)} skipped)")
    index = WindowIndex.from_rows(rows)
    index.to_csv(out / "index.csv")
    _write_augmentations(out / "augmentations.csv", aug_rows)
    timing["pitch_shift"] = augmenter.seconds_pitch
    timing["noise"] = augmenter.seconds_noise
    timing["total"] = time.perf_counter() - t0
    report = build_report(corpus, index, stats, skipped, cfg, timing)
    meta = {
        "format": CACHE_FORMAT,
        "key": key,
        "prepare_version": PREPARE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "corpus": str(corpus.root),
        "layout": corpus.layout,
        "config": cfg.to_dict(),
        "feature_contract": feature_contract(),
        "roles": roles.to_dict(),
        "noise_dir": None if noise_dir is None else str(noise_dir),
        "noise_kinds": augmenter.noise_kinds(),
        "n_windows": len(index),
        "image_dtype": IMAGES_DTYPE.name,
        "index_columns": list(INDEX_COLUMNS),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(report_markdown(report))
    (out / "meta.json").write_text(json.dumps(meta, indent=1))  # last: marks the cache complete


def _write_augmentations(path: Path, rows: list[dict]) -> None:
    cols = ["item", "aug", "pitch", "noise", "snr_db", "shift_s"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(rows)


# --- the split report ------------------------------------------------------------------------
def build_report(
    corpus: Corpus,
    index: WindowIndex,
    stats: dict[str, SpeakerStats],
    skipped: list[dict],
    cfg: PrepareConfig,
    timing: dict,
) -> dict:
    roles = corpus.roles
    splits = {}
    for split in ALL_SPLITS:
        m = index.split == split
        clean = m & (index.aug == 0)
        splits[split] = {
            "windows_clean": int(clean.sum()),
            "windows_augmented": int((m & (index.aug > 0)).sum()),
            "allowed_clean": int((clean & (index.label == 1)).sum()),
            "not_allowed_clean": int((clean & (index.label == 0)).sum()),
            "allowed_total": int((m & (index.label == 1)).sum()),
            "not_allowed_total": int((m & (index.label == 0)).sum()),
            "recordings": int(len(set(index.recording[m]))),
            "speakers": int(len(set(index.speaker[m]))),
        }
    speakers = {
        spk: {
            "role": s.role,
            "label": s.label,
            "recordings": len(s.recordings),
            "items": s.items,
            "seconds_raw": round(s.seconds_raw, 2),
            "seconds_trimmed": round(s.seconds_trimmed, 2),
            "windows": s.windows,
        }
        for spk, s in sorted(stats.items(), key=lambda kv: (ROLE_NAMES.index(kv[1].role), kv[0]))
    }
    per_role = {}
    for role in ROLE_NAMES:
        members = [s for s in speakers.values() if s["role"] == role]
        per_role[role] = {
            "speakers": len(members),
            "seconds_raw": round(sum(s["seconds_raw"] for s in members), 1),
            "seconds_trimmed": round(sum(s["seconds_trimmed"] for s in members), 1),
        }
    return {
        "corpus": str(corpus.root),
        "layout": corpus.layout,
        "feature_version": FEATURE_VERSION,
        "n_windows": len(index),
        "hops_seconds": {"train": cfg.train_hop_seconds, "val/test/heldout": cfg.eval_hop_seconds},
        "augmented_copies": {"allowed": cfg.aug_copies_allowed, "not_allowed": cfg.aug_copies_other},
        "roles": {r: len(getattr(roles, r)) for r in ROLE_NAMES},
        "splits": splits,
        "per_role": per_role,
        "speakers": speakers,
        "skipped": skipped,
        "leakage_by_recording": count_leakage(zip(index.recording, index.split)),
        "heldout_violations": count_heldout_violations(zip(index.speaker, index.split), roles),
        "augmented_outside_train": int(((index.aug > 0) & (index.split != TRAIN)).sum()),
        "timing_seconds": {k: round(v, 2) for k, v in timing.items()},
    }


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def split_table(report: dict) -> tuple[list[str], list[list]]:
    header = ["split", "windows (clean)", "windows (aug)", "allowed", "not allowed", "recordings", "speakers"]
    rows = [
        [
            split,
            s["windows_clean"],
            s["windows_augmented"],
            s["allowed_total"],
            s["not_allowed_total"],
            s["recordings"],
            s["speakers"],
        ]
        for split, s in report["splits"].items()
    ]
    return header, rows


def report_markdown(report: dict) -> str:
    lines = [
        f"# Split report: {Path(report['corpus']).name}",
        "",
        f"- corpus: `{report['corpus']}` ({report['layout']} layout), feature version `{report['feature_version']}`",
        f"- windows: {report['n_windows']}; hops: train {report['hops_seconds']['train']} s, "
        f"val/test/heldout {report['hops_seconds']['val/test/heldout']} s",
        f"- augmented copies per train recording: allowed {report['augmented_copies']['allowed']}, "
        f"not allowed {report['augmented_copies']['not_allowed']}",
        f"- **leakage by recording: {report['leakage_by_recording']}** (recording ids found in more than one "
        "split, computed from the window index)",
        f"- held-out violations: {report['heldout_violations']} (held-out impostor windows outside `heldout`, "
        "or others inside it); augmented windows outside train: "
        f"{report['augmented_outside_train']}",
        f"- skipped files: {len(report['skipped'])}",
        "",
        "## Windows per split (allowed / not allowed include augmented copies)",
        "",
        *_table(*split_table(report)),
        "",
        "## Seconds per role, before and after trimming",
        "",
        *_table(
            ["role", "speakers", "seconds raw", "seconds trimmed"],
            [[r, v["speakers"], v["seconds_raw"], v["seconds_trimmed"]] for r, v in report["per_role"].items()],
        ),
        "",
        "## Per speaker (windows: clean+augmented)",
        "",
    ]

    def cell(s: dict, split: str) -> str:
        w = s["windows"].get(split)
        if not w:
            return "0"
        return f"{w['clean']}+{w['augmented']}" if w["augmented"] else str(w["clean"])

    rows = [
        [spk, s["role"], s["recordings"], s["seconds_raw"], s["seconds_trimmed"], *(cell(s, sp) for sp in ALL_SPLITS)]
        for spk, s in report["speakers"].items()
    ]
    lines += _table(["speaker", "role", "recordings", "s raw", "s trimmed", *ALL_SPLITS], rows)
    lines += ["", "## Skipped files", ""]
    if report["skipped"]:
        lines += _table(["file", "reason"], [[s["file"], s["reason"]] for s in report["skipped"]])
    else:
        lines.append("none")
    lines += ["", "## Timing (seconds)", "", *_table(list(report["timing_seconds"]), [list(report["timing_seconds"].values())])]
    return "\n".join(lines) + "\n"


# --- CLI -------------------------------------------------------------------------------------
def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _pair(text: str) -> tuple[float, float]:
    parts = [float(t) for t in text.split(",")]
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}")
    return parts[0], parts[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = PrepareConfig(corpus="")
    parser.add_argument("--corpus", required=True, help="corpus folder (manifest, DAPS or folder-per-speaker layout)")
    parser.add_argument("--cache", help="cache folder (default: $VOICEGATE_CACHE or ~/.cache/voicegate/<name>-<key>)")
    parser.add_argument("--layout", choices=["auto", "manifest", "daps", "folders"], default=d.layout)
    parser.add_argument("--allowed", type=_csv_list, help="allowed speakers, comma separated (overrides roles.json)")
    parser.add_argument("--impostors", type=_csv_list, help="held-out impostor speakers, comma separated (overrides roles.json)")
    parser.add_argument("--versions", type=_csv_list, help="DAPS versions to use, comma separated (default: all found)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--aug-allowed", type=int, default=d.aug_copies_allowed, help="augmented copies per allowed train recording")
    parser.add_argument("--aug-other", type=int, default=d.aug_copies_other, help="augmented copies per other train recording")
    parser.add_argument("--snr", type=_pair, default=d.snr_db, metavar="LOW,HIGH", help="noise SNR range in dB")
    parser.add_argument("--pitch", type=float, default=d.pitch_semitones, help="largest pitch shift in semitones (0: none)")
    parser.add_argument("--pitch-prob", type=float, default=d.pitch_prob, help="share of augmented copies that are pitch shifted")
    parser.add_argument("--noise", default=d.noise_dir, help="noise folder, 'auto' (<corpus>/../noise) or 'none'")
    parser.add_argument("--max-per-speaker", type=int, help="use only the first N recordings of each speaker")
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching cache exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    return PrepareConfig(
        corpus=args.corpus,
        cache_dir=args.cache,
        layout=args.layout,
        allowed=args.allowed,
        impostors=args.impostors,
        versions=args.versions,
        seed=args.seed,
        aug_copies_allowed=args.aug_allowed,
        aug_copies_other=args.aug_other,
        snr_db=args.snr,
        pitch_semitones=args.pitch,
        pitch_prob=args.pitch_prob,
        noise_dir=args.noise,
        max_recordings_per_speaker=args.max_per_speaker,
        force=args.force,
        progress=not args.no_progress,
    )


def summary(pc: PreparedCorpus) -> str:
    r = pc.report
    header, rows = split_table(r)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    lines = [fmt.format(*header), *(fmt.format(*row) for row in rows)]
    lines.append(
        f"leakage by recording: {r['leakage_by_recording']}   held-out violations: {r['heldout_violations']}   "
        f"skipped files: {len(r['skipped'])}"
    )
    state = "reused" if pc.reused else f"prepared in {r['timing_seconds']['total']:.1f} s"
    lines.append(f"cache: {pc.root} ({state}); report: {pc.root / 'report.md'}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
        pc = prepare_corpus(cfg)
    except (CorpusError, ValueError, OSError) as e:
        print(f"voicegate prepare: error: {e}", file=sys.stderr)
        return 2
    print(summary(pc))
    return 0

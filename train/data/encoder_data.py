"""The speaker-encoder data set: every training speaker of every shared corpus, cached once.

``prepare_encoder_data(cfg)`` reads each corpus (manifest + roles.json), and splits its speakers:

* ``allowed`` and ``heldout_impostors`` are NEVER used (they are enrolled and attacked at
  evaluation); a check refuses any overlap;
* of the ``not_allowed_train`` speakers, ``val_speakers[corpus]`` are held out as VALIDATION
  speakers (never trained on; calibration and thresholds are chosen on them), picked seeded and,
  where the manifest has ``gender``/``age``, stratified by gender and child/adult;
* the rest are the TRAINING speakers (one class each).

Speech is selected by the device's detector (``voicegate.device.speech.speech_only``, Silero
VAD), the same frames the device scores. Training windows: ``frame_windows`` every
``hop_seconds`` (at most ``max_windows`` per recording, evenly spread), rendered by the device
featurizer; for each window the clean image plus ``aug_copies`` images of the same window
through a random channel (:mod:`.channel`, every speaker alike), and the GE2E teacher's
embedding of the CLEAN window (:mod:`voicegate.train.models.teacher`). Images are stored as
uint8 (value * 255; 0.31 dB steps) in ``images.npy`` (N, 1 + aug_copies, 224, 224).

Validation speakers: an enrolment of at most ``enrol_seconds`` of speech (their first
recordings; a speaker with one recording enrols from its first half) and 3 s attempts cut from
the rest, each as the device's windows (INFER_HOP_SECONDS), clean. ``val.npz`` holds them.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from voicegate.device.audio import SAMPLE_RATE, AudioError, load_audio
from voicegate.device.features import INFER_HOP_SECONDS, WINDOW_SAMPLES, feature_contract, frame_windows, spectrogram

from .channel import ChannelConfig, random_channel
from .corpus import load_corpus

log = logging.getLogger(__name__)

DATA_FORMAT = "voicegate-encoder-data-1"
DEFAULT_VAL_SPEAKERS = {"speechocean762": 20, "librispeech": 10, "arabic-commands": 3}
ATTEMPT_SECONDS = 3.0


@dataclass
class EncoderDataConfig:
    corpora: list = field(default_factory=list)  # corpus folders (manifest + roles.json)
    cache: str = "cache/encoder"
    noise_dir: Optional[str] = None  # real noise for augmentation (None: coloured noise only)
    hop_seconds: float = 0.5
    max_windows: int = 20  # per recording
    aug_copies: int = 3
    val_speakers: dict = field(default_factory=lambda: dict(DEFAULT_VAL_SPEAKERS))
    val_default: int = 3  # validation speakers of a corpus not named in val_speakers
    enrol_seconds: float = 30.0
    teacher: bool = True
    workers: int = 2
    seed: int = 0
    channel: dict = field(default_factory=lambda: ChannelConfig().to_dict())
    speech: str = "vad"  # "vad" (device/speech.py) or "trim" (audio.trim_silence)
    limit_speakers: int = 0  # > 0: at most this many training speakers per corpus (tiny runs)

    def to_dict(self) -> dict:
        return asdict(self)


# --- speakers --------------------------------------------------------------------------------
def _strata(recs) -> str:
    meta = recs[0].meta
    g = str(meta.get("gender", ""))
    try:
        age = "child" if float(meta.get("age", 99)) <= 15 else "adult"
    except (TypeError, ValueError):
        age = ""
    return f"{g}/{age}"


def split_speakers(corpus, n_val: int, seed: int) -> tuple[list, list]:
    """(training speakers, validation speakers) among the corpus's not_allowed_train speakers."""
    by = corpus.by_speaker()
    pool = sorted(corpus.roles.not_allowed_train)
    rng = np.random.default_rng(seed)
    groups: dict[str, list] = {}
    for s in pool:
        groups.setdefault(_strata(by[s]), []).append(s)
    order = []
    for k in sorted(groups):
        order.append(list(rng.permutation(groups[k])))
    val = []
    while len(val) < min(n_val, len(pool)):  # round-robin over the strata
        for g in order:
            if g and len(val) < n_val:
                val.append(str(g.pop(0)))
    train = [s for s in pool if s not in set(val)]
    forbidden = set(corpus.roles.allowed) | set(corpus.roles.heldout_impostors)
    if forbidden & (set(train) | set(val)):
        raise ValueError("an allowed or held-out speaker reached the encoder data")
    return train, sorted(val)


# --- per-recording work (runs in worker processes) ------------------------------------------
_W: dict = {}


def _init_worker(cfg: dict) -> None:
    import torch

    torch.set_num_threads(1)
    from .augment import load_noises

    _W["cfg"] = cfg
    _W["noises"] = load_noises(cfg["noise_dir"]) if cfg["noise_dir"] else {}
    _W["channel"] = ChannelConfig(**cfg["channel"])
    _W["teacher"] = None
    if cfg["teacher"]:
        from voicegate.train.models.teacher import Teacher

        _W["teacher"] = Teacher(threads=1)


def select(x: np.ndarray, how: str, where: str) -> np.ndarray:
    if how == "vad":
        from voicegate.device.speech import speech_only

        return speech_only(x, where=where)
    from voicegate.device.audio import trim_silence

    return trim_silence(x, where=where)


def load_speech(paths, how: str) -> np.ndarray:
    x = np.concatenate([load_audio(p) for p in paths])
    return select(x, how, str(paths[0]))


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)


def _window_starts(n_samples: int, hop_s: float, cap: int) -> np.ndarray:
    if n_samples <= WINDOW_SAMPLES:
        return np.zeros(1, dtype=np.int64)
    hop = int(round(hop_s * SAMPLE_RATE))
    starts = np.arange(0, n_samples - WINDOW_SAMPLES + 1, hop)
    if cap and starts.size > cap:
        starts = starts[np.linspace(0, starts.size - 1, cap).round().astype(int)]
    return starts


def _cut(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    if x.size <= WINDOW_SAMPLES:
        return frame_windows(x)  # tiles short audio to one window
    return np.stack([x[s : s + WINDOW_SAMPLES] for s in starts])


def _train_job(job):
    """One training recording -> (label, uint8 images (n, V, 224, 224), teacher (n, 256) | None)."""
    label, paths, seed = job
    cfg = _W["cfg"]
    try:
        speech = load_speech(paths, cfg["speech"])
    except AudioError as e:  # NoSpeechError included
        return label, None, None, str(e)
    rng = np.random.default_rng(seed)
    starts = _window_starts(speech.size, cfg["hop_seconds"], cfg["max_windows"])
    clean = _cut(speech, starts)
    versions = [to_uint8(spectrogram(clean))]
    for _ in range(cfg["aug_copies"]):
        y, _params = random_channel(speech, rng, _W["noises"], _W["channel"])
        versions.append(to_uint8(spectrogram(_cut(y, starts))))
    teacher = _W["teacher"].embed_windows(clean) if _W["teacher"] is not None else None
    return label, np.stack(versions, axis=1), teacher, None


def _val_job(job):
    """One validation speaker -> (speaker index, enrol uint8 (n, 224, 224), [attempt uint8 ...])."""
    index, rec_paths = job
    cfg = _W["cfg"]
    speeches = []
    for paths in rec_paths:
        try:
            speeches.append(load_speech(paths, cfg["speech"]))
        except AudioError:
            continue
    enrol, attempts = enrolment_split(speeches, cfg["enrol_seconds"])
    if enrol is None:
        return index, None, []
    enrol_img = to_uint8(spectrogram(frame_windows(enrol, INFER_HOP_SECONDS)))
    att = [to_uint8(spectrogram(frame_windows(a, INFER_HOP_SECONDS))) for a in attempts]
    return index, enrol_img, att


def enrolment_split(speeches: list, enrol_seconds: float) -> tuple:
    """(enrolment audio of <= enrol_seconds, [3 s attempts]) from one speaker's recordings in order.

    Whole recordings go to enrolment while they fit (at most half of them); a speaker with one
    recording enrols from its first half (capped). Attempts: consecutive 3 s pieces of the rest
    (a final piece of at least 1.5 s is kept)."""
    cap = int(enrol_seconds * SAMPLE_RATE)
    if not speeches:
        return None, []
    if len(speeches) == 1:
        x = speeches[0]
        half = min(x.size // 2, cap)
        enrol, rest = x[:half], [x[half:]]
    else:
        enrol_parts, used = [], 0
        for i, s in enumerate(speeches[: len(speeches) // 2]):
            if used + s.size > cap and enrol_parts:
                break
            enrol_parts.append(s[: cap - used])
            used += enrol_parts[-1].size
        enrol, rest = np.concatenate(enrol_parts), speeches[len(enrol_parts):]
    n = int(ATTEMPT_SECONDS * SAMPLE_RATE)
    attempts = []
    for r in rest:
        for s in range(0, r.size, n):
            piece = r[s : s + n]
            if piece.size >= n // 2:
                attempts.append(piece)
    return (enrol if enrol.size >= SAMPLE_RATE // 2 else None), attempts


# --- the whole data set ------------------------------------------------------------------------
def same_data(a: dict, b: dict) -> bool:
    """Do two configs make the same data (folders compared resolved; worker count ignored)?"""

    def key(d: dict) -> dict:
        d = {k: v for k, v in json.loads(json.dumps(d)).items() if k not in ("workers", "cache")}
        d["corpora"] = [str(Path(c).expanduser().resolve()) for c in d.get("corpora", [])]
        if d.get("noise_dir"):
            d["noise_dir"] = str(Path(d["noise_dir"]).expanduser().resolve())
        return d

    return key(a) == key(b)


def prepare_encoder_data(cfg: EncoderDataConfig) -> Path:
    """Build (or reuse) the cache ``cfg.cache``; returns its folder."""
    from tqdm import tqdm

    out = Path(cfg.cache)
    meta_path = out / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if same_data(meta.get("config", {}), cfg.to_dict()) and meta.get("feature_contract") == feature_contract():
            log.info("%s: reusing the prepared encoder data", out)
            return out
        log.warning("%s: prepared with other settings or another featurizer (speech detector, "
                    "spectrogram): preparing it again (runs trained on it can no longer be exported from it)", out)
    out.mkdir(parents=True, exist_ok=True)
    speakers, val_speakers, train_jobs, val_jobs, per_corpus = [], [], [], [], {}
    seq = np.random.SeedSequence(cfg.seed)
    for root in cfg.corpora:
        corpus = load_corpus(root)
        name = Path(root).name
        n_val = int(cfg.val_speakers.get(name, cfg.val_default))
        train, val = split_speakers(corpus, n_val, cfg.seed)
        if cfg.limit_speakers > 0:
            train = train[: cfg.limit_speakers]
        by = corpus.by_speaker()
        for s in train:
            label = len(speakers)
            speakers.append(f"{name}/{s}")
            for rec, child in zip(by[s], seq.spawn(len(by[s]))):
                train_jobs.append((label, [str(p) for p in rec.paths], child))
        for s in val:
            val_jobs.append((len(val_speakers), [[str(p) for p in r.paths] for r in by[s]]))
            val_speakers.append(f"{name}/{s}")
        per_corpus[name] = {"training_speakers": len(train), "validation_speakers": len(val),
                            "validation": val, "excluded_allowed": len(corpus.roles.allowed),
                            "excluded_heldout": len(corpus.roles.heldout_impostors),
                            "training_recordings": sum(len(by[s]) for s in train)}
    if not train_jobs:
        raise ValueError("no training speakers: every speaker of the corpora is allowed, held out or kept "
                         "for validation (give more speakers, or fewer validation speakers)")
    t0 = time.time()
    labels, images, teacher, skipped = [], [], [], []
    ctx = mp.get_context("fork")
    with ctx.Pool(max(1, cfg.workers), initializer=_init_worker, initargs=(cfg.to_dict(),)) as pool:
        for label, img, t, err in tqdm(pool.imap(_train_job, train_jobs, chunksize=4),
                                       total=len(train_jobs), desc="encoder data: training", unit="rec"):
            if img is None:
                skipped.append(err)
                continue
            labels.append(np.full(len(img), label, np.int32))
            images.append(img)
            if t is not None:
                teacher.append(t)
        val_enrol, val_attempts = {}, {}
        for index, enrol, att in tqdm(pool.imap(_val_job, val_jobs), total=len(val_jobs),
                                      desc="encoder data: validation", unit="spk"):
            if enrol is not None and att:
                val_enrol[index], val_attempts[index] = enrol, att
    if not labels:
        raise ValueError(f"no training recording gave a usable window ({len(skipped)} skipped, e.g. "
                         f"{skipped[0] if skipped else '?'})")
    labels = np.concatenate(labels)
    np.save(out / "labels.npy", labels)
    arr = np.lib.format.open_memmap(out / "images.npy", mode="w+", dtype=np.uint8,
                                    shape=(labels.size, *images[0].shape[1:]))
    i = 0
    for img in images:
        arr[i : i + len(img)] = img
        i += len(img)
    arr.flush()
    del arr, images
    if teacher:
        np.save(out / "teacher.npy", np.concatenate(teacher))
    _save_val(out / "val.npz", val_enrol, val_attempts)
    for name, d in per_corpus.items():
        mine = [i for i, s in enumerate(speakers) if s.startswith(name + "/")]
        d["training_windows"] = int(np.isin(labels, mine).sum())
    counts = np.bincount(labels, minlength=len(speakers))
    meta = {
        "format": DATA_FORMAT,
        "config": cfg.to_dict(),
        "feature_contract": feature_contract(),  # which frames were selected and how they render
        "speakers": speakers,
        "validation_speakers": [val_speakers[i] for i in sorted(val_enrol)],
        "windows": int(labels.size),
        "versions": 1 + cfg.aug_copies,
        "windows_per_speaker": {"min": int(counts.min()), "median": float(np.median(counts)), "max": int(counts.max())},
        "per_corpus": per_corpus,
        "skipped_recordings": len(skipped),
        "skipped_examples": skipped[:5],
        "validation_attempts": int(sum(len(a) for a in val_attempts.values())),
        "seconds": round(time.time() - t0, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return out


def _save_val(path: Path, enrol: dict, attempts: dict) -> None:
    keys = sorted(enrol)
    imgs, rows = [], []  # rows: (speaker, attempt id (-1 = enrolment))
    for k, spk in enumerate(keys):
        imgs.append(enrol[spk])
        rows += [(k, -1)] * len(enrol[spk])
        for j, a in enumerate(attempts[spk]):
            imgs.append(a)
            rows += [(k, j)] * len(a)
    np.savez(path, images=np.concatenate(imgs), rows=np.asarray(rows, np.int32))


# --- reading it back ---------------------------------------------------------------------------
def speaker_subset(speakers: list, labels: np.ndarray, fraction: float, seed: int) -> tuple:
    """Train on a share of the training speakers (the speaker-count ablation): the same share of each
    corpus's speakers (at least 2), drawn with ``seed``. Returns (window mask, labels renumbered
    0..m-1, the chosen speakers). The validation speakers are not touched."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the speaker fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    by_corpus: dict = {}
    for k, s in enumerate(speakers):
        by_corpus.setdefault(s.split("/")[0], []).append(k)
    chosen = sorted(int(k) for ks in by_corpus.values()
                    for k in rng.permutation(ks)[: max(2, round(fraction * len(ks)))])
    new = np.full(len(speakers), -1, np.int64)
    new[chosen] = np.arange(len(chosen))
    mask = new[labels] >= 0
    return mask, new[labels[mask]], [speakers[k] for k in chosen]


class EncoderData:
    """The cache: ``images`` (memmap uint8), ``labels``, ``teacher`` (or None), ``meta``, validation."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        if self.meta.get("format") != DATA_FORMAT:
            raise ValueError(f"{self.folder}: not encoder data ({DATA_FORMAT})")
        self.images = np.load(self.folder / "images.npy", mmap_mode="r")
        self.labels = np.load(self.folder / "labels.npy")
        t = self.folder / "teacher.npy"
        self.teacher = np.load(t) if t.is_file() else None
        v = np.load(self.folder / "val.npz")
        self.val_images, self.val_rows = v["images"], v["rows"]

    @property
    def n_speakers(self) -> int:
        return len(self.meta["speakers"])

    def validation(self) -> tuple[list, list]:
        """(enrolment images per speaker, [(speaker, attempt images)]) as float32 in [0, 1]."""
        rows, imgs = self.val_rows, self.val_images
        enrol, attempts = [], []
        for k in np.unique(rows[:, 0]):
            mine = rows[:, 0] == k
            enrol.append(imgs[mine & (rows[:, 1] < 0)].astype(np.float32) / 255.0)
            for j in np.unique(rows[mine & (rows[:, 1] >= 0), 1]):
                attempts.append((int(k), imgs[mine & (rows[:, 1] == j)].astype(np.float32) / 255.0))
        return enrol, attempts


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))

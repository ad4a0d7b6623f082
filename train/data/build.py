"""Building a prepared cache: load each recording, keep the frames the device's speech detector
selects (:func:`voicegate.device.speech.speech_only`, exactly what the gate scores), cut and
render its windows, augment the training recordings (the same copies for every class), add the
pure non-speech "not allowed" windows, and write the images, the window index and the report.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from voicegate.device.audio import SAMPLE_RATE, AudioError, load_audio
from voicegate.device.speech import speech_only
from voicegate.device.features import WINDOW_SAMPLES, feature_contract, frame_windows, spectrogram

from voicegate.train.data.cache import CACHE_FORMAT, IMAGES_DTYPE, INDEX_COLUMNS, ImageWriter, WindowIndex, rel_path
from voicegate.train.data.config import PREPARE_VERSION, PrepareConfig
from voicegate.train.data.corpus import Corpus, CorpusError, Recording
from voicegate.train.data.fingerprint import fingerprint
from voicegate.train.data.splits import TRAIN, keyed_rng, split_recordings

log = logging.getLogger(__name__)

RENDER_CHUNK = 64  # windows rendered at once (bounds memory on long recordings)
NONSPEECH_ROLE = "nonspeech"  # index role of the pure non-speech windows (label 0, train split)


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
            log.warning("skipped %s: %s", rel_path(p, root), reason)
            skipped.append({"file": rel_path(p, root), "recording": rec.item, "reason": reason})
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def build(cfg: PrepareConfig, corpus: Corpus, noise_dir: Optional[Path], key: str, out: Path, t0: float) -> None:
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
                    speech = speech_only(x)
                except AudioError as e:  # NoSpeechError too: the device would not decide it
                    files = ", ".join(rel_path(p, corpus.root) for p in rec.paths)
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
                for k in range(1, cfg.aug_copies + 1):
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
        t = time.perf_counter()
        nonspeech = add_nonspeech(cfg, augmenter.noises, writer, rows)
        timing["nonspeech"] = time.perf_counter() - t
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
    from voicegate.train.data.split_report import build_report, report_markdown

    report = build_report(corpus, index, stats, skipped, cfg, timing)
    report["nonspeech"] = nonspeech
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
        # every recording's split, kept or skipped: what eval compares its own split against
        "fingerprint": fingerprint(corpus.root, ((r.recording, assignment[r.recording]) for r in corpus.recordings)),
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


def add_nonspeech(cfg: PrepareConfig, noises: dict, writer: ImageWriter, rows: list) -> dict:
    """Write ``cfg.nonspeech_windows`` pure non-speech train windows (label 0) -> {name: windows}.

    The kinds take turns (:data:`~voicegate.train.data.augment.NONSPEECH_KINDS`: a stretch of a
    noise file, white / pink / brown noise, mains hum over near-silence), each at a random level.
    They are rendered without the speech detector: they stand for whatever sound gets past it.
    """
    from voicegate.train.data.augment import NONSPEECH_DBFS, NONSPEECH_KINDS, nonspeech_clip

    counts: dict[str, int] = {}
    for i in range(cfg.nonspeech_windows):
        rng = keyed_rng(cfg.seed, "nonspeech", str(i))
        kind = NONSPEECH_KINDS[i % len(NONSPEECH_KINDS)]
        clip, name = nonspeech_clip(kind, WINDOW_SAMPLES, rng, noises, float(rng.uniform(*NONSPEECH_DBFS)))
        images, _ = render(clip, cfg.train_hop_seconds)
        writer.write(images)
        speaker = f"{NONSPEECH_ROLE}:{name}"
        rows.extend((speaker, f"{speaker}:{i}", f"{speaker}:{i}", TRAIN, 0, NONSPEECH_ROLE, 0, 0.0) for _ in images)
        counts[name] = counts.get(name, 0) + len(images)
    return {"windows": int(sum(counts.values())), "per_kind": counts}

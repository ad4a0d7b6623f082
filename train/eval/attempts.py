"""Door attempts: cut a recording's speech (the device's speech detector) into attempts and
decide each with every model's gate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voicegate.device.audio import SAMPLE_RATE, AudioError
from voicegate.device.features import INFER_HOP_SECONDS, featurize
from voicegate.device.policy import DENIED, GRANTED, UNCERTAIN
from voicegate.device.speech import speech_only

from voicegate.train.eval.protocol import ATTEMPT_SECONDS, MIN_ATTEMPT_SECONDS, EvalConfig

FAILED = "FAILED"  # the gate could not use the attempt's audio: no access (fail closed)
OUTCOMES = (GRANTED, DENIED, UNCERTAIN, FAILED)


def cut_attempts(
    speech: np.ndarray,
    attempt_seconds: float = ATTEMPT_SECONDS,
    min_seconds: float = MIN_ATTEMPT_SECONDS,
    sample_rate: int = SAMPLE_RATE,
) -> list[np.ndarray]:
    """Consecutive, non-overlapping attempts of ``attempt_seconds`` of speech.

    The tail shorter than one attempt is dropped; audio shorter than one attempt but at least
    ``min_seconds`` long is a single (shorter) attempt.
    """
    if attempt_seconds <= 0:
        raise ValueError(f"attempt_seconds must be > 0, got {attempt_seconds}")
    n = int(round(attempt_seconds * sample_rate))
    full = speech.size // n
    if full == 0:
        return [speech] if speech.size >= min_seconds * sample_rate else []
    return [speech[i * n : (i + 1) * n] for i in range(full)]


@dataclass
class Attempts:
    """One row per attempt (and the windows of each attempt), shared by every model."""

    speaker: list = field(default_factory=list)
    recording: list = field(default_factory=list)
    role: list = field(default_factory=list)  # allowed / not_allowed_train / heldout_impostors
    label: list = field(default_factory=list)  # 1 = allowed
    windows: list = field(default_factory=list)  # windows per attempt (0 = failed)

    def add(self, speaker: str, recording: str, role: str, label: int, windows: int) -> None:
        self.speaker.append(speaker)
        self.recording.append(recording)
        self.role.append(role)
        self.label.append(int(label))
        self.windows.append(int(windows))

    def __len__(self) -> int:
        return len(self.label)

    def arrays(self) -> dict:
        return {k: np.asarray(getattr(self, k)) for k in ("speaker", "recording", "role", "label", "windows")}


@dataclass
class ModelScores:
    """What one model said about every attempt (and every window) of an evaluation."""

    name: str
    p_allow: list = field(default_factory=list)  # per attempt (0.0 for a failed attempt)
    uncertainty: list = field(default_factory=list)  # the deciding measure (inf when failed)
    decision: list = field(default_factory=list)  # GRANTED / DENIED / UNCERTAIN / FAILED
    window_p: list = field(default_factory=list)  # per window: mean p over the samples
    window_attempt: list = field(default_factory=list)  # attempt row of each window
    latency_ms: list = field(default_factory=list)  # featurize + predict + decide, per attempt

    def add_failed(self) -> None:
        self.p_allow.append(0.0)
        self.uncertainty.append(float("inf"))
        self.decision.append(FAILED)


def load_gates(cfg: EvalConfig) -> dict:
    """{name: Gate} for the configured models (names: file stems, made unique)."""
    from voicegate.device.runtime import Gate

    if cfg.models:
        specs = [(str(m), None) for m in cfg.models]
    else:
        methods = ["mc", "ensemble"] if cfg.method == "both" else [cfg.method]
        specs = [(None, m) for m in methods]
    gates = {}
    for i, (path, method) in enumerate(specs):
        gate = Gate.load(path, method=method if path is None else None, threads=cfg.threads,
                         seed=cfg.seed if i == 0 else None)
        name = gate.path.stem
        while name in gates:
            name += "'"
        gates[name] = gate
    return gates


def score_attempts(gates: dict, items, cfg: EvalConfig, prep_cfg, root: Path) -> tuple[Attempts, dict, dict]:
    """Decide every attempt of every recording with every gate -> (attempts, {name: scores}, info).

    ``prep_cfg`` (the preparation config) decides how much of a file is read, as in training;
    ``root`` is the corpus folder (skipped files are named relative to it).
    """
    from tqdm import tqdm

    from voicegate.train.data.build import load_recording

    attempts = Attempts()
    scores = {name: ModelScores(name) for name in gates}
    skipped: list = []
    info = {"recordings": 0, "recordings_without_attempt": [], "failed_attempts": 0,
            "speech_seconds": 0.0, "featurize_ms": []}
    for rec, role, _ in tqdm(items, desc="eval", unit="rec", disable=not cfg.progress):
        audio = load_recording(rec, prep_cfg, root, skipped)
        try:
            speech = speech_only(audio) if audio is not None else None
        except AudioError:
            speech = None
        chunks = [] if speech is None else cut_attempts(speech, cfg.attempt_seconds, cfg.min_attempt_seconds)
        if not chunks:
            info["recordings_without_attempt"].append(rec.item)
            continue
        info["recordings"] += 1
        info["speech_seconds"] += sum(c.size for c in chunks) / SAMPLE_RATE
        label = 1 if role == "allowed" else 0
        for chunk in chunks:
            t0 = time.perf_counter()
            try:
                images = featurize(chunk, sample_rate=SAMPLE_RATE, hop_seconds=INFER_HOP_SECONDS)
            except AudioError:
                images = None
            feat_ms = (time.perf_counter() - t0) * 1000.0
            attempts.add(rec.speaker, rec.recording, role, label, 0 if images is None else len(images))
            if images is None:
                info["failed_attempts"] += 1
                for s in scores.values():
                    s.add_failed()
                continue
            info["featurize_ms"].append(feat_ms)
            row = len(attempts) - 1
            for name, gate in gates.items():
                t1 = time.perf_counter()
                samples = gate.predict(images)
                d = gate.decide_samples(samples, started=t1)
                s = scores[name]
                s.p_allow.append(d.p_allow)
                s.uncertainty.append(d.uncertainty)
                s.decision.append(d.decision)
                s.window_p.extend(np.asarray(samples, np.float64).mean(axis=1).tolist())
                s.window_attempt.extend([row] * len(images))
                s.latency_ms.append(feat_ms + d.latency_ms)
    info["skipped_files"] = skipped
    return attempts, scores, info

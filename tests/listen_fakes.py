"""Fakes for the listen tests: a deterministic gate, speech-with-pauses streams, flaky sources.

Also runnable: ``python tests/listen_fakes.py LISTEN-ARGS...`` runs ``voicegate listen`` with the
fake gate (for subprocess tests: kill -9, SIGTERM, no sounddevice import).
"""

from __future__ import annotations

import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from synth import synth_voice  # noqa: E402

SR = 16_000
SPEAKERS = ("f1", "m1", "f2", "m2", "m3", "f3")


@dataclass
class FakeDecision:
    decision: str
    p_allow: float
    uncertainty: float
    windows: int
    method: str = "fake"
    model_sha256: str = "0" * 64
    latency_ms: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class FakeGate:
    """Decides from a hash of the exact samples: same audio, same decision; different, not."""

    method = "fake"
    model_sha256 = "0" * 64

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls = 0

    def decide_audio(self, audio: np.ndarray, speech_probs=None) -> FakeDecision:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        p = (zlib.crc32(audio.tobytes()) % 1000) / 1000.0
        decision = "GRANTED" if p >= 0.7 else "UNCERTAIN" if p >= 0.4 else "DENIED"
        return FakeDecision(decision, p, 0.01, max(1, audio.size // SR), latency_ms=0.1)


def noise(seconds: float, level: float = 0.001, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (level * rng.standard_normal(int(seconds * SR))).astype(np.float32)


def speech_stream(
    n_utterances: int = 4,
    gap: float = 1.2,
    seconds: float = 1.5,
    noise_level: float = 0.001,
    seed: int = 0,
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Utterances of steady synthetic voice separated by ``gap`` s of noise.

    Returns the audio and where each voice segment lies (start, end) in seconds.
    """
    parts, spans, t = [], [], 0.0
    for i in range(n_utterances):
        parts.append(noise(gap, noise_level, seed + 100 + i))
        t += gap
        voice = synth_voice(SPEAKERS[i % len(SPEAKERS)], seconds + 0.25 * (i % 3), seed=seed + i, pauses=False)
        parts.append(voice + noise(voice.size / SR, noise_level, seed + 200 + i))
        spans.append((t, t + voice.size / SR))
        t += voice.size / SR
    parts.append(noise(gap, noise_level, seed + 999))
    return np.concatenate(parts).astype(np.float32), spans


class FlakySource:
    """Yields chunks of ``audio`` and raises ``error`` after ``fail_after`` chunks (None: never)."""

    dropped = 0

    def __init__(self, audio, chunk=1600, fail_after=None, error=None, name="flaky"):
        self.audio, self.chunk, self.fail_after = audio, chunk, fail_after
        self.error = error
        self.name = name
        self.closed = False

    def __iter__(self):
        for i, start in enumerate(range(0, self.audio.size, self.chunk)):
            if self.fail_after is not None and i >= self.fail_after:
                raise self.error
            yield self.audio[start : start + self.chunk]

    def close(self):
        self.closed = True


class GrantingGate(FakeGate):
    """Grants whatever reaches it (so only the listen loop can deny)."""

    def decide_audio(self, audio: np.ndarray, speech_probs=None) -> FakeDecision:
        d = super().decide_audio(audio)
        d.decision = "GRANTED"
        return d


class LossySource(FlakySource):
    """A FlakySource that reports lost audio (``kind``: "dropped" or "status_flags") at chunk ``at``."""

    def __init__(self, audio, at: int, kind: str = "dropped", **kw):
        super().__init__(audio, **kw)
        self.at, self.kind = at, kind
        self.dropped = self.status_flags = 0

    def __iter__(self):
        for i, chunk in enumerate(super().__iter__()):
            if i == self.at:
                setattr(self, self.kind, getattr(self, self.kind) + 1)
            yield chunk


def main(argv=None) -> int:
    """Run `voicegate listen` with the fake gate; ``--fake-delay S`` slows each decision."""
    import argparse
    import logging

    from voicegate.device import listen

    logging.basicConfig(level=logging.WARNING)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--fake-delay", type=float, default=0.0)
    known, rest = pre.parse_known_args(argv)
    args = listen.build_parser().parse_args(rest)
    return listen.run(args, gate_factory=lambda a: FakeGate(known.fake_delay))


if __name__ == "__main__":
    sys.exit(main())

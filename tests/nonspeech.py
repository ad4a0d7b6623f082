"""The non-speech suite (issue 10): sounds that must never open the door.

Real household noise (the shared ``noise/*.flac`` files, cut into 3 s pieces, each piece set to
-40, -26 and -12 dBFS RMS) and generated sounds (white, pink and brown noise, mains hum at 50
and 60 Hz with harmonics, pure tones, clicks, music-like chords), all 16 kHz mono float32.

Used by tests/test_nonspeech.py (every clip through the gate in-process, a few through the CLI)
and benchmarks/vad.py (the before/after GRANTED counts). Deterministic: fixed seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

SR = 16_000
PIECE_SECONDS = 3.0
LEVELS_DBFS = (-40.0, -26.0, -12.0)
GENERATED_SECONDS = 3.0


def set_rms_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    """Scale ``x`` to an RMS of ``dbfs`` dB re full scale (clipped to [-1, 1])."""
    x = np.asarray(x, dtype=np.float64)
    rms = float(np.sqrt(np.mean(x**2)))
    if rms <= 0.0:
        return x.astype(np.float32)
    return np.clip(x * (10.0 ** (dbfs / 20.0) / rms), -1.0, 1.0).astype(np.float32)


def noise_pieces(noise_dir: Path, seconds: float = PIECE_SECONDS) -> Iterator[tuple[str, np.ndarray]]:
    """(name, clip) for every whole ``seconds`` piece of every shared noise file at every level."""
    import soundfile as sf

    n = int(seconds * SR)
    for path in sorted(Path(noise_dir).glob("*.flac")):
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
        if sr != SR:
            raise ValueError(f"{path}: expected {SR} Hz, got {sr}")
        x = x.mean(axis=1)
        for k in range(x.size // n):
            piece = x[k * n : (k + 1) * n]
            if not np.any(piece):
                continue
            for level in LEVELS_DBFS:
                yield f"{path.stem}[{k}]@{level:g}dBFS", set_rms_dbfs(piece, level)


def _coloured(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectral density ~ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SR)
    f[0] = f[1]
    spec *= f ** (-exponent / 2.0)
    return np.fft.irfft(spec, n)


def _hum(n: int, mains: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    x = sum(np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 6)) / k for k in range(1, 9))
    return x + 0.01 * rng.standard_normal(n)


def _clicks(n: int, rng: np.random.Generator, rate_hz: float) -> np.ndarray:
    x = 0.002 * rng.standard_normal(n)
    decay = np.exp(-np.arange(160) / 20.0)
    for at in rng.integers(0, n - 160, size=max(1, int(rate_hz * n / SR))):
        x[at : at + 160] += rng.choice([-1.0, 1.0]) * decay
    return x


def _chords(n: int, rng: np.random.Generator) -> np.ndarray:
    """Piano-like chords (harmonic partials with decaying envelopes), a new chord every 0.5 s."""
    t = np.arange(n) / SR
    x = np.zeros(n)
    step = SR // 2
    roots = 220.0 * 2 ** (rng.integers(-12, 12, size=n // step + 1) / 12.0)
    for i, start in enumerate(range(0, n, step)):
        seg = slice(start, min(n, start + step))
        tt = t[seg] - t[start]
        env = np.exp(-3.0 * tt)
        for ratio in (1.0, 2 ** (4 / 12), 2 ** (7 / 12)):  # a major triad
            f = roots[i] * ratio
            for k in range(1, 6):
                x[seg] += env * np.sin(2 * np.pi * f * k * tt) / k**1.5
    return x


def generated(seconds: float = GENERATED_SECONDS, seeds: tuple[int, ...] = (0, 1)) -> Iterator[tuple[str, np.ndarray]]:
    """(name, clip) for the generated sounds, each at every level in LEVELS_DBFS."""
    n = int(seconds * SR)
    for seed in seeds:
        rng = np.random.default_rng(1000 + seed)
        kinds = {
            "white": _coloured(rng, n, 0.0),
            "pink": _coloured(rng, n, 1.0),
            "brown": _coloured(rng, n, 2.0),
            "hum50": _hum(n, 50.0, rng),
            "hum60": _hum(n, 60.0, rng),
            "tone440": np.sin(2 * np.pi * 440.0 * np.arange(n) / SR),
            f"tone{1000 + 700 * seed}": np.sin(2 * np.pi * (1000.0 + 700 * seed) * np.arange(n) / SR),
            "clicks": _clicks(n, rng, 4.0 + 6 * seed),
            "chords": _chords(n, rng),
        }
        for name, x in kinds.items():
            for level in LEVELS_DBFS:
                yield f"{name}#{seed}@{level:g}dBFS", set_rms_dbfs(x, level)


def suite(noise_dir: Path | None) -> Iterator[tuple[str, np.ndarray]]:
    """The whole suite: the shared noise pieces (when ``noise_dir`` is given), then generated."""
    if noise_dir is not None:
        yield from noise_pieces(noise_dir)
    yield from generated()


def gap(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def concatenation(clips: list[np.ndarray], gap_seconds: float = 1.0) -> np.ndarray:
    """Clips joined with ``gap_seconds`` of digital silence between them (for listen --from-file)."""
    parts = []
    for c in clips:
        parts += [c, gap(gap_seconds)]
    return np.concatenate(parts) if parts else gap(gap_seconds)

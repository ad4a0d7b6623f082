"""Training-split augmentation: background noise at a chosen SNR, pitch shift, time shift.

Applied to trimmed 16 kHz speech before it is cut into windows, and only ever to recordings
of the training split (``prepare.py`` enforces that). Every random choice comes from the
generator passed in, so a copy is reproducible from its seed.

* Noise: real recordings (``*.flac`` / ``*.wav`` in a noise folder, a random stretch of one,
  looped when shorter than the speech) or synthetic white / pink / brown noise, scaled so that
  the speech-to-noise power ratio over the whole clip is the chosen SNR. Every class gets the
  same copies and the same noise (no class may learn "noise means allowed"). Training reads only
  the first NOISE_TRAIN_SHARE of each noise file; ``voicegate eval`` cuts its non-speech attempts
  from the rest (:func:`noise_part`).
* Pure non-speech (:func:`nonspeech_clip`): a stretch of a noise file, coloured noise, or mains
  hum over near-silence, at a random level: "not allowed" examples for the classifier.
* Pitch shift: ``librosa.effects.pitch_shift`` by a few tenths of a semitone up to about
  +-1.5 semitones (phase vocoder + soxr resampling; the length is kept).
* Time shift / random crop: drop a random number of leading samples (less than one window
  hop) so windows start at new offsets; audio too short to spare them is rotated instead.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from voicegate.device.audio import SAMPLE_RATE, AudioError, load_audio
from voicegate.device.features import WINDOW_SAMPLES

log = logging.getLogger(__name__)

NOISE_SUFFIXES = (".flac", ".wav", ".ogg")
SYNTHETIC_NOISES = ("white", "pink", "brown")
NOISE_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f**exponent
NOISE_TRAIN_SHARE = 0.7  # training uses the first 70 % of each noise file, eval the last 30 %
NONSPEECH_KINDS = ("noise_file", "white", "pink", "brown", "hum")
NONSPEECH_DBFS = (-50.0, -10.0)  # RMS level range of a pure non-speech clip
PITCH_RES_TYPE = "soxr_hq"
MAX_NOISE_SECONDS = 600.0  # a noise file longer than this is read only this far


def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0


# --- noise -----------------------------------------------------------------------------------
def noise_part(x: np.ndarray, part: str) -> np.ndarray:
    """The ``"train"`` (first NOISE_TRAIN_SHARE) or ``"eval"`` (the rest) stretch of a noise recording."""
    cut = int(round(x.size * NOISE_TRAIN_SHARE))
    if part == "train":
        return x[:cut]
    if part == "eval":
        return x[cut:]
    raise ValueError(f"noise part must be 'train' or 'eval', got {part!r}")


def load_noises(noise_dir: Optional[os.PathLike | str], part: str = "train") -> dict[str, np.ndarray]:
    """Noise recordings in ``noise_dir`` by file name (16 kHz mono), only their ``part``
    (:func:`noise_part`); unreadable ones are skipped."""
    out: dict[str, np.ndarray] = {}
    if noise_dir is None:
        return out
    folder = Path(noise_dir)
    if not folder.is_dir():
        log.warning("%s: noise folder not found; synthetic noise only", folder)
        return out
    for p in noise_files(folder):
        try:
            x = load_audio(p, max_seconds=MAX_NOISE_SECONDS)
        except AudioError as e:
            log.warning("noise file skipped: %s", e)
            continue
        if power(x) <= 0:
            log.warning("noise file skipped: %s: all zeros", p)
            continue
        out[p.name] = noise_part(x, part)
    return out


def coloured_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Unit-variance noise whose power falls as 1 / f**exponent (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    y = np.fft.irfft(spec / f ** (exponent / 2.0), n=n)
    return (y / (np.std(y) + 1e-12)).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f-power noise: white noise shaped by 1/sqrt(f) in the frequency domain."""
    return coloured_noise(n, rng, 1.0)


def hum(n: int, rng: np.random.Generator, mains_hz: Optional[float] = None) -> np.ndarray:
    """Mains hum (50 or 60 Hz and a few odd harmonics, random phases) over faint white noise, unit RMS."""
    mains = float(mains_hz or (50.0 if rng.random() < 0.5 else 60.0))
    t = np.arange(n) / SAMPLE_RATE
    y = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * mains * t + rng.uniform(0, 2 * np.pi))
            for k in (1, 2, 3, 5, 7))
    y = y / (np.sqrt(np.mean(y**2)) + 1e-12) + 10.0 ** (rng.uniform(-50, -20) / 20.0) * rng.standard_normal(n)
    return (y / (np.sqrt(np.mean(y**2)) + 1e-12)).astype(np.float32)


def at_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    """``x`` scaled to an RMS of ``dbfs`` dB re full scale, clipped to [-1, 1]."""
    rms = np.sqrt(power(x))
    if rms <= 0:
        return np.asarray(x, dtype=np.float32)
    return np.clip(x * (10.0 ** (dbfs / 20.0) / rms), -1.0, 1.0).astype(np.float32)


def nonspeech_clip(kind: str, n: int, rng: np.random.Generator, noises: dict, dbfs: float) -> tuple[np.ndarray, str]:
    """A pure non-speech clip of ``n`` samples at ``dbfs`` RMS and its name.

    ``kind``: ``noise_file`` (a random stretch of a random one of ``noises``; white noise when
    there are none), a colour of SYNTHETIC_NOISES, or ``hum`` (mains hum over near-silence).
    """
    if kind == "noise_file" and noises:
        name = sorted(noises)[int(rng.integers(len(noises)))]
        x = noise_segment(noises[name], n, rng)
    elif kind == "hum":
        name, x = "hum", hum(n, rng)
    else:
        name = kind if kind in NOISE_EXPONENTS else "white"
        x = coloured_noise(n, rng, NOISE_EXPONENTS[name])
    return at_dbfs(x, dbfs), name


def noise_segment(noise: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random stretch of ``n`` samples of ``noise`` (looped when it is shorter)."""
    if noise.size >= n:
        start = int(rng.integers(0, noise.size - n + 1))
        return noise[start : start + n]
    start = int(rng.integers(0, noise.size))
    reps = int(np.ceil((n + start) / noise.size))
    return np.tile(noise, reps)[start : start + n]


def scale_to_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``noise`` scaled so that power(signal) / power(scaled) is ``snr_db`` decibels."""
    ps, pn = power(signal), power(noise)
    if ps <= 0 or pn <= 0:
        return np.zeros_like(signal, dtype=np.float32)
    gain = np.sqrt(ps / (pn * 10.0 ** (snr_db / 10.0)))
    return (noise * gain).astype(np.float32)


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``signal`` plus ``noise`` (same length) at ``snr_db`` dB, measured over the whole clip."""
    if noise.shape != signal.shape:
        raise ValueError(f"mix_at_snr: signal {signal.shape} and noise {noise.shape} differ in shape")
    return (signal + scale_to_snr(signal, noise, snr_db)).astype(np.float32)


def snr_db(signal: np.ndarray, noise: np.ndarray) -> float:
    """Measured SNR in dB of a signal and the noise added to it."""
    return 10.0 * float(np.log10(power(signal) / max(power(noise), 1e-30)))


# --- pitch and time --------------------------------------------------------------------------
def pitch_shift(x: np.ndarray, semitones: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Shift the pitch by ``semitones`` keeping the duration (librosa, soxr resampling)."""
    import librosa

    if semitones == 0:
        return np.asarray(x, dtype=np.float32)
    y = librosa.effects.pitch_shift(
        np.asarray(x, dtype=np.float32), sr=sample_rate, n_steps=float(semitones), res_type=PITCH_RES_TYPE
    )
    return np.asarray(y[: x.size], dtype=np.float32)


def time_shift(x: np.ndarray, shift: int) -> np.ndarray:
    """Drop ``shift`` leading samples (a crop) when a full window remains, else rotate by it."""
    shift = int(shift)
    if shift <= 0:
        return x
    if x.size - shift >= WINDOW_SAMPLES:
        return x[shift:]
    return np.roll(x, -(shift % x.size))


# --- the augmenter ---------------------------------------------------------------------------
@dataclass
class Augmenter:
    """Makes augmented copies of trimmed speech; keeps time spent per stage for the report.

    Each copy: pitch shift with probability ``pitch_prob`` (uniform in +-``pitch_semitones``,
    at least ``min_semitones`` away from 0), noise with probability ``noise_prob`` (a real noise
    file or synthetic white/pink/brown, equally likely, at an SNR uniform in ``snr_db``), and a time
    shift of up to ``max_shift_seconds``.
    """

    noises: dict[str, np.ndarray] = field(default_factory=dict)
    snr_db: tuple[float, float] = (5.0, 20.0)
    pitch_semitones: float = 1.5
    min_semitones: float = 0.25
    pitch_prob: float = 0.5
    noise_prob: float = 0.8
    max_shift_seconds: float = 0.5
    seconds_pitch: float = 0.0
    seconds_noise: float = 0.0

    def noise_kinds(self) -> list[str]:
        return [*self.noises, *SYNTHETIC_NOISES]

    def make_noise(self, kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
        if kind in NOISE_EXPONENTS:
            return coloured_noise(n, rng, NOISE_EXPONENTS[kind])
        return noise_segment(self.noises[kind], n, rng)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """One augmented copy of ``x`` (same length unless cropped) and what was done to it."""
        y = np.asarray(x, dtype=np.float32)
        params: dict = {}
        if self.pitch_semitones > 0 and rng.random() < self.pitch_prob:
            lo = min(self.min_semitones, self.pitch_semitones)
            steps = float(rng.uniform(lo, self.pitch_semitones)) * (1 if rng.random() < 0.5 else -1)
            t = time.perf_counter()
            y = pitch_shift(y, steps)
            self.seconds_pitch += time.perf_counter() - t
            params["pitch"] = round(steps, 3)
        if rng.random() < self.noise_prob:
            t = time.perf_counter()
            kinds = self.noise_kinds()
            kind = kinds[int(rng.integers(len(kinds)))]
            snr = float(rng.uniform(*self.snr_db))
            y = mix_at_snr(y, self.make_noise(kind, y.size, rng), snr)
            self.seconds_noise += time.perf_counter() - t
            params["noise"], params["snr_db"] = kind, round(snr, 2)
        shift = int(rng.integers(0, max(1, int(self.max_shift_seconds * SAMPLE_RATE))))
        y = time_shift(y, shift)
        params["shift_s"] = round(shift / SAMPLE_RATE, 4)
        if not np.all(np.isfinite(y)):
            raise AudioError("augmentation produced non-finite samples")
        return y, params


def find_noise_dir(corpus: os.PathLike | str, noise_dir: Optional[str] = "auto") -> Optional[Path]:
    """``"auto"``: ``<corpus>/../noise`` when it exists; ``None``/``"none"``: no noise files."""
    if noise_dir is None or str(noise_dir).lower() == "none":
        return None
    if str(noise_dir) == "auto":
        cand = Path(corpus).expanduser().resolve().parent / "noise"
        return cand if cand.is_dir() else None
    return Path(noise_dir).expanduser().resolve()


def noise_files(folder: Optional[Path]) -> Sequence[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in NOISE_SUFFIXES and not p.name.startswith("."))

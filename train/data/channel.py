"""Channel augmentation for the speaker encoder: rooms, microphones, codecs, gain and noise.

Applied to every training speaker alike (no class gets more or other noise than another), to
trimmed 16 kHz speech. Two ways in:

* :func:`random_channel` draws a random chain for training: room reverberation (an impulse
  response from a bank of rooms simulated with ``pyroomacoustics``), a band limit (telephone
  300-3400 Hz with G.711 mu-law, or a cheap 200 Hz-5 kHz microphone with soft clipping), a
  low-bitrate codec (MP3 through libsndfile; Opus on request), the shared real noise or coloured noise
  (white, pink, brown) at 0-20 dB SNR, and a gain of -30 to +6 dB (clipped at full scale).
* :func:`apply_channel` applies one of the NAMED channels :data:`CHANNELS` deterministically
  (same input, name and seed -> same output), for same-microphone evaluation: ``telephone``,
  ``cheap_mic``, ``noisy_room`` (reverberant room + real noise at 10 dB SNR) and ``far_field``
  (a distant talker in a room, -24 dB, over the microphone's own noise floor).

The output has the input's length and no time shift larger than the codec's few ms, so a
window cut at the same place in the clean and the degraded copy shows the same speech (the
encoder's distillation target is the teacher's embedding of the clean window).
"""

from __future__ import annotations

import io
import logging
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from voicegate.device.audio import SAMPLE_RATE

from .augment import mix_at_snr, noise_segment, power

log = logging.getLogger(__name__)

CHANNELS = ("telephone", "cheap_mic", "noisy_room", "far_field")
COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f^exponent
TELEPHONE_BAND = (300.0, 3400.0)
CHEAP_MIC_BAND = (200.0, 5000.0)
FAR_FIELD_GAIN_DB = -24.0
MIC_NOISE_DBFS = -66.0  # the far-field microphone's self-noise (RMS, white)
RIR_BANK_SIZE = 32


# --- rooms -----------------------------------------------------------------------------------
def room_impulse_response(rng: np.random.Generator, rt60: Optional[float] = None,
                          distance: Optional[float] = None) -> np.ndarray:
    """A shoebox room (pyroomacoustics image method): random size, RT60 0.2-0.9 s, a talker
    ``distance`` m (default 0.5-3 m) from the microphone. Peak-normalised float32."""
    import pyroomacoustics as pra

    dims = np.array([rng.uniform(3.0, 8.0), rng.uniform(2.5, 6.0), rng.uniform(2.4, 3.2)])
    rt60 = float(rng.uniform(0.2, 0.9) if rt60 is None else rt60)
    absorption, _ = pra.inverse_sabine(rt60, dims)
    room = pra.ShoeBox(dims, fs=SAMPLE_RATE, materials=pra.Material(absorption), max_order=30)
    mic = np.array([rng.uniform(0.5, dims[0] - 0.5), rng.uniform(0.5, dims[1] - 0.5), rng.uniform(1.0, 1.6)])
    want = float(rng.uniform(0.5, 3.0) if distance is None else distance)
    for _ in range(50):  # a talker position inside the room at about the wanted distance
        angle = rng.uniform(0, 2 * np.pi)
        src = mic + np.array([want * np.cos(angle), want * np.sin(angle), rng.uniform(-0.2, 0.3)])
        if np.all(src > 0.3) and np.all(src < dims - 0.3):
            break
        want *= 0.9
    else:
        src = dims / 2 + 0.1
    room.add_source(src)
    room.add_microphone(mic)
    room.compute_rir()
    h = np.asarray(room.rir[0][0], dtype=np.float32)
    return h / (np.abs(h).max() + 1e-12)


@lru_cache(maxsize=4)
def rir_bank(size: int = RIR_BANK_SIZE, seed: int = 0) -> tuple:
    """``size`` simulated rooms (cached: the bank is built once per process)."""
    rng = np.random.default_rng(seed)
    return tuple(room_impulse_response(rng) for _ in range(size))


def reverberate(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``x`` convolved with ``h``, cut to ``x``'s length and scaled back to its RMS."""
    from scipy.signal import fftconvolve

    y = fftconvolve(x, h)[: x.size]
    return _match_rms(y, x)


def _match_rms(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    py, pr = power(y), power(ref)
    return (y * np.sqrt(pr / py) if py > 0 else y).astype(np.float32)


# --- microphones, lines and codecs -------------------------------------------------------------
def bandpass(x: np.ndarray, low: float, high: float, order: int = 6) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    sos = butter(order, [low, high], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    return sosfilt(sos, x).astype(np.float32)


def mu_law(x: np.ndarray, bits: int = 8, mu: float = 255.0) -> np.ndarray:
    """G.711-style companding and 8-bit quantisation (the level is normalised first)."""
    peak = float(np.abs(x).max()) or 1.0
    v = x / peak
    c = np.sign(v) * np.log1p(mu * np.abs(v)) / np.log1p(mu)
    levels = 2 ** (bits - 1)
    c = np.round(c * levels) / levels
    return (np.sign(c) * np.expm1(np.abs(c) * np.log1p(mu)) / mu * peak).astype(np.float32)


def telephone(x: np.ndarray) -> np.ndarray:
    return mu_law(bandpass(x, *TELEPHONE_BAND))


def cheap_mic(x: np.ndarray, drive: float = 2.0) -> np.ndarray:
    """200 Hz-5 kHz band and a soft-clipping capsule/preamp."""
    y = bandpass(x, *CHEAP_MIC_BAND, order=4)
    peak = float(np.abs(y).max()) or 1.0
    return _match_rms(np.tanh(drive * y / peak), y)


def codec(x: np.ndarray, kind: str = "opus", level: float = 0.9) -> np.ndarray:
    """Encode and decode through libsndfile: ``opus`` (level 0.9 ~ 10 kbit/s) or ``mp3``."""
    import soundfile as sf

    fmt, sub = {"opus": ("OGG", "OPUS"), "mp3": ("MP3", "MPEG_LAYER_III")}[kind]
    buf = io.BytesIO()
    peak = max(1.0, float(np.abs(x).max()))
    sf.write(buf, x / peak, SAMPLE_RATE, format=fmt, subtype=sub, compression_level=float(level))
    buf.seek(0)
    y, sr = sf.read(buf, dtype="float32")
    if sr != SAMPLE_RATE:
        raise RuntimeError(f"codec {kind}: decoded at {sr} Hz")
    y = y.reshape(-1)[: x.size] * peak
    return np.pad(y, (0, x.size - y.size)).astype(np.float32)


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise whose power falls as 1/f^k (white k=0, pink 1, brown 2)."""
    from scipy.fft import irfft, next_fast_len, rfft

    m = next_fast_len(n, real=True)  # a prime n would make the FFT slow
    spec = rfft(rng.standard_normal(m))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    y = irfft(spec / f ** (COLOURS[colour] / 2.0), n=m)[:n]
    return (y / (np.std(y) + 1e-12)).astype(np.float32)


def gain(x: np.ndarray, db: float) -> np.ndarray:
    """Scale by ``db`` decibels and clip to full scale, as an ADC would."""
    return np.clip(x * 10.0 ** (db / 20.0), -1.0, 1.0).astype(np.float32)


def _noise(n: int, rng: np.random.Generator, noises: Optional[dict], kind: Optional[str] = None) -> tuple:
    kinds = [*(noises or {}), *COLOURS]
    kind = kind or kinds[int(rng.integers(len(kinds)))]
    if kind in COLOURS:
        return coloured_noise(n, kind, rng), kind
    return noise_segment(noises[kind], n, rng).astype(np.float32), kind


# --- random chains for training ----------------------------------------------------------------
@dataclass
class ChannelConfig:
    """Probabilities and ranges of the random training channel (every speaker alike)."""

    reverb_prob: float = 0.5
    band_prob: float = 0.4  # telephone or cheap microphone, equally likely
    codec_prob: float = 0.25
    codecs: tuple = ("mp3",)  # opus is about 6x slower to encode than mp3 through libsndfile
    noise_prob: float = 0.7
    snr_db: tuple = (0.0, 20.0)
    gain_db: tuple = (-30.0, 6.0)
    rir_bank: int = RIR_BANK_SIZE
    seed: int = 0  # seeds the room bank

    def to_dict(self) -> dict:
        return asdict(self)


def random_channel(x: np.ndarray, rng: np.random.Generator, noises: Optional[dict] = None,
                   cfg: Optional[ChannelConfig] = None) -> tuple[np.ndarray, dict]:
    """One random degraded copy of ``x`` (same length) and what was done to it."""
    cfg = cfg or ChannelConfig()
    y = np.asarray(x, dtype=np.float32)
    params: dict = {}
    if rng.random() < cfg.reverb_prob:
        i = int(rng.integers(cfg.rir_bank))
        y = reverberate(y, rir_bank(cfg.rir_bank, cfg.seed)[i])
        params["room"] = i
    if rng.random() < cfg.band_prob:
        band = "telephone" if rng.random() < 0.5 else "cheap_mic"
        y = telephone(y) if band == "telephone" else cheap_mic(y, float(rng.uniform(1.0, 4.0)))
        params["band"] = band
    if rng.random() < cfg.noise_prob:
        noise, kind = _noise(y.size, rng, noises)
        snr = float(rng.uniform(*cfg.snr_db))
        y = mix_at_snr(y, noise, snr)
        params["noise"], params["snr_db"] = kind, round(snr, 2)
    g = float(rng.uniform(*cfg.gain_db))
    peak = float(np.abs(y).max()) or 1.0
    y = gain(y / peak * 0.5, g)  # level: peak -6 dBFS, then the random gain
    params["gain_db"] = round(g, 2)
    if rng.random() < cfg.codec_prob:
        kind = cfg.codecs[int(rng.integers(len(cfg.codecs)))]
        level = float(rng.uniform(0.7, 1.0) if kind == "opus" else rng.uniform(0.5, 0.9))
        y = codec(y, kind, level)
        params["codec"], params["codec_level"] = kind, round(level, 2)
    if not np.all(np.isfinite(y)):
        raise ValueError("channel augmentation produced non-finite samples")
    return y, params


# --- named channels for same-microphone evaluation -------------------------------------------
def apply_channel(x: np.ndarray, name: str, seed: int = 0, noises: Optional[dict] = None,
                  room_seed: Optional[int] = None) -> np.ndarray:
    """``x`` through the named channel (one of :data:`CHANNELS`); deterministic in ``seed``.

    ``telephone``: 300-3400 Hz, mu-law, pink line noise at 30 dB SNR. ``cheap_mic``: 200 Hz-5 kHz,
    soft clipping, white self-noise at 30 dB SNR. ``noisy_room``: a simulated room (RT60 0.6 s,
    talker at 1.5 m) and real noise (``noises``, from :func:`~.augment.load_noises`; pink noise
    when none is given) at 10 dB SNR. ``far_field``: a room (RT60 0.5 s, talker at 4 m), gain
    -24 dB, over white microphone noise at MIC_NOISE_DBFS. The room is fixed per ``seed``; the
    noise segment is drawn from ``seed`` too, so a fixed seed gives one fixed channel.
    ``room_seed`` (if given) fixes the room alone: one door, fresh noise per ``seed``.
    """
    if name not in CHANNELS:
        raise ValueError(f"unknown channel {name!r}; choose one of {', '.join(CHANNELS)}")
    x = np.asarray(x, dtype=np.float32)
    rng = np.random.default_rng([seed, CHANNELS.index(name)])
    if name == "telephone":
        y = telephone(x)
        return mix_at_snr(y, coloured_noise(y.size, "pink", rng), 30.0)
    if name == "cheap_mic":
        y = cheap_mic(x)
        return mix_at_snr(y, coloured_noise(y.size, "white", rng), 30.0)
    if name == "noisy_room":
        y = reverberate(x, _fixed_room(seed if room_seed is None else room_seed, 0.6, 1.5))
        kinds = sorted(noises) if noises else ["pink"]
        noise, _ = _noise(y.size, rng, noises, kinds[int(rng.integers(len(kinds)))])
        return mix_at_snr(y, noise, 10.0)
    y = reverberate(x, _fixed_room(seed if room_seed is None else room_seed, 0.5, 4.0))
    y = y * 10.0 ** (FAR_FIELD_GAIN_DB / 20.0)
    floor = coloured_noise(y.size, "white", rng) * 10.0 ** (MIC_NOISE_DBFS / 20.0)
    return np.clip(y + floor, -1.0, 1.0).astype(np.float32)


@lru_cache(maxsize=16)
def _fixed_room(seed: int, rt60: float, distance: float) -> np.ndarray:
    return room_impulse_response(np.random.default_rng([seed, 7919]), rt60=rt60, distance=distance)

"""Audio input for the gate: reading, mono mix-down, anti-aliased resampling, silence trimming.

Pure numpy (plus soundfile for decoding). Every audio constant is named once, here or in
``features.py``, and the rest of the project imports it from here.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Union

import numpy as np

log = logging.getLogger(__name__)

# --- audio constants -------------------------------------------------------------------------
SAMPLE_RATE = 16_000  # Hz: everything downstream of load_audio runs at this rate
MIN_INPUT_RATE = 8_000  # Hz: lower rates carry too little of the voice to decide on
MAX_INPUT_RATE = 192_000  # Hz
MAX_CHANNELS = 32

# Silence trimming (energy based, like the study's librosa.effects.split with top_db).
TRIM_TOP_DB = 40.0  # frames quieter than (loudest frame - TRIM_TOP_DB) are silence
TRIM_FRAME = 400  # samples (25 ms) per RMS frame
TRIM_HOP = 160  # samples (10 ms) between RMS frames
TRIM_KEEP_GAP_SECONDS = 0.25  # pauses shorter than this inside speech are kept
SILENCE_FLOOR_DBFS = -60.0  # if the loudest frame is below this, there is no speech at all
MIN_SPEECH_SECONDS = 0.3  # less voiced audio than this after trimming is "no speech"

# Resampling: windowed-sinc polyphase filter (Kaiser window).
RESAMPLE_ZERO_CROSSINGS = 16  # half-length of the sinc, in zero crossings of the cutoff
RESAMPLE_ROLLOFF = 0.945  # cutoff as a share of the lower Nyquist frequency
RESAMPLE_KAISER_BETA = 8.6  # about 80 dB stop-band attenuation
_RESAMPLE_CHUNK = 1 << 16  # output samples per vectorised block (bounds memory)

PathLike = Union[str, os.PathLike]


class AudioError(ValueError):
    """The audio cannot be used for a decision (the CLI maps this to exit code 4)."""


class NoSpeechError(AudioError):
    """The audio holds no usable speech (silent, too quiet, or too short once trimmed)."""


# --- reading ---------------------------------------------------------------------------------
def read_audio(path: PathLike, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode ``path`` to float32 (frames, channels) and its sample rate.

    Raises :class:`AudioError` with a one-line reason that names the file for anything that is
    not readable audio. ``max_seconds`` caps how much is decoded, so a huge (or lying) file
    cannot exhaust memory.
    """
    import soundfile as sf  # local: keeps `import voicegate.device` light

    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such file")
    if p.is_dir():
        raise AudioError(f"{p}: is a directory, not an audio file")
    if not os.access(p, os.R_OK):
        raise AudioError(f"{p}: permission denied")
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: empty file (0 bytes)")
    try:
        with sf.SoundFile(str(p)) as f:
            sr = int(f.samplerate)
            channels = int(f.channels)
            if not MIN_INPUT_RATE <= sr <= MAX_INPUT_RATE:
                raise AudioError(
                    f"{p}: sample rate {sr} Hz is outside {MIN_INPUT_RATE}-{MAX_INPUT_RATE} Hz"
                )
            if not 1 <= channels <= MAX_CHANNELS:
                raise AudioError(f"{p}: {channels} channels is not supported")
            frames = -1 if max_seconds is None else int(math.ceil(max_seconds * sr))
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as e:  # soundfile raises several types for malformed files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AudioError(f"{p}: not readable audio ({reason})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{p}: holds no audio samples")
    return data, sr


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average the channels of a (frames, channels) or (frames,) array to float32 mono."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1, dtype=np.float32)
    elif data.ndim != 1:
        raise AudioError(f"audio must be 1-D or (frames, channels), got shape {data.shape}")
    return data


def check_finite(x: np.ndarray, where: str = "audio") -> None:
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{where}: contains NaN or infinite samples")


def load_audio(
    source: Union[PathLike, np.ndarray],
    sample_rate: int | None = None,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Return mono float32 audio at :data:`SAMPLE_RATE` from a path or an array.

    An array needs ``sample_rate`` (it may be 1-D or (frames, channels)). A path is decoded
    with soundfile; ``max_seconds`` caps the decoded duration.
    """
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise ValueError("load_audio: an array needs sample_rate")
        where = "audio array"
        data, sr = source, int(sample_rate)
        if max_seconds is not None:
            data = data[: int(math.ceil(max_seconds * sr))]
    else:
        where = str(source)
        data, sr = read_audio(source, max_seconds=max_seconds)
    x = to_mono(data)
    if x.size == 0:
        raise AudioError(f"{where}: holds no audio samples")
    check_finite(x, where)
    return resample(x, sr, SAMPLE_RATE)


# --- resampling ------------------------------------------------------------------------------
def _resample_table(up: int, down: int) -> tuple[np.ndarray, int]:
    """Polyphase windowed-sinc table: row p holds the taps for output phase p/up."""
    cutoff = RESAMPLE_ROLLOFF * min(1.0, up / down)  # relative to the input Nyquist
    half = int(math.ceil(RESAMPLE_ZERO_CROSSINGS / cutoff))  # taps each side, input samples
    offsets = np.arange(-half + 1, half + 1)  # input sample k = floor(t) + offset
    frac = np.arange(up)[:, None] / up  # fractional part of t for each phase
    d = frac - offsets[None, :]  # t - k, in input samples
    w = np.kaiser(2 * half + 1, RESAMPLE_KAISER_BETA)
    # sample the continuous Kaiser window at d (|d| <= half)
    window = np.interp(d, np.linspace(-half, half, 2 * half + 1), w, left=0.0, right=0.0)
    table = cutoff * np.sinc(cutoff * d) * window
    return table.astype(np.float32), half


def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling of mono float32 ``x`` from ``sr_in`` to ``sr_out``.

    A polyphase windowed-sinc filter with its cutoff just under the lower Nyquist frequency,
    so downsampling is anti-aliased (no sample dropping).
    """
    x = np.asarray(x, dtype=np.float32)
    if sr_in == sr_out:
        return x
    if sr_in <= 0 or sr_out <= 0:
        raise AudioError(f"invalid sample rates {sr_in} -> {sr_out}")
    g = math.gcd(int(sr_in), int(sr_out))
    up, down = int(sr_out) // g, int(sr_in) // g
    table, half = _resample_table(up, down)
    n_out = int(math.ceil(x.size * up / down))
    padded = np.concatenate([np.zeros(half, np.float32), x, np.zeros(half + 1, np.float32)])
    taps = np.arange(-half + 1, half + 1) + half  # offsets into `padded`
    out = np.empty(n_out, dtype=np.float32)
    for start in range(0, n_out, _RESAMPLE_CHUNK):
        n = np.arange(start, min(n_out, start + _RESAMPLE_CHUNK), dtype=np.int64)
        pos = n * down
        base, phase = pos // up, pos % up
        frames = padded[base[:, None] + taps[None, :]]
        out[start : start + n.size] = np.einsum("ij,ij->i", frames, table[phase])
    return out


# --- silence trimming ------------------------------------------------------------------------
def frame_rms_db(x: np.ndarray) -> np.ndarray:
    """RMS level in dBFS of TRIM_FRAME-sample frames every TRIM_HOP samples (centred)."""
    x = np.asarray(x, dtype=np.float32)
    pad = TRIM_FRAME // 2
    xp = np.pad(x, (pad, pad))
    n_frames = 1 + max(0, xp.size - TRIM_FRAME) // TRIM_HOP
    frames = np.lib.stride_tricks.sliding_window_view(xp, TRIM_FRAME)[::TRIM_HOP][:n_frames]
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-10))


def voiced_intervals(
    x: np.ndarray, top_db: float = TRIM_TOP_DB, sample_rate: int = SAMPLE_RATE
) -> list[tuple[int, int]]:
    """Sample intervals [start, end) of speech: frames within ``top_db`` of the loudest frame.

    Pauses shorter than TRIM_KEEP_GAP_SECONDS are kept inside an interval. An empty list means
    no speech (including audio whose loudest frame is under SILENCE_FLOOR_DBFS).
    """
    if x.size == 0:
        return []
    db = frame_rms_db(x)
    peak = float(db.max())
    if peak < SILENCE_FLOOR_DBFS:
        return []
    voiced = db >= peak - top_db
    # close short gaps (in frames)
    max_gap = int(round(TRIM_KEEP_GAP_SECONDS * sample_rate / TRIM_HOP))
    idx = np.flatnonzero(voiced)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > max_gap + 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], [idx[-1]]])
    intervals = []
    for s, e in zip(starts, ends):
        a = max(0, int(s) * TRIM_HOP - TRIM_FRAME // 2)
        b = min(x.size, int(e) * TRIM_HOP + TRIM_FRAME // 2)
        if b > a:
            intervals.append((a, b))
    return intervals


def trim_silence(
    x: np.ndarray, top_db: float = TRIM_TOP_DB, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Drop leading, trailing and inner silence; return the voiced audio joined together.

    Raises :class:`NoSpeechError` if less than MIN_SPEECH_SECONDS of speech remains.
    """
    x = np.asarray(x, dtype=np.float32)
    intervals = voiced_intervals(x, top_db, sample_rate)
    kept = np.concatenate([x[a:b] for a, b in intervals]) if intervals else x[:0]
    if kept.size < MIN_SPEECH_SECONDS * sample_rate:
        raise NoSpeechError(
            f"no speech found ({kept.size / sample_rate:.2f} s above the silence threshold, "
            f"need {MIN_SPEECH_SECONDS} s)"
        )
    return kept

"""The one spectrogram featurizer, shared by training and the device.

A fixed-length window of 16 kHz audio becomes a 224x224 grayscale float32 image in [0, 1]:
the STFT magnitude in dB (the study's representation), relative to the window's loudest bin,
floored at -IMAGE_TOP_DB. The STFT sizes are chosen so the image is exactly 224x224 without
any resizing: N_FFT = 448 gives 225 frequency bins of which the lowest 224 are kept (0 to
7.96 kHz, linear; only the Nyquist bin is dropped), and STFT_HOP = 141 gives 224 frames over a
2 s window. 448 = 2^6 * 7 keeps the FFT fast (446 = 2 * 223 would be several times slower). Row 0 is the highest frequency (image convention), column 0 the
earliest frame.

Bump FEATURE_VERSION whenever anything here changes what a window renders to: every exported
model carries it and the runtime refuses a model whose version differs.
"""

from __future__ import annotations

from typing import Union

import numpy as np

from .audio import SAMPLE_RATE, NoSpeechError, PathLike, load_audio

FEATURE_VERSION = "vg-stft-2"

IMAGE_SIZE = 224  # pixels, both axes
WINDOW_SECONDS = 2.0  # one spectrogram covers this much speech (the detector's frames)
WINDOW_SAMPLES = int(WINDOW_SECONDS * SAMPLE_RATE)  # 32000
N_FFT = 2 * IMAGE_SIZE  # 448 -> 225 bins; the Nyquist bin is dropped -> 224
STFT_HOP = (WINDOW_SAMPLES - N_FFT) // (IMAGE_SIZE - 1)  # 141 -> exactly 224 frames
IMAGE_TOP_DB = 80.0  # dynamic range of the image: 0 dB (window max) -> 1.0, -80 dB -> 0.0
AMIN = 1e-10  # magnitude floor before the log

TRAIN_HOP_SECONDS = 0.5  # window hop when cutting training windows (75 % overlap)
INFER_HOP_SECONDS = 1.0  # window hop at decision time (50 % overlap)
MAX_UTTERANCE_SECONDS = 30.0  # a decision looks at no more than this much trimmed speech
MAX_READ_SECONDS = 120.0  # a decision decodes no more than this much of a file (bounds memory)

assert N_FFT // 2 == IMAGE_SIZE
assert 1 + (WINDOW_SAMPLES - N_FFT) // STFT_HOP == IMAGE_SIZE

_HANN = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)  # float64: see spectrogram()
_FLOOR_POWER = 10.0 ** (-IMAGE_TOP_DB / 10.0)  # -IMAGE_TOP_DB as a power ratio
_NATURAL_TO_IMAGE = 10.0 / np.log(10.0) / IMAGE_TOP_DB  # ln(power ratio) -> image units


def feature_contract() -> dict:
    """Every constant that decides what a window renders to; exported models carry it."""
    from . import audio, speech

    return {
        "feature_version": FEATURE_VERSION,
        "sample_rate": SAMPLE_RATE,
        "image_size": IMAGE_SIZE,
        "window_seconds": WINDOW_SECONDS,
        "n_fft": N_FFT,
        "stft_hop": STFT_HOP,
        "image_top_db": IMAGE_TOP_DB,
        "window": "hann-periodic",
        "trim_top_db": audio.TRIM_TOP_DB,
        "silence_floor_dbfs": audio.SILENCE_FLOOR_DBFS,
        "infer_hop_seconds": INFER_HOP_SECONDS,
        # which frames reach the spectrogram; models exported before it lack the key, and
        # ModelContract.check_features compares only the keys both sides have
        "speech_detector": speech.speech_contract(),
    }


def frame_windows(x: np.ndarray, hop_seconds: float = INFER_HOP_SECONDS) -> np.ndarray:
    """Cut mono 16 kHz audio into (n, WINDOW_SAMPLES) windows every ``hop_seconds``.

    Audio shorter than one window is tiled (repeated) to fill it, so short commands still
    give one full window of voice rather than padded silence. The last window is aligned to
    the end of the audio so the tail is covered.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        raise ValueError("frame_windows: empty audio")
    if x.size < WINDOW_SAMPLES:
        reps = int(np.ceil(WINDOW_SAMPLES / x.size))
        return np.tile(x, reps)[None, :WINDOW_SAMPLES].copy()
    hop = max(1, int(round(hop_seconds * SAMPLE_RATE)))
    starts = list(range(0, x.size - WINDOW_SAMPLES + 1, hop))
    if starts[-1] + WINDOW_SAMPLES < x.size and x.size - WINDOW_SAMPLES - starts[-1] >= hop // 2:
        starts.append(x.size - WINDOW_SAMPLES)
    return np.stack([x[s : s + WINDOW_SAMPLES] for s in starts])


def spectrogram(windows: np.ndarray) -> np.ndarray:
    """Render (n, WINDOW_SAMPLES) audio windows (or one 1-D window) as (n, 224, 224) images."""
    w = np.asarray(windows, dtype=np.float32)
    single = w.ndim == 1
    if single:
        w = w[None]
    if w.ndim != 2 or w.shape[1] != WINDOW_SAMPLES:
        raise ValueError(f"spectrogram: expected (n, {WINDOW_SAMPLES}) windows, got {w.shape}")
    frames = np.lib.stride_tricks.sliding_window_view(w, N_FFT, axis=1)[:, ::STFT_HOP]
    # float64 on purpose: numpy's float32 FFT of 448 points is about 3x slower here (3.6 ms
    # against 1.2 ms for a 3 s attempt's two windows); the images differ by float32 rounding only
    spec = np.fft.rfft(frames[:, :IMAGE_SIZE] * _HANN, axis=-1)[..., :IMAGE_SIZE]
    # 20 log10(max(|X|, AMIN)) relative to the window's loudest bin, floored at -IMAGE_TOP_DB,
    # computed as a power ratio in place: the floor is applied before the log, and one natural
    # log replaces log10 (numpy's float32 log is vectorised, its log10 is not)
    power = np.abs(spec).astype(np.float32)
    np.square(power, out=power)
    amin_power = np.float32(AMIN * AMIN)
    top = np.maximum(power.max(axis=(1, 2), keepdims=True), amin_power)  # per window
    np.maximum(power, np.maximum(top * np.float32(_FLOOR_POWER), amin_power), out=power)
    np.log(power, out=power)
    power -= np.log(top)
    power *= np.float32(_NATURAL_TO_IMAGE)
    power += np.float32(1.0)  # 0 dB (the window's loudest bin) -> 1.0, -IMAGE_TOP_DB -> 0.0
    np.clip(power, 0.0, 1.0, out=power)  # the two logs can round a hair outside [0, 1]
    img = np.ascontiguousarray(power.transpose(0, 2, 1)[:, ::-1, :])
    return img[0] if single else img


def featurize(
    source: Union[PathLike, np.ndarray],
    sample_rate: int | None = None,
    hop_seconds: float = INFER_HOP_SECONDS,
    max_seconds: float | None = MAX_UTTERANCE_SECONDS,
    detector=None,
    speech_probs=None,
) -> np.ndarray:
    """Path or array -> its speech (``speech.speech_only``) -> (n, 224, 224) spectrogram windows.

    An array is taken at ``sample_rate`` (default SAMPLE_RATE). Only the frames the speech
    detector (``detector``, default ``speech.default_detector()``) marks as speech are rendered;
    audio without enough speech raises NoSpeechError ("no speech found ..."), other unusable
    audio AudioError; a missing or modified detector model raises ModelError. ``speech_probs``:
    the detector's frame probabilities of a 16 kHz array, already computed (``listen``).
    """
    from .speech import speech_only

    if isinstance(source, np.ndarray) and sample_rate is None:
        sample_rate = SAMPLE_RATE
    x = load_audio(source, sample_rate=sample_rate, max_seconds=MAX_READ_SECONDS)
    where = "audio array" if isinstance(source, np.ndarray) else str(source)
    if speech_probs is not None and (not isinstance(source, np.ndarray) or sample_rate != SAMPLE_RATE):
        raise ValueError("speech_probs only go with a 16 kHz array")
    try:
        speech = speech_only(x, where=where, detector=detector, probs=speech_probs)
    except NoSpeechError as e:
        if not isinstance(source, np.ndarray) and x.size >= int(MAX_READ_SECONDS * SAMPLE_RATE):
            raise NoSpeechError(f"{e}; only the first {MAX_READ_SECONDS:g} s of a file are read") from None
        raise
    if max_seconds is not None:
        speech = speech[: int(max_seconds * SAMPLE_RATE)]
    return spectrogram(frame_windows(speech, hop_seconds))

"""Property-based tests (hypothesis) of the audio front end and the featurizer.

Any finite float array, of any length, amplitude and sample rate, either becomes finite
(n, 224, 224) float32 images in [0, 1] or is refused with a clean AudioError (NoSpeechError for
"no speech"). Nothing else may come out: no NaN image, no other exception.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from voicegate.device import audio as A
from voicegate.device import resample as R
from voicegate.device.features import IMAGE_SIZE, featurize

SETTINGS = settings(max_examples=50, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

COMMON_RATES = (8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000)
rates = st.one_of(st.sampled_from(COMMON_RATES), st.integers(A.MIN_INPUT_RATE, 96_000))
amplitudes = st.one_of(
    st.sampled_from([0.0, 1e-30, 1e-9, 1e-4, 0.01, 0.5, 1.0, 4.0, 1e3, 1e6, 2e9, 1e20, 3e38]),
    st.floats(1e-12, 1e4),
)
finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


raw_arrays = st.sampled_from([finite32, st.floats(-1, 1, width=32)]).flatmap(
    lambda elements: hnp.arrays(np.float32, st.integers(0, 3000), elements=elements))


@st.composite
def signals(draw, max_seconds: float = 3.0):
    """(float32 array, sample rate): structured audio of 0 to ``max_seconds`` at any rate."""
    sr = draw(rates)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # uniform over 0..max_seconds (hypothesis' own integers favour 0; raw_arrays covers tiny)
    n = int(rng.integers(0, int(max_seconds * sr) + 1))
    shape = draw(st.sampled_from(["noise", "tone", "bursts", "constant", "clicks"]))
    t = np.arange(n) / sr
    if shape == "noise":
        x = rng.standard_normal(n)
    elif shape == "tone":
        x = np.sin(2 * np.pi * draw(st.floats(20.0, sr / 2)) * t)
    elif shape == "bursts":  # speech-like on/off envelope over noise
        x = rng.standard_normal(n) * (np.sin(2 * np.pi * 3.0 * t) > 0)
    elif shape == "constant":
        x = np.ones(n)
    else:
        x = np.zeros(n)
        x[rng.integers(0, max(n, 1), size=min(n, 5))] = 1.0
    return np.clip(draw(amplitudes) * x, -3e38, 3e38).astype(np.float32), sr  # stays finite


def check_featurize(x: np.ndarray, sr: int) -> None:
    """Finite (n, 224, 224) float32 images in [0, 1], or a clean one-line AudioError."""
    try:
        images = featurize(x, sample_rate=sr)
    except A.AudioError as e:  # NoSpeechError is one
        assert str(e) and "\n" not in str(e)
        if np.abs(x).max(initial=0.0) <= A.MAX_ABS_SAMPLE and x.size:
            # usable samples are refused only for having no speech
            assert isinstance(e, A.NoSpeechError), e
        event(type(e).__name__)
        return
    event("images")
    assert isinstance(images, np.ndarray) and images.dtype == np.float32
    assert images.ndim == 3 and images.shape[0] >= 1 and images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE)
    assert np.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0


@SETTINGS
@given(signals())
def test_featurize_signals_gives_valid_images_or_a_clean_audio_error(sig):
    check_featurize(*sig)


@SETTINGS
@given(raw_arrays, rates)
def test_featurize_any_float32_array_gives_valid_images_or_a_clean_audio_error(x, sr):
    check_featurize(x, sr)


@SETTINGS
@given(x=hnp.arrays(np.float32, st.integers(0, 4000), elements=st.floats(-1e6, 1e6, width=32)),
       sr_in=rates, sr_out=st.sampled_from([A.SAMPLE_RATE, 8000, 44100, 48000]))
def test_resample_is_finite_bounded_and_has_the_expected_length(x, sr_in, sr_out):
    y = A.resample(x, sr_in, sr_out)
    assert y.dtype == np.float32
    assert y.size == -(-x.size * sr_out // sr_in)  # ceil(n * sr_out / sr_in), exactly
    assert np.isfinite(y).all()
    if sr_in != sr_out and x.size:
        g = math.gcd(sr_in, sr_out)
        table, _ = R._resample_table(sr_out // g, sr_in // g)
        gain = float(np.abs(table).sum(axis=1).max())  # the filter's worst-case gain
        assert np.abs(y).max() <= gain * np.abs(x).max() * (1 + 1e-4) + 1e-30


@SETTINGS
@given(st.one_of(signals(max_seconds=4.0).map(lambda sig: sig[0]), raw_arrays))
def test_trim_silence_keeps_an_ordered_subset_or_says_no_speech(x):
    intervals = A.voiced_intervals(x)
    assert all(0 <= a < b <= x.size for a, b in intervals)
    assert all(b1 < a2 for (_, b1), (a2, _) in zip(intervals, intervals[1:]))  # ordered, disjoint
    try:
        kept = A.trim_silence(x)
    except A.NoSpeechError:
        assert sum(b - a for a, b in intervals) < A.MIN_SPEECH_SECONDS * A.SAMPLE_RATE
        return
    assert kept.dtype == np.float32
    assert A.MIN_SPEECH_SECONDS * A.SAMPLE_RATE <= kept.size <= x.size
    assert np.array_equal(kept, np.concatenate([x[a:b] for a, b in intervals]))

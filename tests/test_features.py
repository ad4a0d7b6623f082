"""The featurizer: resampling, trimming, spectrogram shape/range, determinism, lean imports."""

import subprocess
import sys

import numpy as np
import pytest

from voicegate.device import audio as A
from voicegate.device import features as F
from synth import synth_voice, write_wav


def _peak_hz(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return np.argmax(spec) * sr / x.size


@pytest.mark.parametrize("sr_in", [8000, 11025, 22050, 44100, 48000, 96000])
def test_resample_keeps_sine_frequency(sr_in):
    f = 1234.0
    x = np.sin(2 * np.pi * f * np.arange(sr_in) / sr_in).astype(np.float32)
    y = A.resample(x, sr_in, 16000)
    assert y.dtype == np.float32
    assert abs(y.size - 16000) <= 1
    assert abs(_peak_hz(y[200:-200], 16000) - f) < 3.0
    assert 0.6 < np.sqrt(np.mean(y[200:-200] ** 2)) / np.sqrt(0.5) < 1.05


def test_resample_is_antialiased():
    # 12 kHz is above the 8 kHz output Nyquist: sample dropping would alias it to 4 kHz.
    x = np.sin(2 * np.pi * 12000 * np.arange(48000) / 48000).astype(np.float32)
    y = A.resample(x, 48000, 16000)
    assert np.sqrt(np.mean(y[200:-200] ** 2)) < 1e-3
    naive = x[::3]
    assert np.sqrt(np.mean(naive**2)) > 0.5  # what dropping samples would have let through


def test_trim_removes_known_silence():
    speech = synth_voice("m1", 1.0, pauses=False)
    silence = np.zeros(16000, np.float32)
    x = np.concatenate([silence, speech, silence, silence, speech, silence])
    trimmed = A.trim_silence(x)
    # 4 s of silence are gone (edges and the 2 s inner gap); ~2 s of speech remain
    assert 1.8 * 16000 < trimmed.size < 2.2 * 16000


def test_trim_keeps_short_pauses():
    speech = synth_voice("m1", 1.0, pauses=False)
    gap = np.zeros(int(0.1 * 16000), np.float32)
    x = np.concatenate([speech, gap, speech])
    assert A.trim_silence(x).size >= x.size - 400


def test_trim_silence_raises_on_silence():
    with pytest.raises(A.NoSpeechError):
        A.trim_silence(np.zeros(32000, np.float32))
    with pytest.raises(A.NoSpeechError):
        A.trim_silence((1e-6 * np.random.default_rng(0).standard_normal(32000)).astype(np.float32))


def test_spectrogram_shape_dtype_range():
    x = synth_voice("f1", 3.0)
    img = F.featurize(x)
    assert img.ndim == 3 and img.shape[1:] == (224, 224)
    assert img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0 and img.max() == 1.0
    assert F.spectrogram(np.zeros(F.WINDOW_SAMPLES, np.float32)).shape == (224, 224)


def _reference_spectrogram(w):
    """The representation written out plainly: dB of the STFT magnitude, relative, floored."""
    n = np.arange(F.N_FFT)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / F.N_FFT)
    out = []
    for x in np.atleast_2d(w).astype(np.float64):
        frames = np.stack([x[i * F.STFT_HOP : i * F.STFT_HOP + F.N_FFT] for i in range(F.IMAGE_SIZE)])
        mag = np.abs(np.fft.rfft(frames * hann, axis=1))[:, : F.IMAGE_SIZE]  # (time, freq)
        db = 20 * np.log10(np.maximum(mag, F.AMIN))
        db = np.maximum(db - db.max(), -F.IMAGE_TOP_DB)
        out.append(((db + F.IMAGE_TOP_DB) / F.IMAGE_TOP_DB).T[::-1])  # high frequencies on top
    return np.stack(out)


@pytest.mark.parametrize("kind", ["voice", "silence", "near-silence", "clipped"])
def test_spectrogram_matches_the_plain_formula(kind):
    rng = np.random.default_rng(3)
    w = {"voice": np.stack([synth_voice("m1", 2.0, seed=s)[: F.WINDOW_SAMPLES] for s in (0, 1)]),
         "silence": np.zeros((1, F.WINDOW_SAMPLES)),
         "near-silence": 1e-9 * rng.standard_normal((2, F.WINDOW_SAMPLES)),
         "clipped": np.clip(3 * rng.standard_normal((1, F.WINDOW_SAMPLES)), -1, 1)}[kind]
    got = F.spectrogram(w.astype(np.float32))
    want = _reference_spectrogram(w.astype(np.float32))
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-5


def test_spectrogram_low_frequency_at_bottom():
    tone = np.sin(2 * np.pi * 500 * np.arange(F.WINDOW_SAMPLES) / 16000).astype(np.float32)
    img = F.spectrogram(tone)
    row = int(np.argmax(img.mean(axis=1)))
    assert row == 223 - round(500 / (16000 / F.N_FFT))


def test_featurize_is_deterministic_and_gain_invariant(tmp_path):
    x = synth_voice("m2", 4.0)
    a = F.featurize(x)
    b = F.featurize(x.copy())
    np.testing.assert_array_equal(a, b)
    c = F.featurize(0.25 * x)
    np.testing.assert_allclose(a, c, atol=1e-4)
    path = write_wav(tmp_path / "x.wav", x, subtype="FLOAT")
    np.testing.assert_allclose(F.featurize(path), a, atol=1e-5)


def test_short_audio_is_tiled_to_one_window():
    x = synth_voice("f2", 0.8, pauses=False)
    img = F.featurize(x)
    assert img.shape == (1, 224, 224)


def test_window_count_follows_hop():
    x = np.random.default_rng(0).standard_normal(5 * 16000).astype(np.float32)
    w = F.frame_windows(x, hop_seconds=1.0)
    assert w.shape == (4, F.WINDOW_SAMPLES)  # starts 0,1,2,3 s; the tail is covered
    w = F.frame_windows(x, hop_seconds=0.5)
    assert w.shape[0] == 7


def test_device_import_is_lean():
    code = (
        "import sys, voicegate.device, voicegate.device.features, voicegate.device.audio;"
        "bad=[m for m in ('torch','librosa','sklearn','matplotlib') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.shared
def test_featurize_real_speech(librispeech):
    path = next((librispeech / "test-other" / "1998").glob("*.flac"))
    img = F.featurize(path)
    assert img.shape[1:] == (224, 224) and np.isfinite(img).all()
    assert 0.0 <= img.min() and img.max() <= 1.0

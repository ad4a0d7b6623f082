"""The GE2E teacher: resemblyzer's pretrained d-vector encoder, on the training side only.

``resemblyzer`` (Apache-2.0) ships a 3-layer LSTM speaker encoder trained with the GE2E loss
on LibriSpeech-other and VoxCeleb (about 8,000 voices); 256-d L2-normalised embeddings of
1.6 s partial utterances (40-band mel frames, 10 ms hop). The student encoder is distilled
towards its embedding of clean audio. It never reaches the device.

Installing it: ``pip install webrtcvad-wheels && pip install --no-deps resemblyzer`` (its own
``webrtcvad`` requirement is an sdist that needs a compiler). Both ``webrtcvad`` builds import
``pkg_resources`` (the sdist always, the wheel on old Pythons), which recent setuptools no
longer ships: :func:`ensure_pkg_resources` installs a tiny stand-in module (only
``get_distribution(name).version``, backed by ``importlib.metadata``) while resemblyzer is
imported, only when the real one is missing, and removes it again afterwards. resemblyzer's VAD trimming is not used here
(the windows come from the device's own speech selection), so when ``webrtcvad`` is absent
altogether a stub module takes its place.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

TEACHER_DIM = 256
PARTIAL_FRAMES = 160  # resemblyzer's partial utterance: 160 mel frames = 1.6 s
MEL_HOP = 160  # samples (10 ms)
MEL_FFT = 400  # samples (25 ms)
N_MELS = 40
SAMPLE_RATE = 16000
NORM_DBFS = -30.0  # resemblyzer's volume normalisation target


class TeacherUnavailable(RuntimeError):
    """resemblyzer cannot be imported (not installed); says how to install it."""


def ensure_pkg_resources() -> bool:
    """Make ``import pkg_resources`` work for webrtcvad when setuptools no longer has it; True
    when the stand-in was installed (the caller removes it again: see import_resemblyzer)."""
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return False
    from importlib import metadata

    shim = types.ModuleType("pkg_resources")

    class _Distribution:
        def __init__(self, name: str):
            self.project_name = name
            self.version = metadata.version(name)

    def get_distribution(name: str) -> _Distribution:
        return _Distribution(name)

    shim.get_distribution = get_distribution
    shim.DistributionNotFound = metadata.PackageNotFoundError
    shim.__doc__ = "voicegate stand-in for setuptools' pkg_resources (get_distribution only)"
    sys.modules["pkg_resources"] = shim
    log.debug("pkg_resources missing: installed a get_distribution-only stand-in")
    return True


def _ensure_webrtcvad() -> None:
    try:
        import webrtcvad  # noqa: F401
    except ImportError:
        stub = types.ModuleType("webrtcvad")

        def _missing(*_a, **_k):
            raise TeacherUnavailable("webrtcvad is not installed (pip install webrtcvad-wheels)")

        stub.Vad = _missing
        sys.modules["webrtcvad"] = stub
        log.debug("webrtcvad missing: resemblyzer's VAD trimming is unavailable (not used)")


def import_resemblyzer():
    """``(resemblyzer.VoiceEncoder, resemblyzer.audio)``; raises TeacherUnavailable."""
    shimmed = ensure_pkg_resources()
    try:
        _ensure_webrtcvad()
        from resemblyzer import VoiceEncoder, audio
    except ImportError as e:
        raise TeacherUnavailable(
            f"the GE2E teacher needs resemblyzer ({e}); install it with "
            "'pip install webrtcvad-wheels && pip install --no-deps resemblyzer'"
        ) from None
    finally:
        if shimmed:  # only webrtcvad's import needs it; tools that probe pkg_resources must not see it
            sys.modules.pop("pkg_resources", None)
    return VoiceEncoder, audio


def normalise_volume(x: np.ndarray, target_dbfs: float = NORM_DBFS) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    if rms <= 0:
        return x.astype(np.float32)
    return (x * (10.0 ** (target_dbfs / 20.0) / rms)).astype(np.float32)


class Teacher:
    """Batched GE2E embeddings of fixed-length 16 kHz windows (CPU)."""

    def __init__(self, threads: Optional[int] = None):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        VoiceEncoder, self._audio = import_resemblyzer()
        self.encoder = VoiceEncoder("cpu", verbose=False)
        self.encoder.eval()
        self._mel_basis = None
        self._hann = None

    def mels(self, windows: np.ndarray) -> np.ndarray:
        """(n, samples) audio -> (n, frames, 40) mel power frames, as resemblyzer's
        ``wav_to_mel_spectrogram`` (librosa, n_fft 400, hop 160, centred, zero padding), batched."""
        import librosa

        if self._mel_basis is None:
            self._mel_basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=MEL_FFT, n_mels=N_MELS).astype(np.float32)
            self._hann = librosa.filters.get_window("hann", MEL_FFT, fftbins=True).astype(np.float32)
        w = np.stack([normalise_volume(x) for x in np.atleast_2d(windows)])
        w = np.pad(w, ((0, 0), (MEL_FFT // 2, MEL_FFT // 2)))
        frames = np.lib.stride_tricks.sliding_window_view(w, MEL_FFT, axis=1)[:, ::MEL_HOP] * self._hann
        power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2  # (n, frames, 201)
        return (power.astype(np.float32) @ self._mel_basis.T).astype(np.float32)

    def partials(self, mels: np.ndarray, k: int = 1) -> tuple[np.ndarray, int]:
        """Cut (n, frames, 40) into (n * k, 160, 40) partials spread evenly over each window
        (k = 1: the central 1.6 s; each partial costs about 0.25 G multiply-adds)."""
        n_frames = mels.shape[1]
        if n_frames <= PARTIAL_FRAMES:
            pad = PARTIAL_FRAMES - n_frames
            return np.pad(mels, ((0, 0), (0, pad), (0, 0)), mode="wrap"), 1
        if k == 1:
            s = (n_frames - PARTIAL_FRAMES) // 2
            return np.ascontiguousarray(mels[:, s : s + PARTIAL_FRAMES]), 1
        starts = np.linspace(0, n_frames - PARTIAL_FRAMES, k).round().astype(int)
        parts = np.stack([mels[:, s : s + PARTIAL_FRAMES] for s in starts], axis=1)
        return parts.reshape(-1, PARTIAL_FRAMES, mels.shape[2]), k

    def embed_windows(self, windows: np.ndarray, batch: int = 64, partials: int = 1) -> np.ndarray:
        """(n, samples) float32 audio -> (n, 256) L2-normalised teacher embeddings."""
        import torch

        windows = np.atleast_2d(np.asarray(windows, dtype=np.float32))
        out = []
        for i in range(0, len(windows), batch):
            parts, k = self.partials(self.mels(windows[i : i + batch]), partials)
            with torch.no_grad():
                e = self.encoder(torch.from_numpy(parts)).numpy().reshape(-1, k, TEACHER_DIM)
            e = e.mean(axis=1)
            out.append(e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12))
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, TEACHER_DIM), np.float32)

    def embed_utterance(self, x: np.ndarray) -> np.ndarray:
        """One 256-d embedding of a whole utterance (resemblyzer's own partial scheme)."""
        return self.encoder.embed_utterance(normalise_volume(np.asarray(x, np.float32)))

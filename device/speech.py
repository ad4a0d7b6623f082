"""Speech detection: which parts of the audio are a human voice, and is there enough of it.

Only a human voice may open the door, so the frames that reach the spectrogram are chosen by a
voice-activity model, not by loudness: a washing machine is loud, it is not speech.

The model is Silero VAD v6 (MIT licence, ``models/silero_vad.LICENSE``), vendored from the
``silero-vad`` 6.2.3 wheel as ``models/silero_vad_16k_sequence.onnx`` (16 kHz; one call takes a
sequence of frames and the LSTM state ``h``, ``c``). Its bytes are checked against the sha256 in
``models/manifest.json`` before use, like the gate models (a modified file is a ModelError).
Each frame is FRAME_SAMPLES = 512 samples (32 ms) of 16 kHz audio, preceded by the last
CONTEXT_SAMPLES = 64 samples of the frame before it (zeros before the first); the context and
the state are carried in numpy, so a stream fed in any chunk sizes gives the same frame
probabilities as the whole recording (:class:`VadStream`). numpy + onnxruntime only.

The rule (:class:`SpeechConfig`; the defaults are the device's; the frame-selection settings,
FRAME_SELECTION_KEYS, are recorded in every exported model's feature contract under
``speech_detector``, the two decision settings are not, so they can change without a re-export):

- a frame *starts* speech when its probability is >= ``threshold`` (0.5) and speech *goes on*
  while frames stay >= ``neg_threshold`` (0.35); it ends after ``min_silence_s`` (0.25 s) of
  frames below ``neg_threshold`` (shorter pauses stay inside the segment);
- segments shorter than ``min_segment_s`` (0.25 s) are dropped; each kept segment is padded by
  ``pad_s`` (0.5 s) on both sides (overlaps merged) and only the padded segments, joined, are
  scored: the noise in pauses longer than 1 s never reaches the spectrogram. The detector's
  segments start and end a little inside the voice (on speechocean762's children and non-native
  speakers it misses weak onsets and endings about equally): 0.25 s of padding kept 96.7 % of the
  voiced frames of its recordings, 0.5 s keeps 98.3 % (``benchmarks/vad.py --kept-detail``);
- **fail closed on doubt**: the audio is decided on only if it holds at least
  ``min_speech_s`` (0.5 s) of sounding speech frames (unpadded), and speech frames make up at least
  ``min_share`` (25 %) of its sounding frames (frames above SILENCE_FLOOR_DBFS = -60 dBFS;
  digital silence does not count against it). Otherwise :class:`NoSpeechError` (exit 4,
  "no speech found ...") and no decision.

API (also used by train/ to select the same frames in training, and by enrolment):
``select_speech(x) -> Speech`` (never raises for lack of speech; ``.decidable``, ``.audio``,
``.share``, ``.speech_seconds``, ``.segments``), ``speech_only(x, where) -> np.ndarray``
(raises NoSpeechError; the drop-in for ``audio.trim_silence``), ``default_detector()``,
:class:`SpeechDetector`, :class:`VadStream` (streaming probabilities) and
:class:`Hysteresis` (the per-frame state machine the endpointer in endpoint.py also uses).

In ``listen`` the same detector endpoints the stream (device/endpoint.py): a sound the detector
does not call speech never opens an utterance, and one that fails the rule gives no decision.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .audio import SAMPLE_RATE, SILENCE_FLOOR_DBFS, NoSpeechError, PathLike
from .model_files import expected_sha256, models_dir, read_verified_model

log = logging.getLogger(__name__)

VAD_MODEL_NAME = "silero_vad_16k_sequence.onnx"
VAD_NAME = "silero-vad"
VAD_VERSION = "6.2.3"  # the silero-vad wheel the ONNX file comes from (model v6)
FRAME_SAMPLES = 512  # 32 ms at 16 kHz: one probability per frame
CONTEXT_SAMPLES = 64  # samples of the previous frame prepended to each frame
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
STATE_SHAPE = (1, 1, 128)  # LSTM h and c
_BATCH_FRAMES = 4096  # frames per model call offline (about 2 minutes of audio)


@dataclass(frozen=True)
class SpeechConfig:
    """The speech rule (see the module docstring); times in seconds, probabilities in [0, 1]."""

    threshold: float = 0.5
    neg_threshold: float = 0.35
    min_silence_s: float = 0.25
    min_segment_s: float = 0.25
    pad_s: float = 0.5
    min_speech_s: float = 0.5
    min_share: float = 0.25

    def frames(self, seconds: float) -> int:
        return int(round(seconds / FRAME_SECONDS))


    def to_dict(self) -> dict:
        return asdict(self)


# The settings that decide which frames are rendered (a model's training must have used the
# same): recorded in the feature contract. min_speech_s and min_share only decide whether the
# device decides at all, so they may change without re-exporting a model.
FRAME_SELECTION_KEYS = ("threshold", "neg_threshold", "min_silence_s", "min_segment_s", "pad_s")


# --- the model -------------------------------------------------------------------------------
def vad_model_path() -> Path:
    return models_dir() / VAD_MODEL_NAME


class VadModel:
    """The verified Silero VAD session. ``probabilities`` is thread-compatible (no shared state)."""

    def __init__(self, session, path: Path, sha256: str):
        self.session = session
        self.path = path
        self.sha256 = sha256

    @classmethod
    def load(cls, path: PathLike | None = None) -> "VadModel":
        """Open the VAD at ``path`` (default: the vendored one) after its sha256 check (ModelError)."""
        from .contract import ModelError
        from .runtime import make_session  # local: runtime imports features, which imports this

        p = Path(path) if path is not None else vad_model_path()
        data, digest = read_verified_model(p)
        try:
            session = make_session(data, threads=1)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelError(f"{p}: not a loadable voice-activity model ({first[:200]})") from None
        names = [i.name for i in session.get_inputs()]
        if names != ["input", "h", "c"]:
            raise ModelError(f"{p}: inputs {names} are not Silero VAD's [input, h, c]")
        return cls(session, p, digest)

    def run(self, rows: np.ndarray, h: np.ndarray, c: np.ndarray):
        """(n, CONTEXT+FRAME) rows and the state -> (n probabilities, h, c)."""
        from .contract import ModelError

        try:
            p, h, c = self.session.run(None, {"input": rows, "h": h, "c": c})
        except Exception as e:
            raise ModelError(f"{self.path}: voice-activity inference failed ({str(e)[:200]})") from None
        return np.asarray(p, dtype=np.float32).reshape(-1), h, c

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """One speech probability per whole FRAME_SAMPLES frame of 16 kHz mono ``x``."""
        s = self.stream()
        return s.feed(x)

    def stream(self) -> "VadStream":
        return VadStream(self)


class VadStream:
    """Streaming frame probabilities: ``feed`` chunks of any size, get one value per completed
    frame. The last CONTEXT_SAMPLES samples and the LSTM state carry over between calls, so the
    probabilities do not depend on how the audio was chunked."""

    def __init__(self, model: VadModel):
        self.model = model
        self.frames_done = 0
        self._pending = np.zeros(0, np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, np.float32)
        self._h = np.zeros(STATE_SHAPE, np.float32)
        self._c = np.zeros(STATE_SHAPE, np.float32)

    def feed(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        x = np.concatenate([self._pending, chunk]) if self._pending.size else chunk
        n = x.size // FRAME_SAMPLES
        self._pending = x[n * FRAME_SAMPLES :].copy()
        out = []
        for a in range(0, n, _BATCH_FRAMES):
            b = min(n, a + _BATCH_FRAMES)
            frames = x[a * FRAME_SAMPLES : b * FRAME_SAMPLES].reshape(b - a, FRAME_SAMPLES)
            ctx = np.concatenate([self._context[None], frames[:-1, -CONTEXT_SAMPLES:]])
            rows = np.ascontiguousarray(np.concatenate([ctx, frames], axis=1))
            p, self._h, self._c = self.model.run(rows, self._h, self._c)
            self._context = frames[-1, -CONTEXT_SAMPLES:].copy()
            out.append(p)
        self.frames_done += n
        return np.concatenate(out) if out else np.zeros(0, np.float32)


# --- the per-frame rule ----------------------------------------------------------------------
class Hysteresis:
    """Per-frame speech state with hysteresis and a minimum pause (see :class:`SpeechConfig`).

    ``step(p)`` consumes one frame probability and returns a finished segment ``(start, end)``
    in frames (end exclusive; before ``min_segment_s`` is applied) or None. ``finish()`` closes
    the segment in progress at the end of the audio.
    """

    def __init__(self, config: SpeechConfig):
        self.config = config
        self._min_silence = max(1, config.frames(config.min_silence_s))
        self.frame = 0  # index of the next frame
        self.in_speech = False
        self.start = 0
        self._quiet_since: Optional[int] = None  # first frame of the current pause

    def step(self, p: float) -> Optional[tuple[int, int]]:
        c, i = self.config, self.frame
        self.frame += 1
        if not self.in_speech:
            if p >= c.threshold:
                self.in_speech, self.start, self._quiet_since = True, i, None
            return None
        if p >= c.neg_threshold:
            if p >= c.threshold or self._quiet_since is None:
                self._quiet_since = None
            return None
        if self._quiet_since is None:
            self._quiet_since = i
        if i + 1 - self._quiet_since >= self._min_silence:
            seg = (self.start, self._quiet_since)
            self.in_speech, self._quiet_since = False, None
            return seg
        return None

    def finish(self) -> Optional[tuple[int, int]]:
        if not self.in_speech:
            return None
        end = self._quiet_since if self._quiet_since is not None else self.frame
        self.in_speech, self._quiet_since = False, None
        return (self.start, end)


# --- selection -------------------------------------------------------------------------------
@dataclass
class Speech:
    """What the detector found in one piece of audio."""

    audio: np.ndarray  # the padded speech segments, joined (what is scored)
    segments: list  # [(start, end)] sample intervals of the padded segments
    speech_seconds: float  # speech frames that are sounding, unpadded
    sounding_seconds: float  # frames above SILENCE_FLOOR_DBFS (the share's denominator)
    audio_seconds: float
    config: SpeechConfig = field(default_factory=SpeechConfig)

    @property
    def share(self) -> float:
        return self.speech_seconds / self.sounding_seconds if self.sounding_seconds > 0 else 0.0

    @property
    def decidable(self) -> bool:
        c = self.config
        return self.speech_seconds >= c.min_speech_s and self.share >= c.min_share

    def reason(self) -> str:
        c = self.config
        return (
            f"no speech found ({self.speech_seconds:.2f} s of speech, {self.share:.0%} of the "
            f"{self.sounding_seconds:.1f} s of sound; need {c.min_speech_s:g} s and {c.min_share:.0%})"
        )


class SpeechDetector:
    """The VAD model plus the rule; one per process is enough (:func:`default_detector`)."""

    def __init__(self, config: SpeechConfig | None = None, model: VadModel | None = None):
        self.config = config or SpeechConfig()
        self.model = model or VadModel.load()

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return self.model.probabilities(x)

    def speech_frames(self, probs: np.ndarray) -> list[tuple[int, int]]:
        """Frame intervals of speech (hysteresis, minimum pause and segment length; no padding)."""
        h = Hysteresis(self.config)
        raw = [seg for seg in (h.step(float(p)) for p in probs) if seg is not None]
        last = h.finish()
        if last is not None:
            raw.append(last)
        min_len = self.config.frames(self.config.min_segment_s)
        return [(a, b) for a, b in raw if b - a >= max(1, min_len)]

    def select(self, x: np.ndarray, probs: Optional[np.ndarray] = None) -> Speech:
        """Run the detector on 16 kHz mono float32 ``x``; never raises for lack of speech.

        ``probs``: the frame probabilities of ``x`` already computed (one per whole frame, as
        ``listen``'s endpointer has them), so the model does not run twice on the same audio.
        """
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if probs is None:
            probs = self.probabilities(x)
        else:
            probs = np.asarray(probs, dtype=np.float32).reshape(-1)
            if probs.size != x.size // FRAME_SAMPLES:
                raise ValueError(f"{probs.size} frame probabilities for {x.size // FRAME_SAMPLES} frames")
        frames = self.speech_frames(probs)
        sounding = sounding_frames(x)
        is_speech = np.zeros(sounding.size, dtype=bool)
        for a, b in frames:
            is_speech[a:b] = True
        pad = int(round(self.config.pad_s * SAMPLE_RATE))
        segments: list[list[int]] = []
        for a, b in frames:
            s, e = max(0, a * FRAME_SAMPLES - pad), min(x.size, b * FRAME_SAMPLES + pad)
            if segments and s <= segments[-1][1]:
                segments[-1][1] = max(segments[-1][1], e)
            else:
                segments.append([s, e])
        audio = np.concatenate([x[s:e] for s, e in segments]) if segments else x[:0]
        return Speech(
            audio=audio,
            segments=[(int(s), int(e)) for s, e in segments],
            speech_seconds=int(np.count_nonzero(is_speech & sounding)) * FRAME_SECONDS,
            sounding_seconds=int(np.count_nonzero(sounding)) * FRAME_SECONDS,
            audio_seconds=x.size / SAMPLE_RATE,
            config=self.config,
        )


def sounding_frames(x: np.ndarray) -> np.ndarray:
    """Per whole FRAME_SAMPLES frame of ``x``: is its RMS above SILENCE_FLOOR_DBFS?"""
    n = x.size // FRAME_SAMPLES
    frames = x[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES).astype(np.float64)
    return np.mean(frames**2, axis=1) > 10.0 ** (SILENCE_FLOOR_DBFS / 10.0)


_DEFAULT_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _default_detector() -> SpeechDetector:
    return SpeechDetector()


def default_detector() -> SpeechDetector:
    """The device's detector (vendored model, default rule), loaded once on first use."""
    with _DEFAULT_LOCK:
        return _default_detector()


def select_speech(x: np.ndarray, detector: SpeechDetector | None = None,
                  probs: Optional[np.ndarray] = None) -> Speech:
    """16 kHz mono audio -> :class:`Speech` (the frames to score, the share of speech)."""
    return (detector or default_detector()).select(x, probs)


def speech_only(x: np.ndarray, where: str | None = None, detector: SpeechDetector | None = None,
                probs: Optional[np.ndarray] = None) -> np.ndarray:
    """The speech of ``x`` (padded segments joined); NoSpeechError unless it is decidable.

    The message is one line starting with ``where`` (e.g. the file name) and "no speech found".
    ``probs``: frame probabilities already computed for ``x`` (see :meth:`SpeechDetector.select`).
    """
    speech = select_speech(x, detector, probs)
    if not speech.decidable:
        prefix = f"{where}: " if where else ""
        raise NoSpeechError(prefix + speech.reason())
    return speech.audio


def speech_contract(detector: SpeechDetector | None = None) -> dict:
    """Name, version, model sha256 and rule of the detector (``feature_contract()['speech_detector']``).

    Without a loaded detector the sha256 is read from the manifest (no model is opened).
    """
    if detector is not None:
        sha = detector.model.sha256
        config = detector.config
    else:
        try:
            sha = expected_sha256(vad_model_path())[0]
        except Exception:  # no manifest entry: the contract still names the detector
            sha = ""
        config = SpeechConfig()
    rule = config.to_dict()
    return {"name": VAD_NAME, "version": VAD_VERSION, "model": VAD_MODEL_NAME, "sha256": sha,
            "frame_samples": FRAME_SAMPLES, **{k: rule[k] for k in FRAME_SELECTION_KEYS}}

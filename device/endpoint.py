"""Endpointing for ``voicegate listen``: cut a 16 kHz stream into utterances with the speech detector.

The :class:`Endpointer` runs the speech detector (device/speech.py, Silero VAD) over fixed
32 ms frames: loud noise that is not speech never starts an utterance, and an utterance that
fails the speech rule is dropped (no decision). It re-frames its input internally, so the
utterances it returns do not depend on the chunk sizes it is fed.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from .audio import SAMPLE_RATE
from .speech import (
    FRAME_SAMPLES,
    FRAME_SECONDS,
    Hysteresis,
    Speech,
    SpeechDetector,
    default_detector,
    sounding_frames,
)

log = logging.getLogger(__name__)

VAD_BLOCK_FRAMES = 8  # the VAD runs on this many whole frames at a time (256 ms; fewer calls)


@dataclass
class EndpointConfig:
    """Endpointing around the speech detector's frames (times in seconds).

    Which frames are speech (thresholds, hysteresis) is the detector's :class:`SpeechConfig`;
    these settings only say how much audio to keep around them and when an utterance ends.
    """

    pre_roll: float = 0.2  # audio kept before the first speech frame
    tail: float = 0.064  # audio kept after the last speech frame (2 frames; the VAD lags ~0.1 s)
    hangover: float = 0.5  # this long below the detector's neg_threshold ends an utterance
    # ... unless it holds less than short_voiced of speech so far: then the pause must last
    # short_hangover, so "My name is ... Anna" stays one utterance instead of a 1 s fragment
    # that can only say UNCERTAIN (the encoder needs about 1.5 s for a confident score)
    short_voiced: float = 1.5
    short_hangover: float = 1.0
    max_utterance: float = 10.0  # an utterance is cut at this length

    def frames(self, seconds: float) -> int:
        return max(1, int(round(seconds / FRAME_SECONDS)))


@dataclass
class Utterance:
    """One endpointed utterance: its audio and where it lies in the stream (in samples)."""

    audio: np.ndarray
    start_sample: int
    end_sample: int
    cut: str  # "silence", "max_length", "end_of_stream" or "aborted"
    voiced_seconds: float  # frames the detector called speech
    probs: Optional[np.ndarray] = None  # the detector's probability of each of its frames


    @property
    def start_s(self) -> float:
        return self.start_sample / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end_sample / SAMPLE_RATE


class Endpointer:
    """Streaming endpointer on the speech detector (Silero VAD), invariant to chunk sizes.

    Input is re-framed into FRAME_SAMPLES frames and the VAD runs on blocks of
    VAD_BLOCK_FRAMES whole frames (its context and state carried over), so the same audio gives
    the same frame probabilities, hence the same utterances, whatever the chunking. An
    utterance starts at a frame the detector calls speech (``threshold``) and ends after
    ``hangover`` seconds below its ``neg_threshold`` (the detector's hysteresis; ``short_hangover``
    while it holds less than ``short_voiced`` of speech, so a phrase with a pause in it stays one
    utterance); noise the detector does not call speech never starts one, however loud. An
    utterance that fails the detector's rule (``SpeechConfig.min_speech_s`` of speech,
    ``min_share`` of its sounding frames) is dropped: no decision is made on it.
    """

    def __init__(self, config: EndpointConfig | None = None, detector: SpeechDetector | None = None):
        self.config = c = config or EndpointConfig()
        self.detector = detector or default_detector()
        self._vad = self.detector.model.stream()
        self._rule = Hysteresis(replace(self.detector.config, min_silence_s=c.hangover))
        self._tail = c.frames(c.tail)
        self._max_frames = c.frames(c.max_utterance)
        self._pending = np.zeros(0, dtype=np.float32)
        self._frame_i = 0  # index of the next frame
        self._pre: deque = deque(maxlen=c.frames(c.pre_roll))
        self._frames: list[np.ndarray] = []
        self._probs: list[float] = []  # per frame of the utterance: the detector's probability
        self._sounding: list[bool] = []  # per frame of the utterance: above SILENCE_FLOOR_DBFS?
        self._start_frame = 0  # first frame of the utterance (pre-roll included)
        self._speech_frame = 0  # its first speech frame
        self._held_end: Optional[int] = None  # a short utterance waiting out short_hangover: its speech end

    @property
    def in_speech(self) -> bool:
        return self._rule.in_speech or self._held_end is not None

    @property
    def position_s(self) -> float:
        """Seconds of audio consumed so far (whole frames)."""
        return self._frame_i * FRAME_SECONDS

    def feed(self, chunk: np.ndarray) -> list[Utterance]:
        """Consume a chunk of any size; return the utterances it completed."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        x = np.concatenate([self._pending, chunk]) if self._pending.size else chunk
        block = VAD_BLOCK_FRAMES * FRAME_SAMPLES
        n = x.size // block * block
        self._pending = x[n:].copy()
        return self._run(x[:n])

    def flush(self) -> list[Utterance]:
        """End of stream: decide the last whole frames; return the utterance in progress if it
        has enough speech."""
        x, self._pending = self._pending, np.zeros(0, dtype=np.float32)
        out = self._run(x[: x.size // FRAME_SAMPLES * FRAME_SAMPLES])
        seg = self._rule.finish()
        end = seg[1] if seg is not None else self._held_end
        if end is not None:
            utt = self._finish("end_of_stream", end_frame=end)
            if utt is not None:
                out.append(utt)
        return out

    def abort(self) -> Optional[Utterance]:
        """Drop the utterance in progress (the source failed) and return it, however short."""
        if not self.in_speech:
            return None
        self._rule.finish()
        return self._finish("aborted", keep_short=True)

    def _run(self, x: np.ndarray) -> list[Utterance]:
        if x.size == 0:
            return []
        probs = self._vad.feed(x)
        frames = x.reshape(-1, FRAME_SAMPLES)
        sounding = sounding_frames(x)
        out = []
        for frame, p, loud in zip(frames, probs, sounding):
            utt = self._step(frame, float(p), bool(loud))
            if utt is not None:
                out.append(utt)
        return out

    def _step(self, frame: np.ndarray, p: float, loud: bool) -> Optional[Utterance]:
        i = self._frame_i
        self._frame_i += 1
        was = self._rule.in_speech
        seg = self._rule.step(p)
        if not was and self._held_end is None:
            if not self._rule.in_speech:
                self._pre.append((frame, loud, p))
                return None
            self._frames = [f for f, _, _ in self._pre] + [frame]
            self._sounding = [q for _, q, _ in self._pre] + [loud]
            self._probs = [r for _, _, r in self._pre] + [p]
            self._start_frame = i - len(self._pre)
            self._speech_frame = i
            self._pre.clear()
            return None
        self._frames.append(frame)
        self._sounding.append(loud)
        self._probs.append(p)
        c = self.config
        if self._held_end is not None:  # a short utterance in a pause: does the speaker go on?
            if self._rule.in_speech:
                self._held_end = None  # yes: one utterance
            elif i + 1 >= self._held_end + c.frames(c.short_hangover):
                return self._finish("silence", end_frame=self._held_end)
            elif len(self._frames) >= self._max_frames:
                return self._finish("max_length", end_frame=self._held_end)
            return None
        if seg is not None:
            if self._voiced_seconds(seg[1] - self._start_frame) < c.short_voiced and c.short_hangover > c.hangover:
                self._held_end = seg[1]
                return None
            return self._finish("silence", end_frame=seg[1])
        if len(self._frames) >= self._max_frames:
            self._rule.finish()
            return self._finish("max_length")
        return None

    def _voiced_seconds(self, speech_end: int) -> float:
        """Sounding frames from the first speech frame up to ``speech_end`` (an index into the
        utterance's frames), in seconds."""
        return sum(self._sounding[self._speech_frame - self._start_frame : speech_end]) * FRAME_SECONDS

    def _finish(self, cut: str, end_frame: int | None = None, keep_short: bool = False) -> Optional[Utterance]:
        frames, sounding, probs, start = self._frames, self._sounding, self._probs, self._start_frame
        self._held_end = None
        speech_end = len(frames) if end_frame is None else end_frame - start
        voiced = self._voiced_seconds(speech_end)
        if end_frame is not None:  # keep only a short tail after the last speech frame
            keep = speech_end + self._tail
            frames, sounding, probs = frames[:keep], sounding[:keep], probs[:keep]
        self._frames, self._sounding, self._probs = [], [], []
        if not frames:
            return None
        audio = np.concatenate(frames)
        found = Speech(
            audio=audio,
            segments=[],
            speech_seconds=voiced,
            sounding_seconds=sum(sounding) * FRAME_SECONDS,
            audio_seconds=audio.size / SAMPLE_RATE,
            config=self.detector.config,
        )
        start_sample = start * FRAME_SAMPLES
        if not found.decidable and not keep_short:
            log.debug("dropped a sound at %.2f s: %s", start_sample / SAMPLE_RATE, found.reason())
            return None
        return Utterance(
            audio=audio,
            start_sample=start_sample,
            end_sample=start_sample + audio.size,
            cut=cut,
            voiced_seconds=found.speech_seconds,
            probs=np.asarray(probs, dtype=np.float32),
        )

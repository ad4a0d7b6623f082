"""Streaming audio for ``voicegate listen``: sources of 16 kHz mono chunks and an endpointer.

A *source* is anything iterable that yields float32 mono 16 kHz chunks (any size) and has
``close()`` and a ``dropped`` count. Iteration ending means the stream ended (a replayed
file); raising :class:`AudioDeviceError` means the device failed (``listen`` retries), and
raising :class:`~voicegate.device.audio.AudioError` means the input itself is unusable.

- :class:`MicrophoneSource` captures through sounddevice, which is imported only when it
  opens. The PortAudio callback pushes into a bounded :class:`ChunkQueue` that drops the
  OLDEST chunk when full and never waits for the consumer.
- :class:`FileSource` replays any readable audio file (any rate, any channel count) through
  the same path, decoded and resampled block by block so memory stays bounded, faster than
  real time. :class:`ArraySource` does the same for an array.

The :class:`~voicegate.device.endpoint.Endpointer` (device/endpoint.py, re-exported here) cuts
the stream into utterances with the speech detector.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from . import audio as _audio
from .audio import (
    SAMPLE_RATE,
    PathLike,
    _first_line,
    mono_blocks,
    read_audio,
)
from .resample import resample, resample_half_width
from .endpoint import VAD_BLOCK_FRAMES, EndpointConfig, Endpointer, Utterance  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SAMPLES = 1600  # 100 ms: what a source hands out per read
MIC_QUEUE_SECONDS = 10.0  # audio the microphone queue holds before it drops the oldest chunk
MIC_STALL_SECONDS = 2.0  # no audio from the device for this long means it has failed
FILE_BLOCK_SECONDS = 5.0  # a file is decoded this much at a time


class AudioDeviceError(RuntimeError):
    """The audio device cannot be used (``permanent``: retrying cannot help, e.g. no PortAudio)."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


# --- the bounded queue between the audio callback and the consumer -------------------------
class ChunkQueue:
    """A bounded FIFO of audio chunks whose ``push`` never waits and drops the oldest when full.

    ``push`` runs in the audio callback: a ``deque(maxlen=...)`` append is atomic in CPython
    and discards the oldest item itself, so the callback never takes a lock held by the
    consumer (the ``Event`` it sets is only ever held for an instant).
    """

    def __init__(self, max_chunks: int):
        if max_chunks < 1:
            raise ValueError("ChunkQueue needs room for at least one chunk")
        self._items: deque = deque(maxlen=int(max_chunks))
        self._ready = threading.Event()
        self.dropped = 0  # chunks discarded because the queue was full (written by push only)

    def __len__(self) -> int:
        return len(self._items)

    def push(self, chunk: np.ndarray) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(chunk)
        self._ready.set()

    def pop(self, timeout: float | None = None) -> Optional[np.ndarray]:
        """The oldest chunk, or None if none arrived within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self._items.popleft()
            except IndexError:
                pass
            self._ready.clear()
            try:  # a push may have landed between popleft and clear
                return self._items.popleft()
            except IndexError:
                pass
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            if not self._ready.wait(remaining):
                return None


# --- sources ---------------------------------------------------------------------------------
class AudioSource:
    """Base class: iterate for float32 mono 16 kHz chunks; ``close()`` when done."""

    dropped = 0  # chunks lost before the consumer saw them
    name = "source"

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ArraySource(AudioSource):
    """Replays a mono 16 kHz array in chunks, ``loops`` times (0 = forever)."""

    def __init__(self, audio: np.ndarray, chunk_samples: int = DEFAULT_CHUNK_SAMPLES, loops: int = 1):
        self.audio = np.asarray(audio, dtype=np.float32)
        if self.audio.ndim != 1:
            raise ValueError("ArraySource needs mono audio")
        self.chunk_samples = _check_chunk(chunk_samples)
        self.loops = int(loops)
        self.name = "array"

    def __iter__(self) -> Iterator[np.ndarray]:
        n = 0
        while self.loops <= 0 or n < self.loops:
            for start in range(0, self.audio.size, self.chunk_samples):
                yield self.audio[start : start + self.chunk_samples]
            n += 1


class FileSource(AudioSource):
    """Replays an audio file through the streaming path, faster than real time.

    The file is validated when the source is built (so a bad file fails at once with an
    :class:`AudioError`), then decoded, mixed to mono and resampled to 16 kHz one block at a
    time while it is iterated: memory does not grow with the file's length. ``loops`` replays
    it that many times (0 = forever).
    """

    def __init__(self, path: PathLike, chunk_samples: int = DEFAULT_CHUNK_SAMPLES, loops: int = 1):
        self.path = path
        self.chunk_samples = _check_chunk(chunk_samples)
        self.loops = int(loops)
        self.name = str(path)
        # validates existence, permissions, format, rate and channels, with a one-line reason
        _, self.file_rate = read_audio(path, max_seconds=0.01)

    def __iter__(self) -> Iterator[np.ndarray]:
        n = 0
        while self.loops <= 0 or n < self.loops:
            yield from rechunk(iter_file_16k(self.path), self.chunk_samples)
            n += 1


def _check_chunk(chunk_samples: int) -> int:
    chunk_samples = int(chunk_samples)
    if chunk_samples < 1:
        raise ValueError(f"chunk size must be at least 1 sample, got {chunk_samples}")
    return chunk_samples


def rechunk(blocks, chunk_samples: int) -> Iterator[np.ndarray]:
    """Re-cut a stream of arrays into ``chunk_samples`` pieces (the last may be shorter)."""
    pending = np.zeros(0, dtype=np.float32)
    for block in blocks:
        pending = np.concatenate([pending, block]) if pending.size else block
        n_full = pending.size // chunk_samples
        for i in range(n_full):
            yield pending[i * chunk_samples : (i + 1) * chunk_samples]
        pending = pending[n_full * chunk_samples :]
    if pending.size:
        yield pending


def iter_file_16k(path: PathLike, block_seconds: float = FILE_BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Decode ``path`` block by block to mono float32 16 kHz.

    Gives the same samples as ``load_audio(path)`` (the resampler sees enough context on each
    side of every block), with memory bounded by the block size instead of the file's length.
    """
    p = Path(path)
    f, _ = _audio._open(p, math.inf)  # the path, format, rate and channel checks of load_audio
    sr = int(f.samplerate)
    if sr == SAMPLE_RATE:
        yield from mono_blocks(f, p, max(1, int(block_seconds * sr)))
        return
    g = math.gcd(sr, SAMPLE_RATE)
    up, down = SAMPLE_RATE // g, sr // g
    half = resample_half_width(up, down)  # taps each side of the resampler's sinc
    ctx = down * math.ceil((half + 2) / down)  # context each side (+ a margin), a multiple of `down`
    block = max(ctx, down * math.ceil(block_seconds * sr / down))
    blocks = mono_blocks(f, p, block)  # `block` frames each, but the last
    empty = np.zeros(0, dtype=np.float32)
    left = empty
    cur = next(blocks, empty)
    while cur.size:
        nxt = next(blocks, empty)
        y = resample(np.concatenate([left, cur, nxt[:ctx]]), sr, SAMPLE_RATE)
        off = left.size * up // down  # exact: left.size is a multiple of `down`
        yield y[off : off + math.ceil(cur.size * up / down)]
        left = np.concatenate([left, cur])[-ctx:]
        cur = nxt


def import_sounddevice():
    """Import sounddevice, turning a missing PortAudio into a one-line AudioDeviceError."""
    try:
        import sounddevice
    except OSError as e:  # sounddevice raises OSError when libportaudio is missing
        why = _first_line(e)
        detail = "" if why.lower().startswith("portaudio library not found") else f" ({why})"
        raise AudioDeviceError(f"PortAudio library not found{detail}; install libportaudio2", permanent=True) from None
    except ImportError as e:
        raise AudioDeviceError(
            f"sounddevice is not installed ({_first_line(e)}); pip install sounddevice",
            permanent=True,
        ) from None
    return sounddevice


def parse_device(device: Union[str, int, None]) -> Union[str, int, None]:
    """A ``--device`` value: an index ("2") becomes an int, a name (substring) stays a string."""
    if device is None or isinstance(device, int):
        return device
    device = str(device).strip()
    return int(device) if device.lstrip("-").isdigit() else device


def list_input_devices() -> list[dict]:
    """Input devices as dicts (index, name, channels, default_samplerate, hostapi, default)."""
    sd = import_sounddevice()
    try:
        devices = sd.query_devices()
        default_in = sd.default.device[0] if sd.default.device is not None else -1
    except Exception as e:
        raise AudioDeviceError(f"cannot query audio devices ({_first_line(e)})") from None
    out = []
    for i, d in enumerate(devices):
        if int(d.get("max_input_channels", 0)) > 0:
            out.append(
                {
                    "index": int(d.get("index", i)),
                    "name": str(d.get("name", "")),
                    "channels": int(d["max_input_channels"]),
                    "default_samplerate": float(d.get("default_samplerate", 0.0)),
                    "hostapi": int(d.get("hostapi", 0)),
                    "default": int(d.get("index", i)) == default_in,
                }
            )
    return out


class MicrophoneSource(AudioSource):
    """Captures 16 kHz mono float32 from an input device through sounddevice.

    The PortAudio callback copies each block into a :class:`ChunkQueue` (bounded; it drops the
    oldest chunk when the consumer falls behind and counts it in ``dropped``). Iterating raises
    :class:`AudioDeviceError` when the stream stops or delivers nothing for ``stall_seconds``
    (a device that disappeared).
    """

    def __init__(
        self,
        device: Union[str, int, None] = None,
        chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
        queue_seconds: float = MIC_QUEUE_SECONDS,
        stall_seconds: float = MIC_STALL_SECONDS,
    ):
        self.device = parse_device(device)
        self.chunk_samples = _check_chunk(chunk_samples)
        self.stall_seconds = float(stall_seconds)
        self.queue = ChunkQueue(max(1, int(round(queue_seconds * SAMPLE_RATE / self.chunk_samples))))
        self.status_flags = 0  # callbacks that reported a PortAudio status (e.g. input overflow)
        self.name = f"microphone {self.device if self.device is not None else '(default)'}"
        self._stream = None

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def open(self) -> "MicrophoneSource":
        sd = import_sounddevice()
        try:
            info = sd.query_devices(self.device, "input")
        except Exception as e:
            which = "default input device" if self.device is None else f"input device {self.device!r}"
            raise AudioDeviceError(f"no {which} ({_first_line(e)})") from None
        self.name = f"microphone {info.get('name', self.device)!s}"
        try:
            self._stream = sd.InputStream(
                samplerate=SAMPLE_RATE,
                channels=1,
                dtype="float32",
                blocksize=self.chunk_samples,
                device=self.device,
                callback=self._callback,
            )
            self._stream.start()
        except Exception as e:
            self.close()
            raise AudioDeviceError(
                f"cannot open {self.name} at {SAMPLE_RATE} Hz mono ({_first_line(e)})"
            ) from None
        log.info("listening on %s", self.name)
        return self

    def _callback(self, indata, frames, time_info, status) -> None:  # PortAudio's thread
        if status:
            self.status_flags += 1
        self.queue.push(np.array(indata[:, 0], dtype=np.float32))

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._stream is None:
            self.open()
        while True:
            chunk = self.queue.pop(timeout=self.stall_seconds)
            if chunk is not None:
                yield chunk
                continue
            stream = self._stream
            if stream is None or not getattr(stream, "active", False):
                raise AudioDeviceError(f"{self.name}: input stream stopped")
            raise AudioDeviceError(f"{self.name}: no audio for {self.stall_seconds:g} s")

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        for step in (stream.stop, stream.close):
            try:
                step()
            except Exception as e:  # a vanished device may fail to stop; nothing left to do
                log.debug("closing %s: %s", self.name, e)

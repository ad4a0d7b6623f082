"""Audio input for the gate: reading, mono mix-down, resampling to 16 kHz (``resample.py``),
silence trimming.

Pure numpy (plus soundfile for decoding). Every audio constant is named once, here or in
``features.py``, and the rest of the project imports it from here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Union

import numpy as np

from .audio_header import chunk_inside_audio, truncated
from .resample import resample

log = logging.getLogger(__name__)

# --- audio constants -------------------------------------------------------------------------
SAMPLE_RATE = 16_000  # Hz: everything downstream of load_audio runs at this rate
MIN_INPUT_RATE = 8_000  # Hz: lower rates carry too little of the voice to decide on
MAX_INPUT_RATE = 192_000  # Hz
MAX_CHANNELS = 32
MAX_ABS_SAMPLE = float(2**31)  # no PCM format reaches beyond this, even unscaled int32: junk
MAX_FILE_SECONDS = 3600.0  # an uncapped read refuses longer files (memory); pass max_seconds
_READ_BLOCK_FRAMES = 1 << 16  # frames decoded per block when mixing a file down to mono

# Silence trimming (energy based, like the study's librosa.effects.split with top_db).
TRIM_TOP_DB = 40.0  # frames quieter than (loudest frame - TRIM_TOP_DB) are silence
TRIM_FRAME = 400  # samples (25 ms) per RMS frame
TRIM_HOP = 160  # samples (10 ms) between RMS frames
TRIM_KEEP_GAP_SECONDS = 0.25  # pauses shorter than this inside speech are kept
SILENCE_FLOOR_DBFS = -60.0  # if the loudest frame is below this, there is no speech at all
MIN_SPEECH_SECONDS = 0.3  # less voiced audio than this after trimming is "no speech"
# A signal that sits off zero (a faulty or badly biased microphone input) is recognised worse:
# the shipped example with a DC offset of 0.02 keeps p 0.97, 0.05 falls to 0.92, 0.1 is
# UNCERTAIN (p 0.76). enroll warns and doctor warns above this mean level.
MAX_DC_OFFSET = 0.02


_RMS_CHUNK = 1 << 11  # RMS frames per block in frame_rms_db (bounds memory on long audio)

PathLike = Union[str, os.PathLike]


class AudioError(ValueError):
    """The audio cannot be used for a decision (the CLI maps this to exit code 4)."""


class NoSpeechError(AudioError):
    """The audio holds no usable speech (silent, too quiet, or too short once trimmed)."""


# --- reading ---------------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _open_reason(e: BaseException, p: Path) -> str:
    """libsndfile's reason without the repeated path, and without its misleading guess."""
    reason = _first_line(e)
    for prefix in (f"Error opening {str(p)!r}: ", f"Error opening '{p}': "):
        if reason.startswith(prefix):
            reason = reason[len(prefix) :]
    if reason.startswith("File does not exist or is not a regular file"):
        reason = "unrecognised or corrupt data"  # we checked it exists and is a regular file
    return reason


def _check_path(p: Path) -> None:
    """Raise AudioError unless ``p`` is a non-empty regular file this process may open."""
    try:
        st = p.stat()
    except FileNotFoundError:
        raise AudioError(f"{p}: no such file") from None
    except PermissionError:
        raise AudioError(f"{p}: permission denied") from None
    except (OSError, ValueError) as e:  # ELOOP, ENOTDIR, ENAMETOOLONG, embedded NUL byte, ...
        raise AudioError(f"{p}: cannot access ({getattr(e, 'strerror', None) or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(f"{p}: is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device could block or never end
        raise AudioError(f"{p}: not a regular file (a pipe, socket or device)")
    if st.st_size == 0:
        raise AudioError(f"{p}: empty file (0 bytes)")
    try:  # a real open, so a denial is reported even where os.access would be fooled
        os.close(os.open(p, os.O_RDONLY))
    except PermissionError:
        raise AudioError(f"{p}: permission denied") from None
    except OSError as e:
        raise AudioError(f"{p}: cannot open ({e.strerror or e})") from None


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _decoder_chatter_to_log():
    """Route what C decoders print straight to file descriptor 2 into the log (DEBUG).

    libsndfile's MP3 decoder (libmpg123) writes warnings such as "Note: Trying to resync..."
    to the process's stderr while it probes or decodes a file. A CLI promises one line on
    stderr, so the descriptor points at a temporary file for the call and its text is logged
    instead. Held briefly (one open or one block read), under a lock; anything another thread
    writes to fd 2 meanwhile is logged the same way, not lost. Without a usable stderr or
    temporary file, the call runs unguarded.
    """
    with _STDERR_LOCK:
        try:
            tmp = tempfile.TemporaryFile()
        except OSError:
            tmp = None
        try:
            saved = os.dup(2) if tmp is not None else None
        except OSError:
            saved = None
        if saved is None:
            if tmp is not None:
                tmp.close()
            yield
            return
        try:
            os.dup2(tmp.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
            tmp.seek(0)
            chatter = tmp.read().decode("utf-8", "replace").strip()
        finally:
            os.close(saved)
            tmp.close()
    if chatter:
        log.debug("audio decoder: %s", " / ".join(chatter.splitlines()))


def _open(p: Path, max_seconds: float | None):
    """Open ``p`` with soundfile after the path checks; validate rate, channels and length.

    Returns ``(soundfile, frames_to_read)``; frames_to_read is -1 for "to the end".
    """
    import soundfile as sf  # local: keeps `import voicegate.device` light

    _check_path(p)
    try:
        with _decoder_chatter_to_log():
            f = sf.SoundFile(str(p))
    except Exception as e:  # soundfile raises several types for malformed files
        raise AudioError(f"{p}: not readable audio ({_open_reason(e, p)})") from None
    try:
        cut = truncated(f)
        if cut:
            raise AudioError(f"{p}: the file is cut short ({cut}): a damaged copy or an unfinished recording")
        overrun = chunk_inside_audio(p) if f.format in ("WAV", "WAVEX") else None
        if overrun:
            raise AudioError(f"{p}: the file is damaged ({overrun}): its header's audio length is wrong")
        sr, channels = int(f.samplerate), int(f.channels)
        if not MIN_INPUT_RATE <= sr <= MAX_INPUT_RATE:
            raise AudioError(
                f"{p}: sample rate {sr} Hz is outside {MIN_INPUT_RATE}-{MAX_INPUT_RATE} Hz"
            )
        if not 1 <= channels <= MAX_CHANNELS:
            raise AudioError(f"{p}: {channels} channels is not supported (1-{MAX_CHANNELS})")
        if max_seconds is not None and math.isinf(max_seconds):
            frames = -1  # the caller streams the file block by block: no cap needed
        elif max_seconds is not None:
            frames = int(math.ceil(max(0.0, float(max_seconds)) * sr))
        elif f.frames > MAX_FILE_SECONDS * sr:
            raise AudioError(
                f"{p}: {f.frames / sr:.0f} s long, more than the {MAX_FILE_SECONDS:.0f} s "
                "that can be read whole (read a part with max_seconds)"
            )
        else:
            frames = -1
    except BaseException:
        f.close()
        raise
    return f, frames


def _read_block(f, p: Path, n: int) -> np.ndarray:
    quiet = _decoder_chatter_to_log() if f.format == "MP3" else contextlib.nullcontext()
    try:
        with quiet:
            return f.read(frames=n, dtype="float32", always_2d=True)
    except Exception as e:  # a decoder error part-way through the file
        raise AudioError(f"{p}: not readable audio ({_first_line(e)})") from None


def read_audio(path: PathLike, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode ``path`` to float32 (frames, channels) and its sample rate.

    Raises :class:`AudioError` with a one-line reason that names the file for anything that is
    not readable audio (missing, a directory, a pipe, empty, unreadable, not audio, a sample
    rate or channel count out of range, no samples). ``max_seconds`` caps how much is decoded,
    so a huge (or lying) file cannot exhaust memory; without it a file longer than
    MAX_FILE_SECONDS is refused.
    """
    p = Path(path)
    f, frames = _open(p, max_seconds)
    with f:
        data = _read_block(f, p, frames)
    if data.shape[0] == 0:
        raise AudioError(f"{p}: holds no audio samples")
    return data, int(f.samplerate)


def open_mono_blocks(
    path: PathLike, block_frames: int = _READ_BLOCK_FRAMES, max_seconds: float | None = None
) -> tuple[int, Iterator[np.ndarray]]:
    """Validate and open ``path`` now; return (sample rate, iterator of mono float32 blocks).

    The file is checked at once (same one-line :class:`AudioError` reasons as
    :func:`read_audio`). Each block of up to ``block_frames`` frames is mixed to mono and
    checked for NaN, Inf and absurd values as it is decoded, so memory is one block, not the
    file. ``max_seconds`` caps the total (without it, files over MAX_FILE_SECONDS are refused;
    ``math.inf`` reads to the end whatever the length, for callers that stream the blocks).
    Concatenated, the blocks equal ``to_mono(read_audio(path, max_seconds)[0])``.
    """
    p = Path(path)
    f, frames = _open(p, max_seconds)
    return int(f.samplerate), mono_blocks(f, p, block_frames, frames)


def mono_blocks(f, p: Path, block_frames: int, frames: int = -1) -> Iterator[np.ndarray]:
    """Decode the open soundfile ``f`` (of path ``p``) in blocks of ``block_frames`` frames,
    each mixed to mono and checked; ``frames`` caps the total (-1: to the end). Closes ``f``."""
    block_frames = max(1, int(block_frames))
    with f:
        left = frames  # -1: to the end
        while left != 0:
            n = block_frames if left < 0 else min(block_frames, left)
            data = _read_block(f, p, n)
            if data.shape[0] == 0:
                return
            x = to_mono(data)
            check_finite(x, str(p))
            left = left - data.shape[0] if left > 0 else left
            yield x


def _read_mono(p: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Like ``to_mono(read_audio(p))`` (the same samples) with one mono copy at peak."""
    sr, it = open_mono_blocks(p, max_seconds=max_seconds)
    blocks = list(it)
    if not blocks:
        raise AudioError(f"{p}: holds no audio samples")
    return (blocks[0] if len(blocks) == 1 else np.concatenate(blocks)), sr


CANCELLED_MIX = 0.01  # a channel mix with less than 1 % of the channels' mean power cancelled out


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average the channels of a (frames, channels) or (frames,) array to float32 mono.

    Channels that cancel when averaged (a stereo pair wired with one side's polarity reversed:
    the mix is near silence though each channel holds the sound) give the loudest channel
    instead, so such a file is decided on, not called silent."""
    try:
        data = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise AudioError(f"audio is not numeric ({_first_line(e)})") from None
    if data.ndim == 2:
        if data.shape[1] == 0:
            raise AudioError("audio has no channels")
        mix = data.mean(axis=1, dtype=np.float32)
        if data.shape[1] > 1 and data.shape[0]:
            power = np.einsum("fc,fc->c", data, data, dtype=np.float64)
            if power.max() > 0 and float(mix @ mix.astype(np.float64)) < CANCELLED_MIX * power.mean():
                log.debug("the channels cancel when mixed: using channel %d", int(power.argmax()))
                return np.ascontiguousarray(data[:, int(power.argmax())])
        data = mix
    elif data.ndim != 1:
        raise AudioError(f"audio must be 1-D or (frames, channels), got shape {data.shape}")
    return data


def check_finite(x: np.ndarray, where: str = "audio") -> None:
    """Raise AudioError if ``x`` holds NaN, Inf, or values beyond +-MAX_ABS_SAMPLE (junk)."""
    if x.size == 0:
        return
    peak = float(np.max(np.abs(x)))  # NaN propagates through max; Inf stays Inf
    if not math.isfinite(peak):
        raise AudioError(f"{where}: contains NaN or infinite samples")
    if peak > MAX_ABS_SAMPLE:
        raise AudioError(f"{where}: sample values up to {peak:.3g} are not audio")


def load_audio(
    source: Union[PathLike, np.ndarray],
    sample_rate: int | None = None,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Return mono float32 audio at :data:`SAMPLE_RATE` from a path or an array.

    An array needs ``sample_rate`` (it may be 1-D or (frames, channels)). A path is decoded
    with soundfile; ``max_seconds`` caps the decoded duration (from a file or an array).
    Raises :class:`AudioError` (one line, naming the file) for anything unusable.
    """
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise ValueError("load_audio: an array needs sample_rate")
        where = "audio array"
        sr = _check_rate(sample_rate, where)
        data = source
        if max_seconds is not None:
            data = data[: int(math.ceil(max(0.0, float(max_seconds)) * sr))]
        x = to_mono(data)
        check_finite(x, where)
    else:
        where = str(source)
        x, sr = _read_mono(Path(source), max_seconds)
    if x.size == 0:
        raise AudioError(f"{where}: holds no audio samples")
    return resample(x, sr, SAMPLE_RATE)


def _check_rate(sample_rate, where: str) -> int:
    try:
        sr = int(sample_rate)
    except (TypeError, ValueError, OverflowError):
        raise AudioError(f"{where}: invalid sample rate {sample_rate!r}") from None
    if not MIN_INPUT_RATE <= sr <= MAX_INPUT_RATE:
        raise AudioError(f"{where}: sample rate {sr} Hz is outside {MIN_INPUT_RATE}-{MAX_INPUT_RATE} Hz")
    return sr


def dc_offset(x: np.ndarray) -> float:
    """The mean sample value of ``x`` (0 for a healthy input; 0 for no samples)."""
    return float(np.mean(x, dtype=np.float64)) if np.size(x) else 0.0


def dc_offset_problem(dc: float) -> str | None:
    """What to say about a DC offset ``dc`` above MAX_DC_OFFSET (None if it is within it): the
    one wording of enroll's warning and doctor's microphone check."""
    if abs(dc) <= MAX_DC_OFFSET:
        return None
    return (f"the signal sits off zero (DC offset {dc:+.3f}, want within {MAX_DC_OFFSET:g}): a faulty or "
            "badly biased microphone input; voices are recognised worse through it")


# --- silence trimming ------------------------------------------------------------------------
def frame_rms_db(x: np.ndarray) -> np.ndarray:
    """RMS level in dBFS of TRIM_FRAME-sample frames every TRIM_HOP samples (centred)."""
    x = np.asarray(x, dtype=np.float32)
    pad = TRIM_FRAME // 2
    xp = np.pad(x, (pad, pad))
    n_frames = 1 + max(0, xp.size - TRIM_FRAME) // TRIM_HOP
    frames = np.lib.stride_tricks.sliding_window_view(xp, TRIM_FRAME)[::TRIM_HOP][:n_frames]
    rms = np.empty(frames.shape[0], dtype=np.float64)
    for i in range(0, frames.shape[0], _RMS_CHUNK):  # a float64 copy of a block at a time
        rms[i : i + _RMS_CHUNK] = np.sqrt(
            np.mean(frames[i : i + _RMS_CHUNK].astype(np.float64) ** 2, axis=1)
        )
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
    x: np.ndarray,
    top_db: float = TRIM_TOP_DB,
    sample_rate: int = SAMPLE_RATE,
    where: str | None = None,
) -> np.ndarray:
    """Drop leading, trailing and inner silence; return the voiced audio joined together.

    Raises :class:`NoSpeechError` if less than MIN_SPEECH_SECONDS of speech remains (its
    message starts with ``where``, e.g. the file name, when given).
    """
    x = np.asarray(x, dtype=np.float32)
    intervals = voiced_intervals(x, top_db, sample_rate)
    kept = np.concatenate([x[a:b] for a, b in intervals]) if intervals else x[:0]
    if kept.size < MIN_SPEECH_SECONDS * sample_rate:
        prefix = f"{where}: " if where else ""
        raise NoSpeechError(
            f"{prefix}no speech found ({kept.size / sample_rate:.2f} s above the silence "
            f"threshold, need {MIN_SPEECH_SECONDS} s)"
        )
    return kept

"""Anti-aliased resampling: a windowed-sinc polyphase filter (Kaiser window), pure numpy.

``audio.load_audio`` brings every input to 16 kHz with it, and ``stream.iter_file_16k`` does the
same block by block (it asks :func:`resample_half_width` how much context a block needs).
"""

from __future__ import annotations

import functools
import math

import numpy as np

RESAMPLE_ZERO_CROSSINGS = 16  # half-length of the sinc, in zero crossings of the cutoff
RESAMPLE_ROLLOFF = 0.945  # cutoff as a share of the lower Nyquist frequency
RESAMPLE_KAISER_BETA = 8.6  # about 80 dB stop-band attenuation
_RESAMPLE_GATHER = 1 << 21  # input samples gathered per vectorised block (bounds memory)
_TABLE_CHUNK = 1 << 10  # filter phases computed per block (bounds memory at odd rates)


def _resample_cutoff(up: int, down: int) -> float:
    """The filter's cutoff relative to the input Nyquist frequency."""
    return RESAMPLE_ROLLOFF * min(1.0, up / down)


def resample_half_width(up: int, down: int) -> int:
    """Taps each side of the resampler's sinc, in input samples, for the ratio ``up/down``.

    The one formula: :func:`resample` uses it, and so does a streaming reader
    (``stream.iter_file_16k``) to know how much context each block needs.
    """
    return int(math.ceil(RESAMPLE_ZERO_CROSSINGS / _resample_cutoff(up, down)))


@functools.lru_cache(maxsize=4)
def _resample_table(up: int, down: int) -> tuple[np.ndarray, int]:
    """Polyphase windowed-sinc table: row p holds the taps for output phase p/up.

    Built a block of phases at a time (odd rates have up to 16000 phases) and cached: a
    streaming reader resamples every block with the same table. The table is read-only.
    """
    cutoff = _resample_cutoff(up, down)
    half = resample_half_width(up, down)
    offsets = np.arange(-half + 1, half + 1)  # input sample k = floor(t) + offset
    w = np.kaiser(2 * half + 1, RESAMPLE_KAISER_BETA)
    grid = np.linspace(-half, half, 2 * half + 1)
    table = np.empty((up, offsets.size), dtype=np.float32)
    for p0 in range(0, up, _TABLE_CHUNK):
        frac = np.arange(p0, min(up, p0 + _TABLE_CHUNK))[:, None] / up  # fractional part of t
        d = frac - offsets[None, :]  # t - k, in input samples
        # sample the continuous Kaiser window at d (|d| <= half)
        window = np.interp(d, grid, w, left=0.0, right=0.0)
        table[p0 : p0 + frac.shape[0]] = cutoff * np.sinc(cutoff * d) * window
    table.flags.writeable = False
    return table, half


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling of mono float32 ``x`` from ``sr_in`` to ``sr_out``.

    A polyphase windowed-sinc filter with its cutoff just under the lower Nyquist frequency,
    so downsampling is anti-aliased (no sample dropping).
    """
    x = np.asarray(x, dtype=np.float32)
    if sr_in == sr_out:
        return x
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"invalid sample rates {sr_in} -> {sr_out}")
    g = math.gcd(int(sr_in), int(sr_out))
    up, down = int(sr_out) // g, int(sr_in) // g
    table, half = _resample_table(up, down)
    n_out = int(math.ceil(x.size * up / down))
    padded = np.concatenate([np.zeros(half, np.float32), x, np.zeros(half + 1, np.float32)])
    taps = np.arange(-half + 1, half + 1) + half  # offsets into `padded`
    out = np.empty(n_out, dtype=np.float32)
    chunk = max(1, _RESAMPLE_GATHER // taps.size)  # output samples per block
    for start in range(0, n_out, chunk):
        n = np.arange(start, min(n_out, start + chunk), dtype=np.int64)
        pos = n * down
        base, phase = pos // up, pos % up
        frames = padded[base[:, None] + taps[None, :]]
        out[start : start + n.size] = np.einsum("ij,ij->i", frames, table[phase])
    return out

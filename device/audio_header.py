"""Does an audio file hold the audio its header promises? Two checks that ``audio.load_audio``
runs before it reads a file, so a damaged copy is refused (exit 4), never decided on in part:

- :func:`truncated`: a WAV/RF64/W64/AIFF/AU/SVX file shorter than its header says (half-copied);
- :func:`chunk_inside_audio`: a WAV whose audio length runs into a metadata chunk after it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_CHUNK_LOG = re.compile(r"^([A-Za-z][A-Za-z ]*?)\s*:\s*(\d+)\s*\(should be (\d+)\)")
_UNKNOWN_LENGTHS = (0, 0xFFFFFFFF)  # a streamed WAV: no length was written, all its audio is there
_LOGGED_LENGTH_FORMATS = ("WAV", "WAVEX", "RF64", "W64", "AIFF", "AU", "SVX")
_AUDIO_CHUNKS = {"data", "ssnd", "data size", "body"}  # the audio's own length: exact
_FILE_CHUNKS = {"riff", "riff size", "form"}  # the whole file's: a few bytes of slack (padding)
_FILE_SLACK = 64


def truncated(f) -> str | None:
    """Why a WAV/RF64/W64/AIFF/AU/SVX file is shorter than its own header says (None if not).

    libsndfile reads what is there and notes the difference in its log ("data : 160000 (should
    be 79978)"; RF64 and W64 log only the whole file's size); a file cut in half would otherwise
    be decided on from its first half. A header that gives no length (a streamed recording) is
    not a cut. Formats whose log says nothing (NIST, IRCAM, VOC, PAF, MAT, and Ogg or MP3, which
    carry no length up front) cannot be checked this way."""
    if f.format not in _LOGGED_LENGTH_FORMATS:
        return None
    try:
        info = f.extra_info
    except Exception:  # noqa: BLE001 (no log: nothing to say)
        return None
    for line in info.splitlines():
        m = _CHUNK_LOG.match(line.strip())
        if not m:
            continue
        label, said, there = m.group(1).strip().lower(), int(m.group(2)), int(m.group(3))
        if said in _UNKNOWN_LENGTHS:
            continue
        if (label in _AUDIO_CHUNKS and said > there) or (label in _FILE_CHUNKS and said > there + _FILE_SLACK):
            return f"its header promises {said} bytes, {there} are there"
    return None


_RIFF_CHUNK_IDS = (b"LIST", b"id3 ", b"ID3 ", b"bext", b"cue ", b"smpl", b"inst", b"fact", b"PEAK",
                   b"JUNK", b"junk", b"iXML", b"_PMX", b"acid", b"cart")
_OVERRUN_SCAN_BYTES = 1 << 16  # the end of the audio searched for a chunk that starts inside it


def chunk_inside_audio(p: Path) -> str | None:
    """A WAV whose data chunk claims more bytes than its audio, with a metadata chunk after the
    audio (a LIST, id3, ...): libsndfile reads the chunk's bytes as samples and logs nothing.
    Found as a known chunk id at an even offset in the last bytes of the claimed audio whose own
    size ends exactly at the end of the file (a chance match in real audio: about 2^-64 per spot)."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
                return None
            order = "<" if head[:4] == b"RIFF" else ">"
            size = os.fstat(fh.fileno()).st_size
            pos = 12
            while pos + 8 <= size:
                fh.seek(pos)
                cid, n = fh.read(4), int.from_bytes(fh.read(4), "little" if order == "<" else "big")
                if cid != b"data":
                    pos += 8 + n + (n & 1)
                    continue
                start, end = pos + 8, pos + 8 + n
                if n in _UNKNOWN_LENGTHS or end > size:
                    return None  # a streamed WAV, or cut short (said by truncated)
                lo = max(start, end - _OVERRUN_SCAN_BYTES)
                fh.seek(lo)
                tail = fh.read(end - lo)
                fh.seek(lo)
                rest = fh.read(end - lo + 8)  # the tail and a chunk header that starts in its last bytes
                for cid in _RIFF_CHUNK_IDS:
                    i = tail.find(cid)
                    while i >= 0:
                        at = lo + i
                        if (at - start) % 2 == 0 and i + 8 <= len(rest):
                            m = int.from_bytes(rest[i + 4:i + 8], "little" if order == "<" else "big")
                            if at + 8 + m + (m & 1) == size or at + 8 + m == size:
                                return f"a {cid.decode('ascii').strip()} chunk starts inside the audio"
                        i = tail.find(cid, i + 1)
                return None
    except OSError:
        return None  # unreadable here means unreadable to soundfile too: said there
    return None

"""A generated suite of bad and odd audio inputs, each with the outcome the gate must give.

Every :class:`Kind` writes one input into a folder and says what ``voicegate enroll-check``
must do with it:

- ``exit4``: the audio cannot be used. Exit code 4 with a one-line reason naming the file
  (``reason`` is a lowercase fragment that reason must contain). Never a decision.
- ``decision``: odd but usable audio. One of GRANTED / DENIED / UNCERTAIN (exit 0, 1 or 3).

``junk=True`` marks inputs with no voice at all (noise, a tone, DC): the speech detector
(device/speech.py) finds no speech in them, so they never reach the model (exit 4, "no speech").

Speech is synthetic (``synth.synth_voice``) from a voice no test model is trained to allow.

    python tests/badaudio.py OUT_DIR                      # write the suite and list it
    python tests/badaudio.py OUT_DIR --cli --model M.onnx  # and run the CLI on each (a table)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))  # for `import synth` when run as a script
from synth import synth_voice  # noqa: E402

EXIT4 = "exit4"
DECISION = "decision"
VOICE = "visitor"  # a derived synthetic voice, not one of synth.VOICES
SR = 16_000
SPEECH_SECONDS = 3.0
LONG_SECONDS = 600.0  # the "10 minutes of speech" kind
SPARSE_BYTES = 2_000_000_000  # the sparse "2 GB" file (no disk blocks are used)

# Dropping these capabilities makes root obey file permission bits (see permission_prefix).
_DROP_DAC = "-dac_override,-dac_read_search"


@dataclass(frozen=True)
class Kind:
    name: str
    expect: str  # EXIT4 or DECISION
    what: str  # one line: what the input is
    make: Callable[[Path], Path]  # writes the input into a folder, returns its path
    reason: str = ""  # EXIT4: a lowercase fragment the one-line error must contain
    junk: bool = False  # no voice in it at all


@dataclass(frozen=True)
class Case:
    kind: Kind
    path: Path

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def expect(self) -> str:
        return self.kind.expect


KINDS: list[Kind] = []


def _kind(name: str, expect: str, what: str, reason: str = "", junk: bool = False):
    def register(make: Callable[[Path], Path]) -> Callable[[Path], Path]:
        KINDS.append(Kind(name, expect, what, make, reason, junk))
        return make

    return register


# --- building blocks ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _speech(seconds: float = SPEECH_SECONDS, sr: int = SR, seed: int = 7,
            pauses: bool = True) -> np.ndarray:
    x = synth_voice(VOICE, seconds, seed=seed, sr=sr, pauses=pauses)
    x.flags.writeable = False
    return x


def _write(d: Path, name: str, audio: np.ndarray, sr: int = SR, subtype: str = "PCM_16",
           fmt: str | None = None) -> Path:
    path = d / name
    sf.write(str(path), audio, sr, subtype=subtype, format=fmt)
    return path


def wav_header(data_bytes: int, sr: int = SR, channels: int = 1, bits: int = 16,
               fmt_tag: int = 1, riff_bytes: int | None = None) -> bytes:
    """A canonical 44-byte RIFF/WAVE header whose fields may lie about the data that follows."""
    block = channels * bits // 8
    riff = 36 + data_bytes if riff_bytes is None else riff_bytes
    return (b"RIFF" + struct.pack("<I", riff & 0xFFFFFFFF) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, fmt_tag, channels, sr, sr * block, block, bits)
            + b"data" + struct.pack("<I", data_bytes & 0xFFFFFFFF))


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def _raw(d: Path, name: str, data: bytes) -> Path:
    path = d / name
    path.write_bytes(data)
    return path


# --- exit 4: the audio cannot be used -----------------------------------------------------------
@_kind("empty_0_bytes", EXIT4, "a 0-byte file named .wav", "empty")
def _(d):
    return _raw(d, "empty.wav", b"")


@_kind("header_only", EXIT4, "a valid 44-byte WAV header, data chunk of 0 bytes", "no audio samples")
def _(d):
    return _raw(d, "header_only.wav", wav_header(0))


@_kind("header_claims_missing_data", EXIT4, "a header claiming 3 s of data, then nothing",
       "cut short")
def _(d):
    return _raw(d, "header_claims.wav", wav_header(int(SPEECH_SECONDS * SR * 2)))


@_kind("text_as_wav", EXIT4, "plain text with a .wav name", "not readable audio")
def _(d):
    return _raw(d, "text.wav", b"this is not audio, just text\n" * 40)


@_kind("random_bytes_as_wav", EXIT4, "4 KiB of random bytes with a .wav name", "not readable audio")
def _(d):
    return _raw(d, "random.wav", np.random.default_rng(1).bytes(4096))


@_kind("riff_magic_then_junk", EXIT4, "'RIFF....WAVE' magic followed by random bytes",
       "not readable audio")
def _(d):
    return _raw(d, "riff_junk.wav", b"RIFF" + struct.pack("<I", 4100) + b"WAVE"
                + np.random.default_rng(2).bytes(4096))


@_kind("mp3_junk", EXIT4, "an ID3 tag then random bytes (the MP3 decoder prints to fd 2)",
       "not readable audio")
def _(d):
    return _raw(d, "junk.mp3", b"ID3\x03\x00\x00\x00\x00\x00\x10"
                + np.random.default_rng(6).bytes(4000))


@_kind("directory", EXIT4, "a directory named x.wav", "directory")
def _(d):
    path = d / "folder.wav"
    path.mkdir()
    return path


@_kind("missing_file", EXIT4, "a path that does not exist", "no such file")
def _(d):
    return d / "missing.wav"


@_kind("broken_symlink", EXIT4, "a symlink to a file that does not exist", "no such file")
def _(d):
    path = d / "dangling.wav"
    path.symlink_to(d / "nowhere.wav")
    return path


@_kind("path_through_a_file", EXIT4, "FILE.wav/inner.wav: a file used as a folder", "cannot access")
def _(d):
    return _write(d, "parent.wav", _speech()) / "inner.wav"


@_kind("fifo", EXIT4, "a named pipe (reading it would block forever)", "not a regular file")
def _(d):
    path = d / "pipe.wav"
    os.mkfifo(path)
    return path


@_kind("permission_denied", EXIT4, "a speech WAV with mode 000 (root: see permission_prefix)",
       "permission denied")
def _(d):
    path = _write(d, "no_access.wav", _speech())
    path.chmod(0)
    return path


@_kind("all_zeros", EXIT4, "3 s of digital silence", "no speech")
def _(d):
    return _write(d, "zeros.wav", np.zeros(int(SPEECH_SECONDS * SR), np.float32))


@_kind("noise_-120dBFS", EXIT4, "3 s of white noise at -120 dBFS (float WAV)", "no speech")
def _(d):
    x = 1e-6 * np.random.default_rng(3).standard_normal(int(SPEECH_SECONDS * SR))
    return _write(d, "noise_m120.wav", x.astype(np.float32), subtype="FLOAT")


@_kind("speech_-80dBFS", EXIT4, "speech scaled to a -80 dBFS peak (under the silence floor)",
       "no speech")
def _(d):
    return _write(d, "speech_m80.wav", _speech() * np.float32(1e-4 / 0.5), subtype="FLOAT")


@_kind("float32_nan", EXIT4, "float32 speech with NaN samples in it", "nan")
def _(d):
    x = _speech().copy()
    x[SR : SR + 100] = np.nan
    return _write(d, "nan.wav", x, subtype="FLOAT")


@_kind("float64_inf", EXIT4, "float64 speech with +Inf and -Inf samples", "infinite")
def _(d):
    x = _speech().astype(np.float64)
    x[SR], x[2 * SR] = np.inf, -np.inf
    return _write(d, "inf.wav", x, subtype="DOUBLE")


@_kind("nan_in_silent_channel", EXIT4, "stereo float: speech left, silence with one NaN right",
       "nan")
def _(d):
    right = np.zeros_like(_speech())
    right[-1] = np.nan
    return _write(d, "nan_right.wav", np.stack([_speech(), right], axis=1), subtype="FLOAT")


@_kind("float_1e30_values", EXIT4, "float32 speech scaled to 1e30 (corrupt float data)", "not audio")
def _(d):
    return _write(d, "huge_values.wav", _speech() * np.float32(1e30), subtype="FLOAT")


@_kind("speech_0.05s", EXIT4, "0.05 s of speech (less than MIN_SPEECH_SECONDS)", "no speech")
def _(d):
    return _write(d, "speech_50ms.wav", _speech(0.05, seed=9, pauses=False))


@_kind("one_frame", EXIT4, "a WAV holding a single sample", "no speech")
def _(d):
    return _write(d, "one_frame.wav", np.array([0.5], np.float32))


@_kind("rate_2e9_bogus", EXIT4, "speech with a header claiming 2,000,000,000 Hz", "sample rate")
def _(d):
    return _raw(d, "rate_bogus.wav", wav_header(SR * 2, sr=2_000_000_000) + _pcm16(_speech(1.0)))


@_kind("rate_4000", EXIT4, "speech at 4 kHz (below the 8 kHz minimum)", "sample rate")
def _(d):
    return _write(d, "rate_4000.wav", _speech(sr=4000), sr=4000)


@_kind("rate_0", EXIT4, "a header with a sample rate of 0", "not readable audio")
def _(d):
    return _raw(d, "rate_0.wav", wav_header(SR * 2, sr=0) + _pcm16(_speech(1.0)))


@_kind("channels_0", EXIT4, "a header with 0 channels", "not readable audio")
def _(d):
    return _raw(d, "channels_0.wav", wav_header(SR * 2, channels=0) + _pcm16(_speech(1.0)))


@_kind("channels_40", EXIT4, "40 channels (more than MAX_CHANNELS)", "channels")
def _(d):
    x = np.zeros((SR, 40), np.float32)
    x[:, 0] = _speech(1.0)
    return _write(d, "channels_40.wav", x)


@_kind("sparse_2GB_zeros", EXIT4, "a valid WAV of 2 GB of zeros (sparse: reading is capped)",
       "no speech")
def _(d):
    path = _raw(d, "sparse_2gb.wav", wav_header(SPARSE_BYTES))
    with open(path, "r+b") as f:
        f.truncate(44 + SPARSE_BYTES)
    return path


# --- a decision: odd but usable audio -----------------------------------------------------------
for _subtype, _label in [("PCM_U8", "int8 (unsigned)"), ("PCM_16", "int16"), ("PCM_24", "int24"),
                         ("PCM_32", "int32"), ("FLOAT", "float32"), ("DOUBLE", "float64")]:
    _kind(f"wav_{_subtype.lower()}", DECISION, f"3 s of speech, 16 kHz {_label} WAV")(
        functools.partial(lambda d, st: _write(d, f"{st.lower()}.wav", _speech(), subtype=st),
                          st=_subtype))

for _rate in (8000, 11025, 22050, 44100, 48000, 96000, 44101):
    _kind(f"rate_{_rate}", DECISION,
          f"3 s of speech synthesised at {_rate} Hz" + (" (an odd rate)" if _rate == 44101 else ""))(
        functools.partial(lambda d, r: _write(d, f"rate_{r}.wav", _speech(sr=r), sr=r), r=_rate))


@_kind("stereo_one_silent_channel", DECISION, "stereo: speech left, digital silence right")
def _(d):
    return _write(d, "stereo_half.wav", np.stack([_speech(), np.zeros_like(_speech())], axis=1))


@_kind("stereo_phase_inverted", DECISION, "stereo: the right channel is the left one inverted "
       "(a reversed-polarity lead: averaged, the two cancel to silence; the louder one is used)")
def _(d):
    return _write(d, "stereo_inverted.wav", np.stack([_speech(), -_speech()], axis=1))


@_kind("six_channels", DECISION, "5.1: speech in 2 channels, the other 4 silent or faint noise")
def _(d):
    x = np.zeros((_speech().size, 6), np.float32)
    x[:, 0], x[:, 2] = _speech(), _speech()
    x[:, 3] = 1e-3 * np.random.default_rng(4).standard_normal(x.shape[0])
    return _write(d, "six_channels.wav", x)


@_kind("clipped_full_scale", DECISION, "speech amplified 20x and clipped at full scale")
def _(d):
    return _write(d, "clipped.wav", np.clip(_speech() * 20, -1, 1))


@_kind("dc_offset", DECISION, "speech riding on a +0.3 DC offset")
def _(d):
    return _write(d, "dc_offset.wav", _speech() + np.float32(0.3))


@_kind("quiet_speech_-45dBFS", EXIT4, "speech at a -45 dBFS peak (float WAV): most of it under the "
       "silence floor, too little speech left to decide", reason="no speech")
def _(d):
    return _write(d, "quiet.wav", _speech() * np.float32(10 ** (-45 / 20) / 0.5), subtype="FLOAT")


@_kind("speech_0.5s", EXIT4, "0.5 s of speech: under the speech detector's 0.5 s minimum once its "
       "edges are trimmed", reason="no speech")
def _(d):
    return _write(d, "speech_0.5s.wav", _speech(0.5, seed=11, pauses=False))


@_kind("speech_10_minutes", DECISION, "10 minutes of speech (reading is capped at MAX_READ_SECONDS)")
def _(d):
    reps = int(LONG_SECONDS / 10.0)
    return _write(d, "speech_10min.wav", np.tile(_speech(10.0), reps))


@_kind("speech_in_60s_silence", DECISION, "1 s of speech in the middle of 60 s of silence")
def _(d):
    x = np.zeros(60 * SR, np.float32)
    x[30 * SR : 31 * SR] = _speech(1.0)
    return _write(d, "speech_in_silence.wav", x)


@_kind("truncated_data_chunk", EXIT4, "header claims 3 s, the file holds 1.5 s (damaged: refused)", "cut short")
def _(d):
    return _raw(d, "truncated.wav", wav_header(int(SPEECH_SECONDS * SR * 2))
                + _pcm16(_speech())[: int(1.5 * SR * 2)])


def _list_chunk() -> bytes:
    info = b"INFO" + b"INAM" + struct.pack("<I", 20) + b"a title of the song\x00"
    return b"LIST" + struct.pack("<I", len(info)) + info


@_kind("data_runs_into_list_chunk", EXIT4, "the data size runs 10 bytes into a LIST chunk after the audio "
       "(its bytes would be read as samples: refused)", "damaged")
def _(d):
    pcm, lst = _pcm16(_speech()), _list_chunk()
    return _raw(d, "into_list.wav", wav_header(len(pcm) + 10, riff_bytes=36 + len(pcm) + len(lst)) + pcm + lst)


@_kind("list_chunk_after_audio", DECISION, "a LIST chunk (title) after the audio, sizes right")
def _(d):
    pcm, lst = _pcm16(_speech()), _list_chunk()
    return _raw(d, "with_list.wav", wav_header(len(pcm), riff_bytes=36 + len(pcm) + len(lst)) + pcm + lst)


@_kind("streamed_wav_no_length", DECISION, "a streamed WAV: its header gives no length (0xFFFFFFFF)")
def _(d):
    return _raw(d, "streamed.wav", wav_header(0xFFFF_FFFF, riff_bytes=0xFFFF_FFFF) + _pcm16(_speech()))


@_kind("truncated_mid_sample", EXIT4, "a 16-bit WAV cut one byte into a sample (damaged: refused)", "cut short")
def _(d):
    data = open(_write(d, "full.wav", _speech()), "rb").read()
    (d / "full.wav").unlink()
    return _raw(d, "truncated_odd.wav", data[: 44 + 2 * SR * 2 + 1])


@_kind("header_claims_2GB", EXIT4, "a 32 KB file (1 s of speech) whose header claims 2 GB (refused)", "cut short")
def _(d):
    big = 0x7FFF_FFF0
    return _raw(d, "claims_2gb.wav", wav_header(big, riff_bytes=big + 36) + _pcm16(_speech(1.0)))


for _name, _fmt, _subtype, _ext in [("flac", "FLAC", "PCM_16", "flac"),
                                    ("ogg_vorbis", "OGG", "VORBIS", "ogg"),
                                    ("mp3", "MP3", "MPEG_LAYER_III", "mp3"),
                                    ("aiff", "AIFF", "PCM_16", "aiff"),
                                    ("wav_ulaw", "WAV", "ULAW", "wav"),
                                    ("wav_ms_adpcm", "WAV", "MS_ADPCM", "wav"),
                                    ("rf64", "RF64", "PCM_16", "wav")]:
    _kind(_name, DECISION, f"3 s of speech as {_fmt} {_subtype}")(
        functools.partial(lambda d, n, f, s, e: _write(d, f"{n}.{e}", _speech(), subtype=s, fmt=f),
                          n=_name, f=_fmt, s=_subtype, e=_ext))


@_kind("mp3_truncated", DECISION, "the first half of an MP3 (its decoder warns on fd 2)")
def _(d):
    data = open(_write(d, "full.mp3", _speech(), subtype="MPEG_LAYER_III", fmt="MP3"), "rb").read()
    (d / "full.mp3").unlink()
    return _raw(d, "truncated.mp3", data[: len(data) // 2])


@_kind("wav_named_txt", DECISION, "a valid WAV with a .txt name (content decides, not the name)")
def _(d):
    return _write(d, "speech.txt", _speech(), fmt="WAV")


@_kind("unicode_name_with_spaces", DECISION, "a WAV whose name has spaces and non-ASCII letters")
def _(d):
    return _write(d, "porte d'entrée ✓ é.wav", _speech())


@_kind("white_noise_-20dBFS", EXIT4, "3 s of white noise at -20 dBFS: no voice", reason="no speech", junk=True)
def _(d):
    x = 0.1 * np.random.default_rng(5).standard_normal(int(SPEECH_SECONDS * SR))
    return _write(d, "white_noise.wav", x.astype(np.float32))


@_kind("sine_1kHz", EXIT4, "3 s of a 1 kHz tone: no voice", reason="no speech", junk=True)
def _(d):
    t = np.arange(int(SPEECH_SECONDS * SR)) / SR
    return _write(d, "sine.wav", (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))


@_kind("dc_only", EXIT4, "3 s of a constant +0.5: no voice", reason="no speech", junk=True)
def _(d):
    return _write(d, "dc_only.wav", np.full(int(SPEECH_SECONDS * SR), 0.5, np.float32))


# --- building the suite -------------------------------------------------------------------------
def generate(out_dir: Path, names=None) -> list[Case]:
    """Write every kind (or those in ``names``) into ``out_dir``/NAME/ and return the cases."""
    out_dir = Path(out_dir)
    cases = []
    for kind in KINDS:
        if names is not None and kind.name not in names:
            continue
        d = out_dir / kind.name
        d.mkdir(parents=True, exist_ok=True)
        cases.append(Case(kind, kind.make(d)))
    return cases


def cleanup(cases: list[Case]) -> None:
    """Undo what would trouble a later rm -rf or copy (mode 000 files); no-op otherwise."""
    for c in cases:
        if c.name == "permission_denied" and c.path.exists():
            c.path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def permission_prefix() -> list[str] | None:
    """How to run a command so that a mode-000 file really is unreadable to it.

    A normal user needs nothing ([]). Root reads mode-000 files anyway (CAP_DAC_OVERRIDE), so
    root runs it under ``setpriv`` with the DAC-override capabilities dropped: still root and
    the owner of its files, but obeying their permission bits. None if that is not possible.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, f"--inh-caps={_DROP_DAC}", f"--bounding-set={_DROP_DAC}"]
    try:
        probe = subprocess.run(prefix + ["true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return prefix if probe.returncode == 0 else None


# --- running the CLI on the suite ---------------------------------------------------------------
DECISIONS = {0: "GRANTED", 1: "DENIED", 3: "UNCERTAIN"}


def cli_command(path: Path, model: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "voicegate.device", "enroll-check", str(path), "--json"]
    return cmd + (["--model", str(model)] if model else [])


def outcome_ok(kind: Kind, code: int, stderr: str) -> bool:
    """Does (exit code, stderr) match what ``kind`` must give?"""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if kind.expect == DECISION:
        return code in DECISIONS and "Traceback" not in stderr
    return (code == 4 and len(lines) == 1 and "Traceback" not in stderr
            and kind.reason in lines[0].lower())


def run_cli_table(cases: list[Case], model: Path | None) -> list[dict]:
    """Run ``python -m voicegate.device enroll-check`` on every case in its own process."""
    rows = []
    perm = permission_prefix()
    for c in cases:
        cmd = cli_command(c.path, model)
        if c.name == "permission_denied":
            if perm is None:
                rows.append({"kind": c.name, "expect": c.expect, "exit": None, "outcome": "skipped",
                             "ok": None, "stderr": "cannot drop root's DAC override here"})
                continue
            cmd = perm + cmd
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        wall = time.perf_counter() - t0
        outcome = DECISIONS.get(p.returncode, f"exit {p.returncode}")
        if p.returncode in DECISIONS:
            try:
                d = json.loads(p.stdout.strip().splitlines()[-1])
                outcome += f" (p={d['p_allow']:.2f}, u={d['uncertainty']:.2f}, w={d['windows']})"
            except (ValueError, KeyError, IndexError):
                pass
        rows.append({"kind": c.name, "expect": c.expect, "exit": p.returncode, "outcome": outcome,
                     "ok": outcome_ok(c.kind, p.returncode, p.stderr),
                     "stderr": p.stderr.strip().replace("\n", " | "), "wall_s": round(wall, 2)})
    return rows


def results_table(rows: list[dict]) -> str:
    """The --cli rows as a Markdown table (the training side's one table helper)."""
    from voicegate.train.reports.report import markdown_table

    ok = {True: "yes", False: "**NO**", None: "skipped"}
    return markdown_table(
        ["kind", "expected", "exit", "outcome / stderr", "ok"],
        [[r["kind"], r["expect"], r["exit"],
          (r["outcome"] if r["exit"] in DECISIONS else r["stderr"]).replace("|", "\\|"), ok[r["ok"]]]
         for r in rows],
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--cli", action="store_true", help="run enroll-check on each input")
    ap.add_argument("--model", type=Path, help="the ONNX model for --cli (default: shipped)")
    ap.add_argument("--only", nargs="*", help="kind names to generate")
    args = ap.parse_args(argv)
    cases = generate(args.out_dir, args.only)
    try:
        if not args.cli:
            for c in cases:
                print(f"{c.name:28s} {c.expect:9s} {c.path}")
            return 0
        rows = run_cli_table(cases, args.model)
        print(results_table(rows))
        return 0 if all(r["ok"] in (True, None) for r in rows) else 1
    finally:
        cleanup(cases)


if __name__ == "__main__":
    sys.exit(main())

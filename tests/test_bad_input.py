"""The bad/odd audio suite (tests/badaudio.py): featurizer, enroll-check CLI, corpus preparation.

Every kind must give its documented outcome: a decision, or a clean one-line error (exit 4)
naming the file. The CLI runs mostly in-process (``cli.main``); a few cases run in a real
process, where C libraries writing to file descriptor 2 would show. ``listen --from-file``
gets the same suite: an unreadable file is exit 4, a silent one simply holds no utterance.

The CLI tests use a model that GRANTS EVERYTHING: every input that must not reach a decision
still has to exit 4, so no error path can end in an open door.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import badaudio
from badaudio import DECISION, EXIT4, KINDS
from voicegate.device import audio as A
from voicegate.device import cli
from voicegate.device.audit import read_audit_log
from voicegate.device.contract import EXIT_STOPPED
from voicegate.device.features import IMAGE_SIZE, featurize

NAMES = [k.name for k in KINDS]
BY_NAME = {k.name: k for k in KINDS}
ROOT_READS_ANYTHING = os.geteuid() == 0
PERMISSION_VIA_SUBPROCESS = ("root reads mode-000 files; test_permission_denied_for_real drops "
                             "root's DAC override with setpriv instead")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    cases = badaudio.generate(tmp_path_factory.mktemp("badaudio"))
    yield {c.name: c for c in cases}
    badaudio.cleanup(cases)


@pytest.fixture(scope="module")
def grant_model(tmp_path_factory):
    """An MC model whose every sample says p(allowed) ~ 1: it grants whatever reaches it.

    (Not so saturated that float32 makes its samples identical: that model would be refused.)
    """
    from tiny_gate import TinyNet, write_gate_model

    return write_gate_model(tmp_path_factory.mktemp("grant") / "grant.onnx",
                            models=[TinyNet(bias=(-6.0, 6.0))])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained tiny MC model: its decisions vary."""
    from tiny_gate import write_gate_model

    return write_gate_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


def _skip_if_root_permission(name: str) -> None:
    if name == "permission_denied" and ROOT_READS_ANYTHING:
        pytest.skip(PERMISSION_VIA_SUBPROCESS)


def test_the_suite_is_big_enough_and_covers_both_outcomes():
    assert len(KINDS) >= 30 and len(set(NAMES)) == len(NAMES)
    assert {k.expect for k in KINDS} == {EXIT4, DECISION}
    assert all(k.reason for k in KINDS if k.expect == EXIT4)
    for must in ("empty_0_bytes", "header_only", "truncated_data_chunk", "text_as_wav", "directory",
                 "missing_file", "permission_denied", "all_zeros", "noise_-120dBFS",
                 "clipped_full_scale", "dc_offset", "float32_nan", "float64_inf", "wav_pcm_u8",
                 "wav_pcm_24", "wav_pcm_32", "wav_float", "wav_double", "rate_8000", "rate_11025",
                 "rate_22050", "rate_44100", "rate_48000", "rate_96000", "stereo_one_silent_channel",
                 "six_channels", "speech_0.05s", "speech_10_minutes", "header_claims_2GB", "flac",
                 "ogg_vorbis", "rate_2e9_bogus", "one_frame"):
        assert must in BY_NAME, must


# --- (a) the featurizer -------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_featurizer_outcome(suite, name):
    _skip_if_root_permission(name)
    case = suite[name]
    if case.expect == DECISION:
        images = featurize(case.path)
        assert images.dtype == np.float32 and images.ndim == 3 and images.shape[0] >= 1
        assert images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE)
        assert np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0
    else:
        with pytest.raises(A.AudioError) as err:
            featurize(case.path)
        msg = str(err.value)
        assert "\n" not in msg and str(case.path) in msg
        assert case.kind.reason in msg.lower(), msg
        if case.kind.reason == "no speech":
            assert isinstance(err.value, A.NoSpeechError)


@pytest.mark.parametrize("name", ["six_channels", "stereo_one_silent_channel", "mp3", "ogg_vorbis",
                                  "wav_ms_adpcm", "rate_44101", "wav_pcm_u8"])
def test_blockwise_mono_reading_gives_the_same_samples(suite, name, monkeypatch):
    path = suite[name].path
    data, sr = A.read_audio(path)
    whole = A.to_mono(data)
    monkeypatch.setattr(A, "_READ_BLOCK_FRAMES", 4099)  # many odd-sized blocks
    sr2, blocks = A.open_mono_blocks(path)
    assert sr2 == sr
    assert np.array_equal(np.concatenate(list(blocks)), whole)
    assert np.array_equal(A.load_audio(path), A.resample(whole, sr, A.SAMPLE_RATE))


def test_reading_is_capped(suite):
    x = A.load_audio(suite["speech_10_minutes"].path, max_seconds=7.5)
    assert x.size == int(7.5 * A.SAMPLE_RATE)
    data, _ = A.read_audio(suite["sparse_2GB_zeros"].path, max_seconds=2.0)
    assert data.shape == (2 * A.SAMPLE_RATE, 1)
    with pytest.raises(A.AudioError, match="more than the 3600 s"):  # an uncapped read refuses it
        A.load_audio(suite["sparse_2GB_zeros"].path)


def test_speech_after_the_read_cap_is_named_in_the_reason(tmp_path):
    import soundfile as sf

    from voicegate.device.features import MAX_READ_SECONDS

    late = tmp_path / "late.wav"  # silence past the cap, then a voice the decision never reads
    tone = 0.3 * np.sin(np.linspace(0, 4000, 3 * A.SAMPLE_RATE)).astype(np.float32)
    sf.write(late, np.concatenate([np.zeros(int((MAX_READ_SECONDS + 5) * A.SAMPLE_RATE), np.float32), tone]),
             A.SAMPLE_RATE)
    with pytest.raises(A.NoSpeechError, match=f"only the first {MAX_READ_SECONDS:g} s of a file are read"):
        featurize(late)


def test_arrays_with_bad_rates_shapes_or_values_are_audio_errors():
    x = np.zeros(1000, np.float32)
    for bad in (0, -16000, 4, 10**9, float("nan"), "fast"):
        with pytest.raises(A.AudioError, match="sample rate"):
            A.load_audio(x, sample_rate=bad)
    for arr in (np.zeros((10, 2, 2)), np.zeros((10, 0)), np.array(["a", "b"]), np.zeros(0)):
        with pytest.raises(A.AudioError):
            A.load_audio(arr, sample_rate=16000)
    with pytest.raises(A.AudioError, match="not audio"):
        A.load_audio(np.full(100, 1e12, np.float32), sample_rate=16000)


# VmHWM (peak RSS of this process image); ru_maxrss would include the parent's RSS at fork.
PEAK_RSS_CODE = """
import re, resource, sys
from voicegate.device.audio import AudioError
from voicegate.device.features import featurize
try:
    featurize(sys.argv[1])
except AudioError:
    pass
try:
    with open("/proc/self/status") as f:
        print(int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1)) // 1024)
except OSError:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def peak_rss_mb(path) -> int:
    """Peak RSS (MB) of a fresh process that imports the featurizer and featurizes ``path``."""
    out = subprocess.run([sys.executable, "-c", PEAK_RSS_CODE, str(path)], capture_output=True,
                         text=True, timeout=120, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_memory_stays_bounded_on_huge_inputs(suite):
    """10 minutes of speech and a 2 GB file decode at most MAX_READ_SECONDS: no GB allocations."""
    base = peak_rss_mb(suite["wav_pcm_16"].path)
    for name in ("speech_10_minutes", "sparse_2GB_zeros", "header_claims_2GB"):
        peak = peak_rss_mb(suite[name].path)
        print(f"peak RSS {name}: {peak} MB (3 s file: {base} MB)")
        assert peak < base + 256, (name, peak, base)


def test_the_cli_table_uses_the_one_markdown_helper():
    rows = [{"kind": "k", "expect": EXIT4, "exit": 4, "outcome": "exit 4", "stderr": "a | b", "ok": True},
            {"kind": "d", "expect": DECISION, "exit": 1, "outcome": "DENIED", "stderr": "", "ok": None}]
    assert badaudio.results_table(rows).splitlines() == [
        "| kind | expected | exit | outcome / stderr | ok |", "|---|---|---|---|---|",
        "| k | exit4 | 4 | a \\| b | yes |", "| d | decision | 1 | DENIED | skipped |"]
    assert not hasattr(badaudio, "markdown_table")


# --- (b) the enroll-check CLI -------------------------------------------------------------------
def _check_cli_result(case, code: int, out: str, err: str, granting: bool) -> None:
    assert "Traceback" not in err and "Traceback" not in out
    if case.expect == EXIT4:
        lines = err.strip().splitlines()
        assert code == 4, (code, out, err)
        assert len(lines) == 1, err
        assert str(case.path) in lines[0] and case.kind.reason in lines[0].lower(), lines[0]
        assert "GRANTED" not in out
    else:
        assert err.strip() == "", err  # nothing on stderr, not even a decoder's chatter
        assert code in (0, 1, 3), (code, out, err)
        decided = json.loads(out)["decision"] if out.startswith("{") else out.split()[0]
        assert decided == {0: "GRANTED", 1: "DENIED", 3: "UNCERTAIN"}[code], out  # a decision was made
        if granting:
            assert code == 0 and out.startswith("GRANTED"), out


@pytest.mark.parametrize("name", NAMES)
def test_cli_outcome_with_a_model_that_grants_everything(suite, grant_model, name, capfd):
    _skip_if_root_permission(name)
    case = suite[name]
    code = cli.main(["enroll-check", str(case.path), "--model", str(grant_model)])
    out, err = capfd.readouterr()
    _check_cli_result(case, code, out, err, granting=True)


@pytest.mark.parametrize("name", ["random_bytes_as_wav", "mp3_truncated", "float32_nan"])
def test_cli_in_a_real_process(suite, tiny_model, name):
    """A real process: C decoders' writes to fd 2 would show here; --json stays one object."""
    case = suite[name]
    p = subprocess.run(badaudio.cli_command(case.path, tiny_model), capture_output=True, text=True,
                       timeout=120)
    _check_cli_result(case, p.returncode, p.stdout, p.stderr, granting=False)
    d = json.loads(p.stdout)
    if case.expect == EXIT4:
        assert d["decision"] is None and d["exit_code"] == 4
    else:
        assert d["decision"] in ("GRANTED", "DENIED", "UNCERTAIN")


def test_permission_denied_for_real(suite, grant_model):
    """Mode 000 really unreadable: as root, run without CAP_DAC_OVERRIDE (still root)."""
    prefix = badaudio.permission_prefix()
    if prefix is None:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE (no setpriv)")
    case = suite["permission_denied"]
    code = "import sys; from voicegate.device.features import featurize; featurize(sys.argv[1])"
    p = subprocess.run(prefix + [sys.executable, "-c", code, str(case.path)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode != 0 and f"AudioError: {case.path}: permission denied" in p.stderr
    p = subprocess.run(prefix + badaudio.cli_command(case.path, grant_model), capture_output=True,
                       text=True, timeout=120)
    _check_cli_result(case, p.returncode, p.stdout, p.stderr, granting=True)
    listen = [sys.executable, "-m", "voicegate.device", "listen", "--from-file", str(case.path),
              "--model", str(grant_model)]
    p = subprocess.run(prefix + listen, capture_output=True, text=True, timeout=120)
    _check_cli_result(case, p.returncode, p.stdout, p.stderr, granting=True)


# --- (b') listen --from-file: the same suite through the streaming path ------------------------
# Not streamed here: listen would read all 2 GB of sparse zeros (about 40 s) for no decision;
# enroll-check reads only its head (features.MAX_READ_SECONDS), tested above.
LISTEN_NAMES = [n for n in NAMES if n != "sparse_2GB_zeros"]


@pytest.mark.parametrize("name", LISTEN_NAMES)
def test_listen_from_file_outcome(suite, grant_model, name, capfd, tmp_path):
    """Unreadable -> exit 4 (one line); no speech -> no decision; never GRANTED for either."""
    _skip_if_root_permission(name)
    case = suite[name]
    log = tmp_path / "audit.jsonl"
    code = cli.main(["listen", "--from-file", str(case.path), "--model", str(grant_model),
                     "--json", "--log", str(log)])
    out, err = capfd.readouterr()
    decisions = [json.loads(line).get("decision") for line in out.splitlines() if line.startswith("{")]
    assert "Traceback" not in err and "Traceback" not in out
    if case.expect == DECISION:  # decided: at least one utterance, and the model grants them all
        assert code == EXIT_STOPPED, err  # the end of the file, not a decision: never 0
        assert decisions and set(decisions) == {"GRANTED"}, (out, err)
        assert [r["decision"] for r in read_audit_log(log) if r["type"] == "decision"] == decisions
    elif case.kind.reason == "no speech":  # a stream of silence holds no utterance
        assert code == EXIT_STOPPED and decisions == [] and err.strip() == "", (code, out, err)
    else:
        lines = err.strip().splitlines()
        assert code == 4 and decisions == [None] and len(lines) == 1, (code, out, err)  # --json: why, no decision
        assert str(case.path) in lines[0] and case.kind.reason in lines[0].lower(), lines[0]
    if case.expect == EXIT4:
        logged = log.read_text() if log.exists() else ""
        assert "GRANTED" not in logged and "GRANTED" not in out


# --- (c) corpus preparation reports and skips bad files ----------------------------------------
def test_corpus_preparation_skips_every_bad_file(suite, tmp_path):
    from synth import synth_voice, write_wav
    from voicegate.train.data import prepare as P

    root = tmp_path / "corpus"
    for spk in ("f1", "m1"):
        for i in range(3):
            write_wav(root / spk / f"{spk}-{i}.wav", synth_voice(spk, 2.5, seed=i))
    bad = {}
    for c in suite.values():  # the small regular files that must be refused (renamed .wav)
        if (c.expect == EXIT4 and c.path.is_file() and c.path.stat().st_size < 1 << 20
                and not (c.name == "permission_denied" and ROOT_READS_ANYTHING)):
            bad[f"m1/{c.name}.wav"] = c.kind
            shutil.copy(c.path, root / "m1" / f"{c.name}.wav")
    assert len(bad) >= 15
    cfg = P.PrepareConfig(corpus=str(root), cache_dir=str(tmp_path / "cache"), allowed=["f1"],
                          noise_dir=None, aug_copies=0, nonspeech_windows=0, progress=False)
    pc = P.prepare_corpus(cfg)
    skipped = {s["file"]: s["reason"] for s in pc.report["skipped"]}
    assert set(skipped) == set(bad)
    for f, kind in bad.items():
        assert kind.reason in skipped[f].lower(), (f, skipped[f])
    assert set(pc.index.recording) == {f"{s}/{s}-{i}" for s in ("f1", "m1") for i in range(3)}


@pytest.mark.parametrize("fmt", ["WAV", "WAVEX", "RF64", "W64", "AIFF", "AU", "SVX"])
def test_a_file_cut_short_is_refused_in_every_format_whose_header_gives_a_length(fmt, tmp_path):
    """A review's RF64, W64 and AU copies cut at 60 % were GRANTED from their first part."""
    from synth import synth_voice

    import soundfile as sf

    x = synth_voice("f1", 3.0, seed=2)
    full = tmp_path / f"full.{fmt.lower()}"
    sf.write(full, x, A.SAMPLE_RATE, format=fmt, subtype="PCM_16")
    assert A.load_audio(full).size > 0  # the whole file reads
    data = full.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(A.AudioError, match="cut short"):
        A.load_audio(cut)

"""`voicegate listen` as a process: imports, signals, option problems said before the model loads,
JSON usage errors, a closed stdout. The loop itself: test_listen.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from listen_fakes import SR, FakeGate
from synth import write_wav

from voicegate.device import listen
from voicegate.device.audit import read_audit_log
from voicegate.device.contract import EXIT_STOPPED as STOPPED

TESTS = Path(__file__).parent
FAKE_CLI = str(TESTS / "listen_fakes.py")


def parse(*argv):
    return listen.build_parser().parse_args([str(a) for a in argv])


# --- process-level checks ------------------------------------------------------------------------
def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}


def test_no_sounddevice_import_unless_the_microphone_is_used(tmp_path, stream):
    audio, _ = stream
    wav = write_wav(tmp_path / "talk.wav", audio)
    code = (
        "import sys, listen_fakes\n"
        "import voicegate.device.listen\n"
        "assert 'sounddevice' not in sys.modules, 'imported by the module'\n"
        f"rc = listen_fakes.main(['--from-file', {str(wav)!r}, '--json'])\n"
        "heavy = [m for m in ('sounddevice', 'torch', 'librosa', 'sklearn') if m in sys.modules]\n"
        "print('HEAVY', heavy, rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY [] 8" in out.stdout
    assert sum(1 for line in out.stdout.splitlines() if line.startswith("{")) == 4


def test_sigterm_stops_cleanly_with_exit_8(tmp_path, stream):
    audio, _ = stream
    wav = write_wav(tmp_path / "talk.wav", audio)
    log_path = tmp_path / "audit.jsonl"
    proc = subprocess.Popen(
        [sys.executable, FAKE_CLI, "--fake-delay", "0.01", "--from-file", wav, "--loop", "0", "--log", log_path],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(),
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not log_path.exists() or log_path.read_bytes().count(b"\n") < 7):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == STOPPED, proc.stderr.read().decode()
    raw = log_path.read_bytes()
    assert raw.endswith(b"\n")  # closed cleanly: no partial line
    assert len(read_audit_log(log_path)) == raw.count(b"\n") > 5


def test_from_file_that_turns_bad_mid_stream_exits_4_after_its_decisions(tmp_path, stream, capsys):
    audio, spans = stream
    bad = audio.copy()
    bad[int(spans[2][0] * SR) :] = np.nan  # the third utterance onwards is NaN
    wav = write_wav(tmp_path / "nan.wav", bad, subtype="FLOAT")
    log_path = tmp_path / "audit.jsonl"
    args = parse("--from-file", wav, "--log", log_path, "--chunk-samples", 512)
    assert listen.run(args, gate_factory=lambda a: FakeGate()) == 4
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 2
    assert err.count("\n") == 1 and "NaN" in err
    assert [r["type"] for r in read_audit_log(log_path)] == ["decision", "decision", "event"]


@pytest.mark.parametrize("argv, says", [
    (["--on-grant", ""], "--on-grant: empty command"),
    (["--on-deny", " "], "--on-deny: empty command"),
    (["--max-utterances", "0"], "--max-utterances must be >= 1, got 0"),
    (["--loop", "-1"], "--loop must be >= 0, got -1"),
    (["--lockout-window", "nan"], "--lockout-window: not a number: nan"),
    (["--lockout-cooloff", "nan"], "--lockout-cooloff: not a number: nan"),
    (["--lockout-cooloff", "inf"], "--lockout-cooloff: must be <= 86400"),
    (["--hook-timeout", "nan"], "--hook-timeout: not a number: nan"),
    (["--lockout-window", "1e-300"], "--lockout-window: must be >= 1"),
    (["--lockout-after", "99999999999999999999"], "--lockout-after: must be <= 100"),
    (["--on-grant", '""'], "--on-grant: empty command"),
    (["--on-grant", "/nonexistent/open-door"], "/nonexistent/open-door: no such program"),
    (["--on-deny", "no-such-program-anywhere x"], "no-such-program-anywhere: no such program"),
    (["--on-grant", "'unclosed"], "--on-grant: No closing quotation"),
])
def test_listen_option_problems_are_one_line_before_the_model_loads(argv, says, capsys, tmp_path):
    from voicegate.device.cli import main

    wav = tmp_path / "x.wav"
    code = main(["listen", "--demo", "--from-file", str(wav), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0], err


def test_empty_file_names_are_said_as_such(capsys):
    from voicegate.device.cli import main

    assert main(["enroll-check", "", "--demo"]) == 4
    assert "empty file name" in capsys.readouterr().err
    assert main(["listen", "--demo", "--from-file", ""]) == 2
    assert "empty file name" in capsys.readouterr().err
    assert main(["enroll", "alice", "", "--profiles", "/nonexistent/p"]) == 2
    assert "empty file name" in capsys.readouterr().err


def test_turning_the_lockout_off_is_said(tmp_path, stream, capsys, monkeypatch):
    from voicegate.device.cli import main

    audio, _ = stream
    wav = write_wav(tmp_path / "talk.wav", audio)
    monkeypatch.setattr(listen, "default_gate_factory", lambda args: FakeGate())
    main(["listen", "--from-file", str(wav), "--lockout-after", "0"])
    assert "--lockout-after 0: no lockout" in capsys.readouterr().err


def test_a_lockout_state_that_cannot_be_kept_stops_listen_with_exit_7(tmp_path, stream, capsys, monkeypatch):
    from voicegate.device.cli import main

    audio, _ = stream
    wav = write_wav(tmp_path / "talk.wav", audio)
    monkeypatch.setattr(listen, "default_gate_factory", lambda args: FakeGate())
    (tmp_path / "state").write_text("")  # a file where the state folder should go
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert main(["listen", "--from-file", str(wav)]) == 7
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot keep the lockout state" in err[0], err


def test_listen_usage_errors_with_json_are_json_too(capsys, tmp_path):
    from voicegate.device.cli import main

    code = main(["listen", "--demo", "--json", "--from-file", str(tmp_path / "x.wav"), "--max-utterances", "0"])
    cap = capsys.readouterr()
    d = json.loads(cap.out)
    assert code == 2 and d == {"decision": None, "error": "usage", "exit_code": 2,
                               "reason": "--max-utterances must be >= 1, got 0"}


def test_listen_with_stdout_closed_never_exits_0_nor_runs_the_hook(tmp_path):
    """`listen ... >&-` printed nothing, ran the hook and exited 0 (a review)."""
    member = sorted((Path(__file__).resolve().parents[1] / "models").glob("example-*.flac"))[0]
    marker = tmp_path / "opened"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEGATE_")}
    r = subprocess.run([sys.executable, "-m", "voicegate.device", "listen", "--demo", "--from-file", str(member),
                        "--max-utterances", "1", "--on-grant", f"touch {marker}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                       preexec_fn=lambda: os.close(1))
    assert r.returncode == 5 and "cannot write the" in r.stderr, r.stderr
    assert not marker.exists()

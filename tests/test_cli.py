"""`voicegate enroll-check`: exit codes for every decision and every error class, --json, lean imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from synth import synth_voice
from tiny_gate import TinyNet, write_gate_model

from voicegate.device import cli, contract
from voicegate.device.cli import main
from voicegate.device.contract import EXIT_INFO
from voicegate.device.features import feature_contract
from voicegate.device.model_files import MODEL_ENV, write_sidecar

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    wav = d / "voice.wav"
    sf.write(wav, synth_voice("m1", 3.0, seed=2), 16000)
    silence = d / "silence.wav"
    sf.write(silence, [0.0] * 32000, 16000)
    junk = d / "junk.wav"
    junk.write_bytes(b"RIFF....not really a wave file" * 4)
    return {
        "wav": wav, "silence": silence, "junk": junk,
        "mc": write_gate_model(d / "mc.onnx", "mc", samples=16),
        "granted": write_gate_model(d / "yes.onnx", "mc", models=[TinyNet(bias=(-4.0, 4.0))]),
        "denied": write_gate_model(d / "no.onnx", "mc", models=[TinyNet(bias=(4.0, -4.0))]),
        "ensemble": write_gate_model(d / "ens.onnx", "ensemble", samples=3),
    }


def check(files, *extra, model="mc", audio="wav"):
    return main(["enroll-check", str(files[audio]), "--model", str(files[model]), *extra])


def test_exit_codes_from_the_models_own_thresholds(files, capsys):
    assert check(files, model="granted") == 0
    assert capsys.readouterr().out.startswith("GRANTED")
    assert check(files, model="denied") == 1
    assert capsys.readouterr().out.startswith("DENIED")


def test_exit_codes_forced_by_overrides(files, capsys):
    assert check(files, "--accept", "0", "--uncertainty-limit", "1", "--unsafe-thresholds") == 0
    assert check(files, "--accept", "1", "--deny", "1") == 1
    assert check(files, "--accept", "0", "--uncertainty-limit", "0", "--unsafe-thresholds") == 3  # std > 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["GRANTED", "DENIED", "UNCERTAIN"]
    assert all("p_allow=" in line and "windows=" in line and "latency=" in line for line in out)


@pytest.mark.parametrize("override", [["--accept", "0"], ["--uncertainty-limit", "0.3"], ["--deny", "0.1"],
                                      ["--accept", "0.44", "--deny", "0.3"]])
def test_overrides_that_loosen_past_the_bounds_are_refused(files, capsys, override):
    # the tiny model's validated thresholds: accept 0.5, uncertainty limit 0.1, deny 0.3
    assert check(files, *override, model="granted") == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("voicegate: bad thresholds: refusing thresholds that loosen") and "--unsafe-thresholds" in err


def test_a_loosening_override_is_said_and_recorded(files, capsys):
    assert check(files, "--json", "--uncertainty-limit", "0.12", "--accept", "0.47", model="granted") == 0
    out, err = capsys.readouterr()
    d = json.loads(out)
    assert d["thresholds_loosened"] == ["accept 0.5 -> 0.47", "uncertainty_limit 0.1 -> 0.12"]
    assert d["model_thresholds"] == {"accept": 0.5, "uncertainty_limit": 0.1, "deny": 0.3}
    assert d["thresholds"] == {"accept": 0.47, "uncertainty_limit": 0.12, "deny": 0.3}
    assert err.count("\n") == 1 and err.startswith("voicegate: warning: thresholds looser than the model's")
    assert "accept 0.5 -> 0.47" in err
    assert check(files, "--accept", "0", "--unsafe-thresholds") in (0, 1, 3)
    out, err = capsys.readouterr()
    assert "thresholds=LOOSENED" in out and "beyond the bounds, --unsafe-thresholds" in err


def test_a_tightening_override_is_silent_and_records_nothing_loosened(files, capsys):
    assert check(files, "--json", "--accept", "0.9", "--uncertainty-limit", "0.05", "--deny", "0.4",
                 model="granted") == 0  # its p(allowed) is about 0.999
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out)["thresholds_loosened"] == []


def test_json_output(files, capsys):
    assert check(files, "--json", "--accept", "0", "--uncertainty-limit", "0", "--unsafe-thresholds",
                 model="ensemble") == 3
    d = json.loads(capsys.readouterr().out)
    for key in ("decision", "p_allow", "uncertainty", "windows", "method", "model_sha256", "latency_ms",
                "entropy", "mutual_info", "reason"):
        assert key in d
    assert d["decision"] == "UNCERTAIN" and d["method"] == "ensemble" and d["exit_code"] == 3
    assert d["model_sha256"] == files["ensemble"].with_name("ens.onnx.sha256").read_text().split()[0]


@pytest.mark.parametrize("audio", ["silence", "junk"])
def test_unusable_audio_exits_4(files, capsys, audio):
    assert check(files, audio=audio) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("voicegate: unusable audio:")


def test_missing_audio_and_directory_exit_4(files, tmp_path, capsys):
    assert main(["enroll-check", str(tmp_path / "nope.wav"), "--model", str(files["mc"])]) == 4
    assert main(["enroll-check", str(tmp_path), "--model", str(files["mc"])]) == 4
    assert "Traceback" not in capsys.readouterr().err


def test_a_file_name_cannot_forge_a_line(files, tmp_path, capsys):
    name = tmp_path / "x\nGRANTED as alice\r.wav"
    assert main(["enroll-check", str(name), "--model", str(files["mc"])]) == 4
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "x\\nGRANTED as alice\\r.wav" in err


def test_training_commands_check_out_before_the_work(tmp_path):
    from voicegate.train.commands import out_problem

    assert out_problem(str(tmp_path / "new" / "run")) is None and not (tmp_path / "new").exists()
    assert out_problem(str(tmp_path / "m.onnx")) is None
    (tmp_path / "file").write_text("x")
    problem = out_problem(str(tmp_path / "file" / "run"))  # a file where the run's folder would go
    assert problem and ("not a folder" in problem or "cannot write" in problem)
    assert "cannot write" in out_problem("/proc/voicegate-nope/run")
    assert not list(tmp_path.glob(".voicegate-out-check-*"))  # the probe leaves nothing behind


def test_model_errors_exit_5(files, tmp_path, capsys, monkeypatch):
    wav = str(files["wav"])
    assert main(["enroll-check", wav, "--model", str(tmp_path / "missing.onnx")]) == 5
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"\x00" * 100)
    assert main(["enroll-check", wav, "--model", str(bogus)]) == 5  # no sidecar
    (tmp_path / "bogus.onnx.sha256").write_text(
        __import__("hashlib").sha256(b"\x00" * 100).hexdigest() + "  bogus.onnx\n")
    assert main(["enroll-check", wav, "--model", str(bogus)]) == 5  # verified, but not ONNX
    modified = tmp_path / "mod.onnx"
    modified.write_bytes(files["mc"].read_bytes() + b"\x00")
    (tmp_path / "mod.onnx.sha256").write_text(files["mc"].with_name("mc.onnx.sha256").read_text())
    assert main(["enroll-check", wav, "--model", str(modified)]) == 5
    assert main(["enroll-check", wav, "--model", str(files["mc"]), "--method", "ensemble"]) == 5
    truncated = tmp_path / "trunc.onnx"
    truncated.write_bytes(files["mc"].read_bytes()[:5000])
    write_sidecar(truncated)  # its hash matches, but it is not a whole model
    assert main(["enroll-check", wav, "--model", str(truncated)]) == 5
    old = write_gate_model(tmp_path / "old.onnx", "mc", samples=4,
                           features={**feature_contract(), "feature_version": "vg-stft-0"})
    assert main(["enroll-check", wav, "--model", str(old)]) == 5
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "gone.onnx"))
    assert main(["enroll-check", wav]) == 5
    err = capsys.readouterr().err.splitlines()
    assert "feature_version" in err[-2]
    assert len(err) == 8 and all(line.startswith("voicegate: model error:") for line in err)


EMPTY_MODEL_CASES = [(cmd, how) for cmd in (["enroll-check", "{wav}"], ["enroll", "alice", "{wav}"],
                                             ["profiles", "list"], ["listen", "--from-file", "{wav}"])
                     for how in ("env", "option", "old-env")] + [(["doctor"], "env"), (["doctor"], "option")]


@pytest.mark.parametrize("command, how", EMPTY_MODEL_CASES)
def test_an_empty_model_name_is_refused_never_the_shipped_model(files, tmp_path, capsys, monkeypatch, command, how):
    import numpy as np

    from voicegate.device.encoder import ENCODER_ENV, encoder_identity, shipped_encoder
    from voicegate.device.profiles import ProfileStore, Session

    store = tmp_path / "p"  # one valid profile, so that only the model can be what is refused
    sha, dim = encoder_identity(shipped_encoder())
    ProfileStore(store).add_session("bob", sha, dim, Session(np.eye(1, dim, dtype=np.float32), 12.0, ["test"]))
    monkeypatch.setenv("VOICEGATE_PROFILES", str(store))
    argv = [a.format(wav=files["wav"]) for a in command]
    if how == "env":
        monkeypatch.setenv(MODEL_ENV, "")
    elif how == "old-env":  # the encoder's older variable (doctor does not read it)
        monkeypatch.setenv(ENCODER_ENV, " ")
    else:
        argv += ["--model", ""]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == (1 if command[0] == "doctor" else 5), err  # doctor: NOT READY
    assert ("is set but empty" if how != "option" else "--model is empty") in err, err
    assert len(err.splitlines()) == 1, err


def test_model_error_with_json_still_prints_json(files, tmp_path, capsys):
    assert main(["enroll-check", str(files["wav"]), "--json", "--model", str(tmp_path / "x.onnx")]) == 5
    d = json.loads(capsys.readouterr().out)
    assert d["decision"] is None and d["exit_code"] == 5


def test_internal_errors_fail_closed(files, capsys, monkeypatch):
    from voicegate.device import runtime

    def boom(*a, **k):
        raise RuntimeError("something unexpected")

    monkeypatch.setattr(runtime.Gate, "decide_file", boom)
    assert check(files, "--accept", "0", "--uncertainty-limit", "1", "--unsafe-thresholds") == 5
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "voicegate: internal error: RuntimeError: something unexpected")


@pytest.mark.parametrize("argv", [
    ["enroll-check"],
    ["enroll-check", "x.wav", "--accept", "2"],
    ["enroll-check", "x.wav", "--uncertainty-limit", "-1"],
    ["enroll-check", "x.wav", "--method", "bayes"],
    ["enroll-check", "x.wav", "--no-such-flag"],
])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2


def test_deny_above_the_accept_threshold_is_a_usage_error(files, capsys):
    assert check(files, "--accept", "0.5", "--deny", "0.9") == 2
    assert capsys.readouterr().err.startswith("voicegate: bad thresholds:")


def test_help_documents_exit_codes(capsys):
    assert main(["--help"]) == EXIT_INFO
    out = capsys.readouterr().out
    assert "enroll-check" in out and "5  the model is missing" in out
    assert main(["enroll-check", "--help"]) == EXIT_INFO
    out = capsys.readouterr().out
    assert "3  UNCERTAIN" in out and f"{EXIT_INFO} help or version printed" in out


def test_exit_code_help_is_built_from_the_constants():
    for code in contract.ENROLL_CHECK_EXITS:
        assert f"  {code:<2} {contract.EXIT_MEANINGS[code]}" in contract.EXIT_CODES_HELP
    for code in contract.LISTEN_EXITS:
        assert f"  {code:<2} " in contract.LISTEN_EXIT_CODES_HELP
    codes = [contract.EXIT_GRANTED, contract.EXIT_DENIED, contract.EXIT_USAGE, contract.EXIT_UNCERTAIN,
             contract.EXIT_AUDIO, contract.EXIT_MODEL, contract.EXIT_DEVICE, contract.EXIT_AUDIT,
             contract.EXIT_STOPPED, EXIT_INFO]
    assert len(set(codes)) == len(codes)  # no two meanings share a code


@pytest.mark.parametrize("argv", [
    ["enroll-check", "-h"],
    ["enroll-check", "--help"],
    ["enroll-check", "x.wav", "-h"],
    ["--version", "enroll-check", "x.wav"],
    ["--version"],
    ["enroll-check", "--version", "x.wav"],  # after the command too
    ["--version", "x"],  # before any parsing: even an unknown command
    ["profiles", "list", "--version"],
    ["enroll-check", "--threshold", "abc", "-h"],  # help wherever it stands, even after a bad value
    ["profiles", "list", "--json", "--help"],
    ["--help"],
    ["listen", "--help"],
])
def test_help_and_version_never_exit_0(argv, capsys):
    # 0 is GRANTED: a wrapper that passes a file named -h, or opens on 0, must not be fooled
    assert main(argv) == EXIT_INFO != 0
    assert capsys.readouterr().out  # the help or version was printed


def test_help_exit_code_of_the_real_process(files):
    r = run_cli("enroll-check", "-h")
    assert r.returncode == EXIT_INFO and "exit codes:" in r.stdout
    r = run_cli("--version", "enroll-check", str(files["wav"]), "--model", str(files["granted"]))
    assert r.returncode == EXIT_INFO and r.stdout.startswith("voicegate ")


# --- the command registry --------------------------------------------------------------------
def test_every_registered_command_is_built_in_or_says_so(capsys):
    for name in cli.DEVICE_COMMANDS:
        try:
            command = cli.load_command(name)
        except cli.CommandUnavailable:
            assert main([name]) == 2
            err = capsys.readouterr().err.strip()
            assert err == f"voicegate: {name}: {cli.NOT_AVAILABLE_MESSAGE}"
            continue
        assert callable(command.add_arguments) and callable(command.run)
    for name in ("doctor", "enroll", "profiles"):
        assert name in cli.DEVICE_COMMANDS


def test_a_missing_command_module_is_one_line_exit_2_and_help_still_works(monkeypatch, capsys):
    monkeypatch.setitem(cli.DEVICE_COMMANDS, "nothing", ("a command not in this build",
                                                         "voicegate.device.no_such_module"))
    monkeypatch.setitem(cli.DEVICE_COMMANDS, "nothing2", ("in a missing package", "no_such_pkg.mod"))
    for name in ("nothing", "nothing2"):
        assert main([name, "--flag"]) == 2
        assert capsys.readouterr().err.strip() == f"voicegate: {name}: not available in this build"
    assert main(["--help"]) == EXIT_INFO
    out = capsys.readouterr().out
    assert "nothing" in out and "a command not in this build" in out and "listen" in out


def test_a_command_plugs_in_with_one_registry_line(monkeypatch, tmp_path, capsys):
    (tmp_path / "vg_hello_cmd.py").write_text(
        "def add_arguments(p):\n    p.add_argument('--times', type=int, default=1)\n"
        "def run(args):\n    print('hello ' * args.times)\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.DEVICE_COMMANDS, "hello", ("say hello", "vg_hello_cmd"))
    assert main(["hello", "--times", "2"]) == 3
    assert capsys.readouterr().out.strip() == "hello hello"
    assert main(["hello", "--times", "x"]) == 2  # its own arguments are parsed


def test_help_imports_no_command_module_and_listen_does_not_import_cli():
    code = (
        "import sys; from voicegate.device.cli import main; rc = main(['--help']); "
        "mods = [m for m in ('voicegate.device.listen', 'voicegate.device.runtime', 'onnxruntime') "
        "if m in sys.modules]; print('RC', rc, 'MODS', mods)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert f"RC {EXIT_INFO} MODS []" in out.stdout, out.stdout + out.stderr
    code = "import sys, voicegate.device.listen; print('CLI', 'voicegate.device.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "CLI False" in out.stdout, out.stdout + out.stderr


def test_plugin_needing_torch_gives_one_line(monkeypatch, capsys):
    import importlib.metadata

    class EP:
        name = "train"

        def load(self):
            def register(subparsers):
                raise ModuleNotFoundError("No module named 'torch'", name="torch")

            return register

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [EP()])
    assert main(["train", "--corpus", "x"]) == 2
    assert capsys.readouterr().err.strip() == f"voicegate: train: {cli.TRAIN_EXTRA_MESSAGE}"


def test_device_commands_do_not_scan_plugins(monkeypatch, files, capsys):
    import importlib.metadata

    def fail(**kw):
        raise AssertionError("entry points were scanned for a device command")

    monkeypatch.setattr(importlib.metadata, "entry_points", fail)
    assert check(files, model="granted") == 0


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "voicegate.device", *args], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **(env or {})}, timeout=60)


def test_enroll_check_imports_no_torch_or_librosa(files):
    code = (
        "import sys; from voicegate.device.cli import main; "
        f"rc = main(['enroll-check', {str(files['granted'])!r}.replace('yes.onnx', 'voice.wav'), "
        f"'--model', {str(files['granted'])!r}]); "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'librosa', 'sklearn', 'matplotlib', 'onnx', 'scipy', 'voicegate.train'}); "
        "train = [m for m in sys.modules if m.startswith(('voicegate.train', 'voicegate.export'))]; "
        "print('RC', rc, 'HEAVY', heavy, train)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "RC 0 HEAVY [] []" in out.stdout, out.stdout + out.stderr


def test_python_m_entry_and_fail_closed_exit_code(files):
    r = run_cli("enroll-check", str(files["wav"]), "--model", str(files["denied"]))
    assert r.returncode == 1 and r.stdout.startswith("DENIED"), r.stderr
    r = run_cli("enroll-check", str(files["junk"]), "--model", str(files["mc"]))
    assert r.returncode == 4 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_ctrl_c_while_the_command_starts_is_one_line_and_130(monkeypatch, capsys):
    """A Ctrl-C while numpy / onnxruntime import (before any command runs) is no traceback."""
    import builtins

    from voicegate.device import console

    real = builtins.__import__

    def interrupted(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 1 and name == "cli":
            raise KeyboardInterrupt
        return real(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(SystemExit) as e:
        console.console_main()
    assert e.value.code == 130 and capsys.readouterr().err == "voicegate: interrupted\n"
    monkeypatch.setattr(builtins, "__import__", real)

    def parser_interrupted(argv):
        raise KeyboardInterrupt  # e.g. while build_parser imports a command module

    monkeypatch.setattr(cli, "main", parser_interrupted)
    monkeypatch.setattr(sys, "argv", ["voicegate", "profiles", "list"])
    with pytest.raises(SystemExit) as e:
        console.console_main()
    assert e.value.code == 130 and capsys.readouterr().err == "voicegate: interrupted\n"


def test_the_console_script_module_imports_only_the_standard_library():
    code = ("import sys; import voicegate.device.console; "
            "print(sorted(m for m in ('numpy', 'onnxruntime', 'voicegate.device.cli') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_sigterm_while_listen_starts_is_a_clean_stop(monkeypatch, capsys):
    """SIGTERM before listen installs its own handler: exit 8 (stopped) with one line, as later."""
    import signal

    from voicegate.device import console

    assert console.EXIT_STOPPED == contract.EXIT_STOPPED
    monkeypatch.setattr(sys, "argv", ["voicegate", "listen", "--from-file", "x.wav"])
    old = signal.getsignal(signal.SIGTERM)

    def startup(argv):
        signal.raise_signal(signal.SIGTERM)  # arrives while the command module imports
        raise AssertionError("SIGTERM did not stop the start-up")

    monkeypatch.setattr(cli, "main", startup)
    try:
        with pytest.raises(SystemExit) as e:
            console.console_main()
    finally:
        signal.signal(signal.SIGTERM, old)
    assert e.value.code == contract.EXIT_STOPPED
    assert capsys.readouterr().err == "voicegate: stopped (SIGTERM)\n"


@pytest.mark.parametrize("option", [["--epochs", "0"], ["--epochs", "-1"], ["--batch-size", "0"], ["--lr", "-1"],
                                    ["--limit-train", "-5"], ["--dropout", "1.2"]])
def test_training_options_out_of_range_are_usage_errors(tmp_path, option, capsys):
    """A zero or negative run length, batch or rate: exit 2 at once with one line, not a run
    that writes an untrained model or a ValueError later."""
    assert main(["train", "--corpus", str(tmp_path), "--out", str(tmp_path / "run"), *option]) == 2
    err = capsys.readouterr().err
    assert "must be" in err and option[0] in err


@pytest.mark.parametrize("argv", [["enroll-check", "--threads", "0", "x.wav"], ["train", "--epochs", "0"],
                                  ["profiles", "bogus"], ["report", "eda"], ["nonsense"],
                                  ["enroll-check", "a.wav", "--bogus"]])
def test_an_option_error_is_one_line_not_the_usage_block(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err and "--help" in err and "usage:" not in err, err


def test_a_report_that_cannot_run_is_a_usage_error_in_one_line(tmp_path, capsys):
    assert main(["report", "eda", "--corpus", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("voicegate report eda:") and "nowhere" in err and len(err.splitlines()) == 1, err


def test_the_logging_flags_may_follow_the_command():
    from voicegate.device.cli import hoist_global_flags

    assert hoist_global_flags(["eval", "m.onnx", "-v", "--out", "o"]) == ["-v", "eval", "m.onnx", "--out", "o"]
    assert hoist_global_flags(["enroll-check", "--debug", "--", "-v"]) == ["--debug", "enroll-check", "--", "-v"]
    assert hoist_global_flags(["listen", "--json"]) == ["listen", "--json"]


def test_an_unknown_option_is_reported_by_its_command(capsys):
    assert main(["enroll-check", "a.wav", "--bogus"]) == 2
    assert capsys.readouterr().err.startswith("voicegate enroll-check: error: unrecognized arguments: --bogus")


def test_an_unwritable_output_never_says_granted_and_stderr_changes_no_code(tmp_path):
    """stdout on a full disk: the GRANTED line was never said, so exit 5, not 0. stderr on a full
    disk: the error line is lost, the code stays the error's (4), not a traceback's 1."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    member = sorted((REPO / "models").glob("example-*.flac"))[0]
    cmd = [sys.executable, "-m", "voicegate.device", "enroll-check", "--demo"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEGATE_")}
    with open("/dev/full", "w") as full:
        r = subprocess.run(cmd + [str(member)], stdout=full, stderr=subprocess.PIPE, text=True, env=env)
        assert r.returncode == 5 and "cannot write the GRANTED decision" in r.stderr, r.stderr
        r = subprocess.run(cmd + [str(tmp_path / "missing.wav")], stdout=subprocess.PIPE, stderr=full, env=env)
        assert r.returncode == 4


@pytest.mark.parametrize("argv", [["--accept", "2"], ["--threads", "0"], ["--profiles", "X"], ["--bogus"]])
def test_a_usage_error_with_json_is_a_json_object_too(argv, capsys):
    code = main(["enroll-check", "--json", "--demo", *argv, "f.wav"])
    cap = capsys.readouterr()
    d = json.loads(cap.out)
    assert code == 2 and d["exit_code"] == 2 and d["decision"] is None and d["error"] == "usage"
    assert len(cap.err.strip().splitlines()) == 1
    main(["enroll-check", "--demo", *argv, "f.wav"])
    assert capsys.readouterr().out == ""  # without --json, stdout stays empty


def test_a_classifier_named_by_the_environment_is_said(tmp_path, capsys, monkeypatch):
    """$VOICEGATE_MODEL left pointing at a study classifier lets in the voices baked into it,
    not the household: said on stderr (a review got the shipped classifier GRANTING a public
    LibriSpeech reader with people enrolled and no word of it). --model on a machine where
    nobody is enrolled is the study: no line."""
    from synth import synth_voice, write_wav
    from tiny_gate import write_gate_model

    model = write_gate_model(tmp_path / "tiny.onnx", "mc", samples=8)
    wav = write_wav(tmp_path / "v.wav", synth_voice("f1", 3.0, seed=1))
    main(["enroll-check", str(wav), "--model", str(model)])
    assert "is a classifier of the study" not in capsys.readouterr().err
    monkeypatch.setenv("VOICEGATE_MODEL", str(model))
    main(["enroll-check", str(wav)])
    assert "tiny.onnx is a classifier of the study" in capsys.readouterr().err


def test_enroll_check_with_stdout_closed_is_exit_5():
    member = sorted((REPO / "models").glob("example-*.flac"))[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEGATE_")}
    r = subprocess.run([sys.executable, "-m", "voicegate.device", "enroll-check", "--demo", str(member)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                       preexec_fn=lambda: os.close(1))
    assert r.returncode == 5 and "cannot write the GRANTED decision" in r.stderr, r.stderr


@pytest.mark.parametrize("argv, code", [
    (["enroll-check", "{member}", "--demo", "--accept", "0.85"], 0),  # a loosened-threshold warning on stderr
    (["enroll-check", "{member}", "--demo"], 0),
    (["listen", "--demo", "--from-file", "{member}", "--max-utterances", "1"], 0),  # the --demo warning
])
def test_warnings_on_an_unwritable_stderr_change_no_exit_code(argv, code):
    """A review got exit 5 for a GRANTED whose warning could not be written (stderr on a full
    disk), and `enroll` reported failure for a profile it had stored."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    member = str(sorted((REPO / "models").glob("example-*.flac"))[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEGATE_")}
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "voicegate.device", *[a.format(member=member) for a in argv]],
                           stdout=subprocess.PIPE, stderr=full, text=True, env=env)
    assert r.returncode == code and "GRANTED" in r.stdout, (r.returncode, r.stdout)

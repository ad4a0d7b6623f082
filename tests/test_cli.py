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

from voicegate.device import cli
from voicegate.device.cli import main
from voicegate.device.features import feature_contract
from voicegate.device.runtime import MODEL_ENV, write_sidecar

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
    assert check(files, "--accept", "0", "--uncertainty-limit", "1") == 0
    assert check(files, "--accept", "1", "--deny", "1") == 1
    assert check(files, "--accept", "0", "--uncertainty-limit", "0") == 3  # MC samples vary: std > 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["GRANTED", "DENIED", "UNCERTAIN"]
    assert all("p_allow=" in line and "windows=" in line and "latency=" in line for line in out)


def test_json_output(files, capsys):
    assert check(files, "--json", "--accept", "0", "--uncertainty-limit", "0", model="ensemble") == 3
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


def test_model_error_with_json_still_prints_json(files, tmp_path, capsys):
    assert main(["enroll-check", str(files["wav"]), "--json", "--model", str(tmp_path / "x.onnx")]) == 5
    d = json.loads(capsys.readouterr().out)
    assert d["decision"] is None and d["exit_code"] == 5


def test_internal_errors_fail_closed(files, capsys, monkeypatch):
    from voicegate.device import runtime

    def boom(*a, **k):
        raise RuntimeError("something unexpected")

    monkeypatch.setattr(runtime.Gate, "decide_file", boom)
    assert check(files, "--accept", "0", "--uncertainty-limit", "1") == 5
    assert capsys.readouterr().err.strip() == "voicegate: internal error: RuntimeError: something unexpected"


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
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "enroll-check" in out and "5  the model is missing" in out
    assert main(["enroll-check", "--help"]) == 0
    assert "3  UNCERTAIN" in capsys.readouterr().out


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

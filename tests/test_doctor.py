"""voicegate doctor: every check's failure message, the verdict and its exit code (fakes, fast)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from voicegate.device import doctor, doctor_probe, stream
from voicegate.device.audio import SAMPLE_RATE
from voicegate.device.contract import META_CONTRACT
from voicegate.device.model_files import file_sha256, models_dir, write_sidecar

SHIPPED = models_dir() / "voicegate-compact-mc.onnx"
REPO = Path(__file__).resolve().parents[1]


def fake_sounddevice(recording=None, devices=None, rec_error=None):
    """A sounddevice stand-in: input devices, and rec() returning ``recording``."""
    if devices is None:
        devices = [{"index": 0, "name": "USB mic", "max_input_channels": 1, "default_samplerate": 48000.0,
                    "hostapi": 0}]
    sd = types.SimpleNamespace(default=types.SimpleNamespace(device=(0, -1)), calls=[])
    sd.query_devices = lambda *a, **k: devices

    def rec(frames, samplerate, channels, dtype, device):
        sd.calls.append((frames, samplerate, channels, device))
        if rec_error:
            raise rec_error
        return np.asarray(recording, np.float32).reshape(-1, 1)[:frames]

    sd.rec, sd.wait = rec, (lambda: None)
    return sd


@pytest.fixture
def use_sd(monkeypatch):
    def install(sd):
        monkeypatch.setattr(stream, "import_sounddevice", lambda: sd)
        return sd
    return install


def speech_like(level: float = 0.3, seconds: float = doctor.MIC_SECONDS) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (level * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)


def args_for(tmp_path, **kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    doctor.add_arguments(p)
    a = p.parse_args(["--no-mic", "--log", str(tmp_path / "log" / "audit.jsonl"), "--model", str(SHIPPED),
                      "--profiles", str(tmp_path / "no-profiles")])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


# --- python, model file, onnxruntime -----------------------------------------------------------
def test_old_python_fails():
    c = doctor.check_python(version=(3, 9, 18))
    assert c.status == doctor.FAIL and "needs Python >= 3.10" in c.message
    assert doctor.check_python().status == doctor.OK


def test_tampered_model_is_refused(tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(SHIPPED, model)
    write_sidecar(model)
    assert doctor.check_model_file(model)[0].status == doctor.OK
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    c, digest = doctor.check_model_file(model)
    assert c.status == doctor.FAIL and "sha256 mismatch" in c.message and digest is None


def test_probe_runs_the_shipped_model_in_a_subprocess():
    stages, failure = doctor.run_probe(SHIPPED, models_dir() / "example.wav", threads=1, repeats=1)
    assert failure is None
    checks = {c.name: c for c in doctor.probe_checks(stages, failure, budget_s=float("inf"))}  # no timing here
    assert [c.status for c in checks.values()] == [doctor.OK] * 4
    assert stages["load"]["kind"] == "classifier" and stages["run"]["shape"] == [1, 50]
    assert stages["decision"]["decision"] == "DENIED"  # the example is nobody allowed in


def test_a_crash_in_onnxruntime_is_reported_not_fatal(monkeypatch):
    crash = ("import json, os, signal; print(json.dumps({'stage': 'import', 'begin': True}), flush=True); "
             "os.kill(os.getpid(), signal.SIGSEGV)")
    monkeypatch.setattr(doctor_probe, "PROBE_CODE", crash)
    stages, failure = doctor.run_probe(SHIPPED, models_dir() / "example.wav", 1, 1)
    assert failure == "crashed with SIGSEGV during import (in a subprocess)"
    checks = doctor.probe_checks(stages, failure)
    assert checks[0].status == doctor.FAIL and "crashed with SIGSEGV during import" in checks[0].message
    assert checks[1].status == checks[2].status == checks[3].status == doctor.SKIP


def test_a_modified_speech_detector_fails():
    stages = {"import": {"onnxruntime": "1.32.0", "numpy": "2"}, "run": {"shape": [1, 50]},
              "load": {"kind": "classifier", "method": "mc", "samples": 50, "feature_version": "v", "outputs": []}}
    failure = "failed during speech: ModelError: silero_vad_16k_sequence.onnx: sha256 mismatch"
    checks = {c.name: c for c in doctor.probe_checks(stages, failure)}
    assert checks["onnxruntime"].status == doctor.OK
    assert checks["speech detector"].status == doctor.FAIL and "sha256 mismatch" in checks["speech detector"].message
    assert checks["decision time"].status == doctor.FAIL


def test_known_bad_onnxruntime_release_fails():
    stages = {"import": {"onnxruntime": "1.21.0", "numpy": "2.0"}, "run": {"shape": [1, 50]}}
    c = doctor.probe_checks(stages, None)[0]
    assert c.status == doctor.FAIL and "Illegal instruction" in c.message and "!=1.21.0" in c.message


def test_model_for_another_featurizer_fails_the_contract_check(tmp_path):
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(SHIPPED))
    for prop in proto.metadata_props:  # the shipped model, as if exported for an older featurizer
        if prop.key == META_CONTRACT:
            contract = json.loads(prop.value)
            contract["features"]["feature_version"] = "vg-old"
            prop.value = json.dumps(contract)
    model = tmp_path / "old.onnx"
    onnx.save(proto, str(model))
    write_sidecar(model)
    stages, failure = doctor.run_probe(model, models_dir() / "example.wav", 1, 1)
    checks = {c.name: c for c in doctor.probe_checks(stages, failure)}
    assert checks["onnxruntime"].status == doctor.FAIL  # it imported, but did not run the model
    assert checks["model contract"].status == doctor.FAIL
    assert "model/featurizer mismatch" in checks["model contract"].message
    assert "vg-old" in checks["model contract"].message


def test_slow_decision_fails_the_budget():
    stages = {"import": {"onnxruntime": "1.32.0", "numpy": "2"}, "run": {"shape": [1, 5]},
              "load": {"kind": "classifier", "method": "mc", "samples": 5, "feature_version": "v",
                       "outputs": ["p_allow"]},
              "decision": {"ms": [3500.0, 3400.0, 3600.0], "what": "featurize + model + policy"}}
    c = doctor.probe_checks(stages, None, budget_s=3.0)[-1]
    assert c.status == doctor.FAIL and "3500 ms" in c.message and "too slow" in c.message


# --- profiles ----------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path, monkeypatch):
    from voicegate.device import profiles
    encoder = tmp_path / "enc.onnx"  # its sha256 and embedding size are what the check uses
    shutil.copy(models_dir() / "voicegate-encoder-mc.onnx", encoder)
    write_sidecar(encoder)
    monkeypatch.setenv("VOICEGATE_ENCODER", str(encoder))
    s = profiles.ProfileStore(tmp_path / "profiles")
    assert doctor.check_model_file(encoder)[0].status == doctor.OK
    emb = np.eye(1, 128, dtype=np.float32)  # the shipped encoder's size: the check loads them for it
    s.add_session("alice", file_sha256(encoder), 128, profiles.Session(emb, 3.0, ["a.wav"]))
    return s, profiles


def test_profile_store_ok_then_wrong_mode(store):
    s, _ = store
    c0 = doctor.check_profiles(s.root, "classifier")
    assert c0.status == doctor.OK, c0.message
    s.path("alice").chmod(0o644)
    c = doctor.check_profiles(s.root, "classifier")
    assert c.status == doctor.FAIL and "mode 0644" in c.message and "chmod 600" in c.message


def test_profile_made_with_another_encoder_fails(store, tmp_path):
    s, profiles = store
    s.add_session("bob", "0" * 64, 8, profiles.Session(np.eye(1, 8, dtype=np.float32), 3.0), replace=True)
    c = doctor.check_profiles(s.root, "classifier")
    assert c.status == doctor.FAIL and "another encoder" in c.message and "bob" in c.message


def test_profile_of_another_size_fails(store):
    """Same encoder sha256, embeddings of another size: the door refuses them, so doctor fails."""
    s, profiles = store
    sha = s.load("alice").encoder_sha256
    s.add_session("bob", sha, 8, profiles.Session(np.eye(1, 8, dtype=np.float32), 3.0))
    c = doctor.check_profiles(s.root, "classifier")
    assert c.status == doctor.FAIL and "8-d embeddings, the encoder makes 128-d" in c.message


def test_a_profile_with_a_null_field_fails_the_check(store):
    """Re-checksummed, null embeddings: FAIL with the reason, not an aborted doctor."""
    s, profiles = store
    doc = json.loads(s.path("alice").read_text())
    doc["sessions"][0]["embeddings"] = None
    from voicegate.device.profile_format import checksum

    doc["checksum"] = checksum(doc)
    s.path("alice").write_text(json.dumps(doc))
    c = doctor.check_profiles(s.root, "classifier")
    assert c.status == doctor.FAIL and "unusable profile" in c.message and "embeddings is NoneType" in c.message


def test_an_unforeseen_error_in_the_profile_check_is_a_fail(store, monkeypatch):
    s, profiles = store

    def broken(self, *a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(profiles.ProfileStore, "load_all", broken)
    c = doctor.check_profiles(s.root, "classifier")
    assert c.status == doctor.FAIL and "RuntimeError: disk on fire" in c.message


def test_profile_checks_without_a_store(tmp_path, monkeypatch):
    assert doctor.check_profiles(tmp_path / "none", "classifier").status == doctor.SKIP
    c = doctor.check_profiles(tmp_path / "none", "encoder")
    assert c.status == doctor.FAIL and "no one is enrolled" in c.message
    monkeypatch.setitem(sys.modules, "voicegate.device.profiles", None)  # a build without it
    c = doctor.check_profiles(tmp_path / "none", "encoder")
    assert c.status == doctor.SKIP and "no profile store" in c.message


# --- audio -------------------------------------------------------------------------------------
def test_missing_portaudio(monkeypatch):
    def no_portaudio():
        raise stream.AudioDeviceError("PortAudio library not found (x); install libportaudio2", permanent=True)

    monkeypatch.setattr(stream, "import_sounddevice", no_portaudio)
    devices, mic = doctor.check_audio(None)
    assert devices.status == doctor.FAIL and "install libportaudio2" in devices.message
    assert mic.status == doctor.SKIP


def test_no_input_device(use_sd):
    use_sd(fake_sounddevice(devices=[{"index": 0, "name": "HDMI", "max_input_channels": 0}]))
    devices, mic = doctor.check_audio(None)
    assert devices.status == doctor.FAIL and "no input device" in devices.message


@pytest.mark.parametrize("recording, status, words", [
    (np.zeros(32000), doctor.FAIL, "silent"),
    (speech_like(0.0005), doctor.FAIL, "too quiet"),
    (speech_like(0.005), doctor.WARN, "quiet"),
    (np.clip(speech_like(3.0), -1, 1), doctor.FAIL, "clipping"),
    (speech_like(0.3), doctor.OK, "dBFS"),
    (speech_like(0.3) + 0.1, doctor.WARN, "DC offset +0.100"),
])
def test_microphone_level(use_sd, recording, status, words):
    sd = use_sd(fake_sounddevice(recording))
    devices, mic = doctor.check_audio("1")
    assert devices.status == doctor.OK and "USB mic" in devices.message
    assert mic.status == status and words in mic.message
    assert sd.calls == [(int(doctor.MIC_SECONDS * SAMPLE_RATE), SAMPLE_RATE, 1, 1)]  # "1" -> index 1


def test_recording_error_is_one_line(use_sd):
    use_sd(fake_sounddevice(rec_error=RuntimeError("Invalid sample rate\nmore")))
    c = doctor.check_audio(None)[1]
    assert c.status == doctor.FAIL and "Invalid sample rate" in c.message and "\n" not in c.message


def test_low_disk_fails(tmp_path, monkeypatch):
    assert doctor.check_disk(tmp_path / "new" / "audit.jsonl").status == doctor.OK
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: types.SimpleNamespace(free=10 * 2**20))
    c = doctor.check_disk(tmp_path / "audit.jsonl")
    assert c.status == doctor.FAIL and "10 MiB free" in c.message


def test_an_unforeseen_error_in_the_disk_check_is_a_fail(tmp_path, monkeypatch):
    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(doctor.Path, "exists", denied)
    c = doctor.check_disk(tmp_path / "x" / "audit.jsonl")
    assert c.status == doctor.FAIL and "PermissionError" in c.message


def test_the_audit_log_check_follows_xdg_state_home_and_wants_a_regular_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert str(tmp_path / "state" / "voicegate" / "audit.jsonl") in doctor.check_disk(None).message
    os.mkfifo(tmp_path / "fifo")
    c = doctor.check_disk(tmp_path / "fifo")
    assert c.status == doctor.FAIL and "not a regular file" in c.message


# --- the command -------------------------------------------------------------------------------
def test_door_model_is_the_one_a_door_would_use(tmp_path, monkeypatch):
    from voicegate.device import encoder as enc

    for var in ("VOICEGATE_MODEL", "VOICEGATE_ENCODER"):
        monkeypatch.delenv(var, raising=False)
    real = enc.shipped_encoder
    monkeypatch.setattr(enc, "shipped_encoder", lambda method=None: tmp_path / "none.onnx")  # a build without an encoder
    assert doctor.door_model(None, None) == SHIPPED
    assert doctor.door_model(None, "ensemble").name == "voicegate-compact-ensemble.onnx"
    monkeypatch.setattr(enc, "shipped_encoder", real)
    assert real().is_file()  # this build ships an encoder: --method picks its encoder, never a classifier
    assert doctor.door_model(None, None) == real()
    assert doctor.door_model(None, "ensemble") == real("ensemble")
    (tmp_path / "enc.onnx").write_bytes(b"x")
    monkeypatch.setenv("VOICEGATE_ENCODER", str(tmp_path / "enc.onnx"))
    assert doctor.door_model(None, None) == tmp_path / "enc.onnx"  # enroll-check's default
    monkeypatch.setenv("VOICEGATE_MODEL", str(tmp_path / "m.onnx"))
    assert doctor.door_model(None, None) == tmp_path / "m.onnx"


def test_verdict():
    ok, skip, fail = (doctor.Check(n, s, "m") for n, s in (("a", doctor.OK), ("b", doctor.SKIP), ("c", doctor.FAIL)))
    assert doctor.verdict([ok, skip]) == (0, "READY for a door: 1 checks passed; skipped: b")
    code, text = doctor.verdict([ok, skip, fail])
    assert code == 1 and text.startswith("NOT READY: 1 check(s) failed: c")


@pytest.fixture
def no_budget(monkeypatch):
    """No timing in the verdict tests: this machine's load must not decide them."""
    monkeypatch.setattr(doctor_probe, "REALTIME_BUDGET_S", float("inf"))


def test_run_ready_and_not_ready(tmp_path, use_sd, capsys, monkeypatch, no_budget):
    use_sd(fake_sounddevice(speech_like()))
    monkeypatch.setattr(doctor, "CHECK_REPEATS", 1)
    assert doctor.run(args_for(tmp_path, no_mic=False)) == doctor.EXIT_READY
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("READY for a door") and len(out) == 11  # 10 checks + verdict
    monkeypatch.setattr(doctor, "MIN_FREE_BYTES", 2**62)
    assert doctor.run(args_for(tmp_path)) == doctor.EXIT_NOT_READY
    out = capsys.readouterr().out
    assert "NOT READY: 1 check(s) failed: audit log disk" in out and "--no-mic" in out


def test_bench_report_and_json(tmp_path, use_sd, capsys, monkeypatch, no_budget):
    use_sd(fake_sounddevice())
    monkeypatch.setattr(doctor, "BENCH_REPEATS", 2)
    assert doctor.run(args_for(tmp_path, bench=True, json=True)) == doctor.EXIT_READY
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit_code"] == 0 and {c["name"] for c in doc["checks"]} >= {"onnxruntime", "decision time"}
    bench = doc["bench"]
    assert bench["warm_decision_ms"]["n"] == 2 and bench["onnxruntime"] and bench["sha256"]
    assert bench["warm_decision_ms"]["min"] <= bench["warm_decision_ms"]["median"] <= bench["warm_decision_ms"]["max"]
    # benchmarks/pi.py turns the report into a measured line, named for the board it ran on
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import pi

    line = pi.measured_line(doc, "report.json")
    assert f"median {bench['warm_decision_ms']['median']:.0f} ms" in line and "n 2" in line
    assert line.startswith("  MEASURED on a Pi" if "Raspberry Pi" in bench["board"] else "  MEASURED on another")
    with pytest.raises(ValueError, match="not a voicegate doctor --bench report"):
        pi.measured_line({"warm": 1}, "x.json")

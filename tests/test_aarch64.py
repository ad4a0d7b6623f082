"""aarch64 smoke test: the base install's ``voicegate enroll-check`` on an emulated Raspberry Pi 4
gives the same decisions, and scores within a stated tolerance, as on this x86 machine.

The emulation (tools/aarch64/pi_emu.py): ``qemu-aarch64-static -cpu cortex-a72``, Debian
bookworm's arm64 python3.11, the aarch64 wheels of numpy / soundfile / sounddevice (the host's
versions) and onnxruntime **pinned to pi_emu.ORT_VERSION** (1.32.0; verified 1.22.0-1.32.0 with
the fake Pi 4 /proc/cpuinfo the emulation installs, since >= 1.28 segfaults at import on the
host's x86 /proc/cpuinfo; override with $VOICEGATE_AARCH64_ORT). The x86 side runs this
machine's normal-range onnxruntime. Downloads are cached in tools/aarch64/.cache (git-ignored).

Tolerances (pi_emu.compare): same decision, exit code, model sha256, windows and samples; the
ensemble's p_allow and uncertainty within 1e-4; an MC model's within its sampling error (new
dropout masks every run). Without qemu the emulated tests skip, except under .ci/run (VOICEGATE_REQUIRE_SHARED=1), CI=true or
VOICEGATE_REQUIRE_AARCH64=1, where .ci/run installs qemu-user-static and they must run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools" / "aarch64"))

import pi_emu  # noqa: E402
from conftest import skip_or_fail  # noqa: E402

EXAMPLE = REPO / "models" / "example.wav"
ALLOWED = REPO / "models" / "example-librispeech-2414.flac"  # the demo household's allowed voice
CLASSIFIERS = {m: REPO / "models" / f"voicegate-compact-{m}.onnx" for m in ("mc", "ensemble")}
ENCODER = REPO / "models" / "voicegate-encoder-mc.onnx"  # the default: the demo household is made with it
# (clip, model options): the shipped examples through the shipped models. The ensemble is
# deterministic (strict decision and 1e-4 score checks); MC runs are compared within their
# sampling error (see pi_emu.compare; the flac's MC classifier run sits at its uncertainty limit).
CASES = [
    (EXAMPLE, ["--model", CLASSIFIERS["mc"]]),
    (EXAMPLE, ["--model", CLASSIFIERS["ensemble"]]),
    (ALLOWED, ["--model", CLASSIFIERS["ensemble"]]),
    (ALLOWED, ["--model", ENCODER, "--demo"]),  # by name against the shipped demo household
]


@pytest.fixture(scope="module")
def pi() -> pi_emu.Pi:
    try:
        return pi_emu.Pi.build()
    except pi_emu.EmulationError as e:
        skip_or_fail(f"aarch64 emulation unavailable: {e}")


def x86(args) -> dict:
    return pi_emu.decision_json(pi_emu.x86_voicegate(args), "x86")


def aarch64(pi, args) -> dict:
    return pi_emu.decision_json(pi.voicegate(args), "aarch64")


# --- the comparison itself (no emulation) -----------------------------------------------------
def _decision(method="ensemble", p=0.9, std=0.01, decision="GRANTED", samples=5):
    return {"decision": decision, "exit_code": {"GRANTED": 0, "DENIED": 1}[decision], "method": method,
            "samples": samples, "windows": 3, "model_sha256": "ab" * 32, "p_allow": p,
            "uncertainty": std, "std": std}


def test_compare_flags_every_difference():
    a = _decision()
    assert pi_emu.compare(a, dict(a, p_allow=0.9 + 5e-5)) == []
    assert pi_emu.compare(a, dict(a, decision="DENIED", exit_code=1))[0] == "decision: x86 'GRANTED', aarch64 'DENIED'"
    assert pi_emu.compare(a, dict(a, p_allow=0.91))[0].startswith("p_allow: x86 0.9, aarch64 0.91")
    assert pi_emu.compare(a, dict(a, model_sha256="cd" * 32))[0].startswith("model_sha256")
    assert pi_emu.compare(a, {"decision": None, "error": "model error", "exit_code": 5})  # a failed run


def test_mc_tolerance_follows_the_sampling_error():
    a = _decision("mc", p=0.5, std=0.1, samples=50)
    tol = pi_emu.tolerance(a, a, "p_allow")  # 1e-4 + 5 * sqrt(2 * 0.01 / 50) = 0.1001
    assert pi_emu.compare(a, dict(a, p_allow=0.5 + 0.9 * tol)) == []
    assert pi_emu.compare(a, dict(a, p_allow=0.5 + 1.1 * tol))
    assert pi_emu.tolerance(_decision(), _decision(), "p_allow") == pi_emu.SCORE_ATOL


def test_mc_decisions_are_compared_unless_borderline():
    t = {"accept": 0.9, "uncertainty_limit": 0.1, "deny": 0.3}
    clear = dict(_decision("mc", p=0.99, std=0.01, samples=50), thresholds=t)  # tolerance about 0.01
    assert not pi_emu.borderline(clear, clear)
    assert "decision: x86 'GRANTED', aarch64 'DENIED'" in pi_emu.compare(clear, dict(clear, decision="DENIED"))
    near = dict(clear, p_allow=0.905)  # within the tolerance of accept: either decision is a fair draw
    assert pi_emu.borderline(near, near)
    assert pi_emu.compare(near, dict(near, decision="UNCERTAIN", exit_code=3)) == []
    ens = dict(_decision("ensemble", p=0.9000001), thresholds=t)  # deterministic: never borderline
    assert not pi_emu.borderline(ens, ens) and pi_emu.compare(ens, dict(ens, decision="UNCERTAIN"))
    named = dict(clear, speaker="a", scores={"a": 0.99, "b": 0.2})
    assert pi_emu.compare(named, dict(named, scores={"a": 0.99, "b": 0.5}))[0].startswith("scores[b]")


# --- the emulated Pi ---------------------------------------------------------------------------

@pytest.mark.slow
def test_the_emulated_pi_is_an_aarch64_base_install(pi):
    r = pi.python(["-c", "import platform, onnxruntime, numpy, soundfile, importlib.util as u; "
                         "print(platform.machine(), onnxruntime.__version__, u.find_spec('torch') is None)"])
    assert r.returncode == 0, r.stderr[-500:]
    assert r.stdout.split() == ["aarch64", pi.ort_version, "True"]  # no torch in the base install


@pytest.mark.slow
@pytest.mark.parametrize("clip, options", CASES, ids=[f"{c.stem}-{Path(o[1]).stem}{'-demo' * ('--demo' in o)}" for c, o in CASES])
def test_enroll_check_matches_x86(pi, clip, options):
    args = ["enroll-check", clip, *options, "--json"]
    want, got = x86(args), aarch64(pi, args)
    assert want["decision"] in ("GRANTED", "DENIED", "UNCERTAIN"), want
    assert pi_emu.compare(want, got) == []
    if want["method"] == "ensemble":
        assert not pi_emu.borderline(want, got) and got["decision"] == want["decision"]


def granting_gate(path: Path, samples: int = 8) -> Path:
    """A different model: a tiny ONNX gate whose p(allowed) is about 0.99 for any voice."""
    onnx = pytest.importorskip("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from voicegate.device.contract import INPUT_NAME, OUTPUT_NAME, ModelContract
    from voicegate.device.features import IMAGE_SIZE, feature_contract
    from voicegate.device.policy import Thresholds
    from voicegate.device.model_files import write_sidecar

    nodes = [helper.make_node("ReduceMean", [INPUT_NAME], ["m"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Reshape", ["m", "shape"], ["m2"]),  # (batch, 1)
             helper.make_node("Mul", ["m2", "zero"], ["z"]),
             helper.make_node("Add", ["z", "p"], [OUTPUT_NAME])]  # (batch, samples), p about 0.99
    inits = [numpy_helper.from_array(np.array([-1, 1], np.int64), "shape"),
             numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
             numpy_helper.from_array(np.linspace(0.985, 0.995, samples, dtype=np.float32), "p")]
    graph = helper.make_graph(
        nodes, "granting_gate",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", samples])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    contract = ModelContract(features=feature_contract(), method="mc", samples=samples,
                             thresholds=Thresholds(accept=0.5, uncertainty_limit=0.1, deny=0.3))
    for key, value in contract.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    write_sidecar(path)
    return path


@pytest.mark.slow
def test_comparison_fails_when_the_emulated_decision_differs(pi, tmp_path):
    """Feed the emulated Pi a different model (one that grants everyone): the comparison fails."""
    other = granting_gate(tmp_path / "grants.onnx")
    want = x86(["enroll-check", EXAMPLE, "--model", CLASSIFIERS["mc"], "--json"])
    got = aarch64(pi, ["enroll-check", EXAMPLE, "--model", other, "--json"])
    assert want["decision"] == "DENIED" and got["decision"] == "GRANTED"
    bad = pi_emu.compare(want, got)
    assert "decision: x86 'DENIED', aarch64 'GRANTED'" in bad
    assert any(b.startswith("p_allow") for b in bad) and any(b.startswith("model_sha256") for b in bad)


# --- the enrolment flow -------------------------------------------------------------------------
ENROL = ["367-130732-0001", "367-130732-0004", "367-130732-0008"]  # 14.6 s of one held-out voice
SAME, OTHER = "367-130732-0009", "3005-163389-0002"  # 3.8 s of the same voice, 3.6 s of another
CENTROID_MIN_COSINE = 0.99  # the two enrolments differ only by MC masks and float rounding


@pytest.mark.slow
@pytest.mark.shared
def test_enrolment_flow_matches_x86(pi, librispeech, tmp_path):
    """enroll, then enroll-check the same voice and another, on both machines: same outcome."""
    import csv

    import numpy as np

    from voicegate.device.profiles import ProfileStore

    paths = {r["recording"]: librispeech / r["path"] for r in csv.DictReader(open(librispeech / "manifest.csv"))}
    out = {}
    for side, run in (("x86", pi_emu.x86_voicegate), ("aarch64", pi.voicegate)):
        store = tmp_path / side
        common = ["--profiles", store, "--model", ENCODER, "--json"]
        enrolled = pi_emu.decision_json(run(["enroll", "alice", *(paths[r] for r in ENROL), *common]), side)
        assert enrolled.get("enrolled") is True, enrolled
        checks = [pi_emu.decision_json(run(["enroll-check", paths[r], *common]), side) for r in (SAME, OTHER)]
        out[side] = enrolled, checks, ProfileStore(store).load("alice").centroid()
    (ex, cx, kx), (ee, ce, ke) = out["x86"], out["aarch64"]
    assert (ex["windows"], ex["speech_seconds"]) == (ee["windows"], ee["speech_seconds"])
    assert float(np.dot(kx, ke)) >= CENTROID_MIN_COSINE
    for want, got in zip(cx, ce):
        assert want["decision"] in ("GRANTED", "DENIED", "UNCERTAIN"), want
        assert pi_emu.compare(want, got) == []

"""The decision policy, the model contract and the Gate runtime (integrity and mismatch refusal)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from synth import synth_voice
from tiny_gate import TinyNet, make_contract, write_gate_model

from voicegate.device.audio import AudioError, NoSpeechError
from voicegate.device.contract import (
    EXIT_AUDIO,
    EXIT_DENIED,
    EXIT_GRANTED,
    EXIT_MODEL,
    EXIT_UNCERTAIN,
    EXIT_USAGE,
    META_CONTRACT,
    META_FEATURE_VERSION,
    ModelContract,
    ModelError,
)
from voicegate.device.features import feature_contract
from voicegate.device.policy import (
    DENIED,
    GRANTED,
    UNCERTAIN,
    Thresholds,
    binary_entropy,
    decide,
    summarize,
)
from voicegate.device.runtime import Gate, check_samples_differ, log_odds, probe_images
from voicegate.device.model_files import MODEL_ENV, resolve_model_path, write_sidecar

T = Thresholds(accept=0.8, uncertainty_limit=0.1, deny=0.3)


# --- policy --------------------------------------------------------------------------------
def test_summarize_hand_made_samples():
    # 2 windows x 4 samples; per-sample utterance means u = [0.9, 0.7, 0.9, 0.7]
    s = np.array([[1.0, 0.8, 0.9, 0.6], [0.8, 0.6, 0.9, 0.8]])
    st = summarize(s)
    assert st.windows == 2 and st.samples == 4
    assert st.p_allow == pytest.approx(0.8)
    assert st.std == pytest.approx(0.1)
    assert st.entropy == pytest.approx(-(0.8 * math.log2(0.8) + 0.2 * math.log2(0.2)))
    expected = (binary_entropy(0.9) + binary_entropy(0.7)) / 2
    assert st.mutual_info == pytest.approx(st.entropy - expected)
    assert st.mutual_info > 0


def test_agreeing_samples_have_no_epistemic_uncertainty():
    st = summarize(np.full((3, 10), 0.5))
    assert st.std == 0 and st.mutual_info == pytest.approx(0) and st.entropy == pytest.approx(1.0)
    assert summarize(np.ones((1, 5))).entropy == 0.0


@pytest.mark.parametrize(
    "samples, verdict",
    [
        (np.full((2, 8), 0.95), GRANTED),  # high and certain
        (np.full((2, 8), 0.05), DENIED),  # below deny
        (np.full((2, 8), 0.5), DENIED),  # between deny and accept, confident
        (np.array([[0.6, 1.0] * 4]), UNCERTAIN),  # mean 0.8 >= accept but std 0.2 > limit
        (np.array([[0.3, 0.9] * 4]), UNCERTAIN),  # mean 0.6 between, std 0.3 > limit
        (np.array([[0.0, 0.5] * 4]), DENIED),  # mean 0.25 < deny even though uncertain
    ],
)
def test_decide_covers_every_branch(samples, verdict):
    got, reason = decide(summarize(samples), T)
    assert got == verdict, reason
    assert reason


def test_decide_with_other_measures():
    st = summarize(np.array([[0.7, 0.99] * 4]))  # mean 0.845, std 0.145
    assert decide(st, T, "std")[0] == UNCERTAIN
    assert decide(st, Thresholds(0.8, 1.0, 0.3), "entropy")[0] == GRANTED
    assert decide(st, Thresholds(0.8, 0.001, 0.3), "mutual_info")[0] == UNCERTAIN


def test_summarize_rejects_garbage():
    for bad in (np.zeros((0, 4)), np.array([[np.nan, 0.5]]), np.array([[1.5]]), np.zeros((2, 2, 2))):
        with pytest.raises(ValueError):
            summarize(bad)


def test_thresholds_validate_and_override():
    with pytest.raises(ValueError):
        Thresholds(accept=0.5, uncertainty_limit=0.1, deny=0.6)  # deny above accept
    with pytest.raises(ValueError):
        Thresholds(accept=1.5, uncertainty_limit=0.1, deny=0.1)
    with pytest.raises(ValueError):
        Thresholds(accept=0.5, uncertainty_limit=-1, deny=0.1)
    o = T.override(accept=0.2)
    assert (o.accept, o.deny, o.uncertainty_limit) == (0.2, 0.2, 0.1)
    assert T.override(uncertainty_limit=0.5).to_dict() == {"accept": 0.8, "uncertainty_limit": 0.5, "deny": 0.3}


# --- contract --------------------------------------------------------------------------------
def test_contract_round_trip():
    c = make_contract("ensemble", 5, T)
    assert ModelContract.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    meta = c.to_metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert meta[META_FEATURE_VERSION] == feature_contract()["feature_version"]
    back = ModelContract.from_metadata(meta)
    assert back == c and back.thresholds == T


@pytest.mark.parametrize("meta", [{}, {META_CONTRACT: "{not json"}, {META_CONTRACT: "[]"},
                                  {META_CONTRACT: json.dumps({"method": "mc"})}])
def test_contract_from_bad_metadata(meta):
    with pytest.raises(ModelError):
        ModelContract.from_metadata(meta)


def test_contract_feature_check():
    c = make_contract()
    c.check_features(feature_contract())
    for key, value in (("feature_version", "vg-stft-0"), ("sample_rate", 8000), ("n_fft", 512)):
        with pytest.raises(ModelError, match=key):
            c.check_features({**feature_contract(), key: value})


def test_exit_codes_are_the_documented_ones():
    assert (EXIT_GRANTED, EXIT_DENIED, EXIT_USAGE, EXIT_UNCERTAIN, EXIT_AUDIO, EXIT_MODEL) == (0, 1, 2, 3, 4, 5)


# --- the gate --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "mc": write_gate_model(d / "mc.onnx", "mc", samples=16),
        "ensemble": write_gate_model(d / "ens.onnx", "ensemble", samples=3),
        "granted": write_gate_model(d / "yes.onnx", "mc", models=[TinyNet(bias=(-4.0, 4.0))]),
        "denied": write_gate_model(d / "no.onnx", "mc", models=[TinyNet(bias=(4.0, -4.0))]),
    }


@pytest.fixture(scope="module")
def voice():
    return synth_voice("f1", 3.0, seed=1)


def test_decide_audio_fields(models, voice):
    gate = Gate.load(models["mc"])
    d = gate.decide_audio(voice, 16000)
    assert d.decision in (GRANTED, DENIED, UNCERTAIN)
    assert d.method == "mc" and d.samples == 16 and d.windows >= 1
    assert 0 <= d.p_allow <= 1 and d.uncertainty == d.std > 0
    assert d.entropy >= 0 and d.mutual_info >= 0 and d.latency_ms > 0
    assert d.model_sha256 == gate.sha256 and len(d.model_sha256) == 64
    assert d.to_dict()["exit_code"] == d.exit_code


def test_decide_audio_at_other_rates_and_stereo(models, voice):
    from voicegate.device.audio import resample
    from voicegate.device.features import INFER_HOP_SECONDS, featurize

    gate = Gate.load(models["ensemble"])  # deterministic: the same windows give the same numbers
    stereo = np.stack([resample(voice, 16000, 44100)] * 2, axis=1)
    d = gate.decide_audio(stereo, 44100)
    assert d.method == "ensemble" and d.samples == 3
    # what the audio produced: the 44.1 kHz stereo copy renders the 16 kHz voice's spectrograms
    # (closer to them than another voice's are), and the decision is the one those windows give
    images = featurize(stereo, sample_rate=44100, hop_seconds=INFER_HOP_SECONDS)
    ref = featurize(voice, sample_rate=16000, hop_seconds=INFER_HOP_SECONDS)
    other = featurize(synth_voice("m2", 3.0, seed=7), sample_rate=16000, hop_seconds=INFER_HOP_SECONDS)
    assert images.shape == ref.shape and d.windows == len(images) >= 1
    n = min(len(ref), len(other))
    assert np.abs(images - ref).mean() < 0.1 * np.abs(ref[:n] - other[:n]).mean()
    from_windows = gate.decide_images(images)
    assert (d.decision, d.p_allow, d.std) == (from_windows.decision, from_windows.p_allow, from_windows.std)
    assert d.p_allow != gate.decide_images(other).p_allow


def test_fixed_bias_models_decide_by_their_thresholds(models, voice, tmp_path):
    import soundfile as sf

    wav = tmp_path / "v.wav"
    sf.write(wav, voice, 16000)
    yes = Gate.load(models["granted"]).decide_file(wav)
    no = Gate.load(models["denied"]).decide_file(wav)
    assert (yes.decision, yes.exit_code) == (GRANTED, 0) and yes.p_allow > 0.99
    assert (no.decision, no.exit_code) == (DENIED, 1) and no.p_allow < 0.01
    # an override can make the same model uncertain (a limit below its small spread) or deny
    assert 0.0 < yes.std < 0.01 and yes.p_allow < 1.0
    uncertain = Gate.load(models["granted"], uncertainty_limit=yes.std / 2).decide_file(wav)
    assert (uncertain.decision, uncertain.exit_code) == (UNCERTAIN, 3)
    assert Gate.load(models["granted"], accept=1.0, deny=1.0).decide_file(wav).decision == DENIED


def test_seeded_gates_repeat_their_samples(models, voice):
    a = Gate.load(models["mc"], seed=5).decide_audio(voice)
    b = Gate.load(models["mc"], seed=5).decide_audio(voice)
    assert a.std == b.std and a.p_allow == b.p_allow


def test_unusable_audio_raises_audio_error(models, tmp_path):
    gate = Gate.load(models["mc"])
    with pytest.raises(NoSpeechError):
        gate.decide_audio(np.zeros(16000, np.float32))
    with pytest.raises(AudioError):
        gate.decide_audio(np.array([np.nan] * 16000, np.float32))
    with pytest.raises(AudioError):
        gate.decide_file(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio" * 10)
    with pytest.raises(AudioError):
        gate.decide_file(junk)


def copy_model(src, dst):
    dst.write_bytes(src.read_bytes())
    write_sidecar(dst)
    return dst


def test_refuses_a_modified_model(models, tmp_path):
    path = copy_model(models["mc"], tmp_path / "m.onnx")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        Gate.load(path)


def test_refuses_a_truncated_model(models, tmp_path):
    path = copy_model(models["mc"], tmp_path / "m.onnx")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelError, match="sha256 mismatch"):
        Gate.load(path)
    write_sidecar(path)  # even with a matching hash, a truncated graph does not load
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        Gate.load(path)


def test_refuses_non_onnx_and_missing_and_unverified(tmp_path):
    fake = tmp_path / "fake.onnx"
    fake.write_text("hello, I am not a model")
    with pytest.raises(ModelError, match="no sha256"):
        Gate.load(fake)
    write_sidecar(fake)
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        Gate.load(fake)
    with pytest.raises(ModelError, match="not found"):
        Gate.load(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="not a model file"):
        Gate.load(tmp_path)


def test_refuses_sidecar_and_manifest_that_disagree(models, tmp_path):
    path = copy_model(models["mc"], tmp_path / "m.onnx")
    (tmp_path / "manifest.json").write_text(json.dumps({"m.onnx": "0" * 64}))
    with pytest.raises(ModelError, match="disagree"):
        Gate.load(path)
    path.with_name("m.onnx.sha256").unlink()  # the manifest alone decides now (and is wrong)
    with pytest.raises(ModelError, match="sha256 mismatch"):
        Gate.load(path)


def test_refuses_a_feature_version_mismatch(tmp_path):
    features = {**feature_contract(), "feature_version": "vg-stft-0"}
    path = write_gate_model(tmp_path / "old.onnx", "mc", samples=4, features=features)
    with pytest.raises(ModelError, match="feature_version"):
        Gate.load(path)
    path = write_gate_model(tmp_path / "8k.onnx", "mc", samples=4,
                            features={**feature_contract(), "sample_rate": 8000})
    with pytest.raises(ModelError, match="sample_rate"):
        Gate.load(path)


def test_refuses_a_method_mismatch(models):
    with pytest.raises(ModelError, match="ensemble"):
        Gate.load(models["mc"], method="ensemble")


# --- samples that cannot disagree are refused at load ------------------------------------------
def _write(proto, path, method, samples):
    from voicegate.export.writing import write_model

    write_model(proto, make_contract(method, samples), path)
    return path


def test_refuses_a_model_with_one_sample(tmp_path, voice):
    from voicegate.export import graphs

    path = _write(graphs.export_mc(TinyNet().eval(), 1), tmp_path / "one.onnx", "mc", 1)
    with pytest.raises(ModelError, match="1 MC samples: an uncertainty needs at least 2"):
        Gate.load(path)
    path = _write(graphs.export_ensemble([TinyNet().eval()]), tmp_path / "one-ens.onnx", "ensemble", 1)
    with pytest.raises(ModelError, match="at least 2"):
        Gate.load(path)


def test_refuses_collapsed_dropout_and_copied_members(tmp_path):
    from voicegate.export import graphs

    collapsed = graphs.with_dropout_p(graphs.export_mc(TinyNet().eval(), 8), 0.0)  # every mask all ones
    path = _write(collapsed, tmp_path / "collapsed.onnx", "mc", 8)
    with pytest.raises(ModelError, match="identical on the probe input.*never say UNCERTAIN"):
        Gate.load(path)
    same = TinyNet(seed=3).eval()
    path = _write(graphs.export_ensemble([same, same, same]), tmp_path / "copies.onnx", "ensemble", 3)
    with pytest.raises(ModelError, match="3 ensemble members are identical"):
        Gate.load(path)


def test_a_collapsed_model_is_exit_5_in_the_cli(tmp_path, voice, capsys):
    import soundfile as sf

    from voicegate.device.cli import main
    from voicegate.export import graphs

    wav = tmp_path / "v.wav"
    sf.write(wav, voice, 16000)
    path = _write(graphs.with_dropout_p(graphs.export_mc(TinyNet().eval(), 8), 0.0), tmp_path / "c.onnx", "mc", 8)
    assert main(["enroll-check", str(wav), "--model", str(path)]) == EXIT_MODEL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("voicegate: model error:") and "collapsed" in err


def test_check_samples_differ_is_generic_over_output_shapes():
    rng = np.random.default_rng(0)
    for shape in ((2, 5), (2, 5, 16)):  # (batch, S) p(allowed) or (batch, S, D) embeddings
        assert check_samples_differ(rng.random(shape), "mc", "m.onnx") > 0
        same = np.repeat(rng.random((shape[0], 1) + shape[2:]), shape[1], axis=1)
        with pytest.raises(ModelError, match="identical"):
            check_samples_differ(same, "mc", "m.onnx")
        with pytest.raises(ModelError, match="at least 2"):
            check_samples_differ(rng.random((shape[0], 1) + shape[2:]), "ensemble", "m.onnx")
    with pytest.raises(ModelError, match="identical"):
        check_samples_differ(np.full((2, 4), np.nan), "mc", "m.onnx")  # NaN never counts as varying
    # the gate probes in log-odds: saturated but varying samples pass, float32-rounded 1.0s do not
    sure = np.array([[1e-25, 6e-25, 3e-14, 5e-11], [1.0, 1.0 - 6e-8, 1.0, 1.0]], dtype=np.float32)
    assert np.ptp(sure.astype(np.float64), axis=1).max() < 1e-7  # the p scale calls them identical
    assert check_samples_differ(log_odds(sure), "mc", "m.onnx") > 1
    with pytest.raises(ModelError, match="identical"):
        check_samples_differ(log_odds(np.ones((2, 8), dtype=np.float32)), "mc", "m.onnx")
    x = probe_images()
    assert x.shape == (2, 224, 224) and 0 <= x.min() and x.max() <= 1 and x.std() > 0.1


def test_model_resolution_order(tmp_path, monkeypatch):
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert resolve_model_path(None, "ensemble").name == "voicegate-compact-ensemble.onnx"
    assert resolve_model_path().name == "voicegate-compact-mc.onnx"
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "env.onnx"))
    assert resolve_model_path() == tmp_path / "env.onnx"
    assert resolve_model_path(tmp_path / "x.onnx") == tmp_path / "x.onnx"

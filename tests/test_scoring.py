"""Scoring against profiles (the TEAM.md rule), the encoder session, and decisions by name."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from tiny_encoder import (  # noqa: F401 (model, encoder: fixtures)
    CALIBRATION,
    SAMPLES,
    THRESHOLDS,
    encoder,
    model,
    synthetic_images,
    synthetic_recordings,
    write_encoder_model,
)

from voicegate.device.contract import ModelError
from voicegate.device.encoder import Encoder
from voicegate.device.enroll import enrol
from voicegate.device.policy import DENIED, GRANTED, UNCERTAIN, Thresholds
from voicegate.device.profiles import EmptyStoreError, ProfileError, ProfileStore
from voicegate.device.scoring import (
    NamedDecision,
    ProfileGate,
    calibrate,
    decide_by_name,
    sample_embeddings,
    score_profiles,
)

AB = (CALIBRATION["a"], CALIBRATION["b"])


@pytest.fixture(scope="module")
def household(tmp_path_factory, encoder):
    """alice = synthetic voice f1, bob = m1 (enrolled from two generated recordings each)."""
    store = ProfileStore(tmp_path_factory.mktemp("household") / "profiles")
    for name, voice in (("alice", "f1"), ("bob", "m1")):
        enrol(encoder, store, name, synthetic_recordings(voice), min_speech=8)
    return store


# --- the rule, on hand-made embeddings -----------------------------------------------------------
def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_calibration_is_the_contract_logistic():
    assert calibrate(0.0, (1.0, 0.0)) == pytest.approx(0.5)
    assert calibrate(0.8, (30.0, -24.6)) == pytest.approx(1 / (1 + np.exp(-(30 * 0.8 - 24.6))))
    assert np.all(np.isfinite(calibrate([-1e9, 1e9], (50.0, 0.0))))


def test_sample_embedding_is_the_normalised_window_mean_per_sample():
    emb = unit(np.array([[[1, 0], [0, 1]], [[0, 1], [0, 1]]], dtype=float))  # (W=2, S=2, D=2)
    e = sample_embeddings(emb)
    np.testing.assert_allclose(e[0], unit([1, 1]))  # sample 0: windows disagree -> the diagonal
    np.testing.assert_allclose(e[1], [0, 1])


def test_scores_follow_the_rule_and_come_best_first():
    rng = np.random.default_rng(0)
    c = unit(rng.standard_normal((3, 8)))
    emb = unit(c[1] + 0.1 * rng.standard_normal((5, 4, 8)))  # 5 windows, 4 samples near profile 1
    scores = score_profiles(emb, ["x", "y", "z"], c, AB)
    assert scores[0].name == "y"
    e = unit(emb.mean(axis=0))  # the rule, written out
    p = 1 / (1 + np.exp(-(AB[0] * (e @ c[1]) + AB[1])))
    assert scores[0].p_allow == pytest.approx(p.mean())
    assert scores[0].uncertainty == pytest.approx(p.std())
    assert [s.p_allow for s in scores] == sorted((s.p_allow for s in scores), reverse=True)


def test_decision_by_name_and_two_close_profiles_are_uncertain():
    t = Thresholds(accept=0.7, uncertainty_limit=0.1, deny=0.3)
    c = unit(np.eye(4)[:3])
    near0 = unit(np.tile([1.0, 0.05, 0, 0], (2, 3, 1)))
    verdict, who, _ = decide_by_name(score_profiles(near0, ["a", "b", "c"], c, (20.0, -15.0)), t)
    assert (verdict, who) == (GRANTED, "a")
    far = unit(np.tile([0, 0, 0, 1.0], (2, 3, 1)))
    assert decide_by_name(score_profiles(far, ["a", "b", "c"], c, (20.0, -15.0)), t)[:2] == (DENIED, None)
    # two profiles that both reach accept: granted to neither
    twins = unit(np.stack([np.eye(4)[0], np.eye(4)[0] + 0.01 * np.eye(4)[1]]))
    verdict, who, reason = decide_by_name(score_profiles(near0, ["a", "a2"], twins, (20.0, -15.0)), t)
    assert (verdict, who) == (UNCERTAIN, None) and "a2" in reason and "please repeat" in reason
    with pytest.raises(ModelError):
        decide_by_name([], t)


def test_spread_between_samples_makes_it_uncertain():
    t = Thresholds(accept=0.7, uncertainty_limit=0.05, deny=0.3)
    c = unit(np.eye(3)[:1])
    emb = unit(np.array([[[1, 0, 0], [1, 0.9, 0], [1, 0, 0.9], [1, 0.05, 0]]]))  # samples disagree
    scores = score_profiles(emb, ["a"], c, (20.0, -15.0))
    assert scores[0].p_allow >= 0.3 and scores[0].uncertainty > 0.05
    assert decide_by_name(scores, t)[0] == UNCERTAIN


# --- the encoder session -------------------------------------------------------------------------
def test_tiny_encoder_meets_the_contract(encoder):
    emb = encoder.embed(synthetic_images("f1"))
    assert emb.ndim == 3 and emb.shape[1:] == (SAMPLES, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
    assert np.ptp(emb, axis=1).max() > 0  # MC samples differ ...
    imgs = synthetic_images("f1")
    twice = encoder.embed(np.repeat(imgs[:1], 2, axis=0))
    np.testing.assert_array_equal(twice[0], twice[1])  # ... one mask per sample, shared by the batch
    assert not np.allclose(encoder.embed(imgs[:1]), encoder.embed(imgs[:1]))  # fresh masks each run
    assert encoder.calibration == AB and encoder.thresholds == THRESHOLDS


def test_encoder_refuses_a_classifier_a_modified_file_and_a_bad_calibration(tmp_path, model):
    from tiny_gate import write_gate_model

    gate = write_gate_model(tmp_path / "gate.onnx")
    with pytest.raises(ModelError, match="is a classifier model"):
        Encoder.load(gate)
    bad = tmp_path / "mod.onnx"
    bad.write_bytes(model.read_bytes() + b"\0")
    (tmp_path / "mod.onnx.sha256").write_text(model.with_name(model.name + ".sha256").read_text())
    with pytest.raises(ModelError, match="sha256 mismatch"):
        Encoder.load(bad)
    with pytest.raises(ModelError, match="calibration"):
        Encoder.load(write_encoder_model(tmp_path / "nocal.onnx", calibration={"type": "platt"}))


# --- AS-norm (a cohort in the model) -------------------------------------------------------------------
def test_as_norm_is_the_symmetric_formula_over_the_top_cohort_voices():
    from voicegate.device.scoring import ScoreNorm

    rng = np.random.default_rng(0)
    cohort = unit(rng.normal(size=(20, 6)))
    norm = ScoreNorm(cohort, top=5)
    e = unit(rng.normal(size=(SAMPLES, 6)))  # one attempt's sample embeddings
    centroids = unit(rng.normal(size=(3, 6)))
    cos = e @ centroids.T
    got = norm.apply(cos, e.mean(0), centroids)
    top_a = np.sort(cohort @ unit(e.mean(0)))[-5:]
    for j in range(3):
        top_p = np.sort(cohort @ centroids[j])[-5:]
        want = 0.5 * ((cos[:, j] - top_a.mean()) / top_a.std() + (cos[:, j] - top_p.mean()) / top_p.std())
        np.testing.assert_allclose(got[:, j], want, atol=1e-12)
    # score_profiles calibrates the normalised scores, and only those
    emb = np.repeat(e[None], 2, axis=0)  # (W=2, S, D): the same windows twice
    with_norm = score_profiles(emb, ["a", "b", "c"], centroids, AB, norm=norm)
    order = np.argsort(-calibrate(got, AB).mean(0), kind="stable")
    assert [s.name for s in with_norm] == [["a", "b", "c"][j] for j in order]
    np.testing.assert_allclose(with_norm[0].samples, calibrate(got[:, order[0]], AB), atol=1e-12)


def test_a_model_with_a_cohort_loads_and_a_broken_or_unknown_one_is_refused(tmp_path):
    from tiny_encoder import DIM

    from voicegate.device.encoder import encode_cohort

    cohort = unit(np.random.default_rng(1).normal(size=(7, DIM)))
    cal = {**CALIBRATION, "type": "as-norm-logistic", "top": 3, "cohort": encode_cohort(cohort),
           "cohort_shape": [7, DIM]}
    enc = Encoder.load(write_encoder_model(tmp_path / "asn.onnx", calibration=cal))
    assert enc.score_norm.top == 3 and enc.score_norm.cohort.shape == (7, DIM)
    np.testing.assert_allclose(enc.score_norm.cohort, cohort, atol=2e-3)  # float16 in the contract
    for broken in ({"cohort_shape": [7, DIM + 1]}, {"cohort": "not base64!"}, {"top": 0}):
        with pytest.raises(ModelError, match="cohort"):
            Encoder.load(write_encoder_model(tmp_path / "bad.onnx", calibration={**cal, **broken}))
    with pytest.raises(ModelError, match="no logistic calibration"):  # a newer kind this runtime cannot read
        Encoder.load(write_encoder_model(tmp_path / "new.onnx", calibration={**cal, "type": "as-norm-v2"}))


def test_encoder_refuses_unnormalised_output(encoder, monkeypatch):
    class Doubling:
        def run(self, names, feeds):
            return [2 * encoder.session.run(names, feeds)[0]]

    bad = Encoder(Doubling(), encoder.contract, encoder.path, encoder.sha256, encoder.thresholds)
    with pytest.raises(ModelError, match="not L2-normalised"):
        bad.embed(synthetic_images("f1"))


# --- decisions by name with the tiny encoder -----------------------------------------------------
def test_decisions_by_name(encoder, household):
    gate = ProfileGate(encoder, household)
    d = gate.decide_images(synthetic_images("f1", seed=7))
    assert isinstance(d, NamedDecision)
    assert (d.decision, d.speaker, d.exit_code) == (GRANTED, "alice", 0)
    assert set(d.scores) == {"alice", "bob"} and d.scores["alice"] > 0.7 > d.scores["bob"]
    assert d.samples == SAMPLES and d.model_sha256 == encoder.sha256 and d.profiles == 2
    d = gate.decide_images(synthetic_images("m1", seed=7))
    assert (d.decision, d.speaker) == (GRANTED, "bob")
    for voice in ("m2", "f2", "f3"):
        d = gate.decide_images(synthetic_images(voice, seed=7))
        assert (d.decision, d.speaker) == (DENIED, None), (voice, d.scores)
        assert d.exit_code == 1 and d.candidate in ("alice", "bob")
    record = json.loads(json.dumps(d.to_dict()))  # JSON-safe, with today's keys
    for key in ("decision", "speaker", "scores", "p_allow", "uncertainty", "windows", "reason",
                "exit_code", "model_sha256", "thresholds"):
        assert key in record


def test_same_voice_under_two_names_is_uncertain(encoder, tmp_path):
    store = ProfileStore(tmp_path / "p")
    enrol(encoder, store, "alice", synthetic_recordings("f1"), min_speech=8)
    enrol(encoder, store, "alice2", synthetic_recordings("f1", seeds=(2, 3)), min_speech=8, force=True)
    d = ProfileGate(encoder, store).decide_images(synthetic_images("f1", seed=7))
    assert (d.decision, d.speaker) == (UNCERTAIN, None) and d.exit_code == 3
    assert min(d.scores.values()) >= THRESHOLDS.accept


def test_gate_reloads_the_store_and_fails_closed_on_a_bad_profile(encoder, tmp_path):
    store = ProfileStore(tmp_path / "p")
    with pytest.raises(EmptyStoreError):
        ProfileGate(encoder, store)
    enrol(encoder, store, "bob", synthetic_recordings("m1"), min_speech=8)
    gate = ProfileGate(encoder, store)
    images = synthetic_images("f1", seed=7)
    assert gate.decide_images(images).decision == DENIED
    enrol(encoder, store, "alice", synthetic_recordings("f1"), min_speech=8)  # no restart
    d = gate.decide_images(images)
    assert (d.decision, d.speaker) == (GRANTED, "alice")
    path = store.path("alice")
    st = path.stat()
    path.write_text(path.read_text().replace('"alice"', '"alicf"', 1))  # same size, same inode
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as a later edit would (mtime ticks are coarse)
    with pytest.raises(ProfileError):
        gate.decide_images(images)
    with pytest.raises(ProfileError):  # and stays refused: no fallback to the old profiles
        gate.decide_images(images)
    store.remove("alice")
    assert gate.decide_images(images).decision == DENIED

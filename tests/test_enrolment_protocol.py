"""The enrolment protocol of `voicegate eval` for encoders: trial accounting on a tiny generated
corpus (nobody both trained on and enrolled, no trial pairs a recording with itself, the counts the
plan implies), the same channel for enrolment and attempts, and EER / minDCF / FRR-at-FAR on
hand-made score lists with known answers."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from synth import synth_voice, write_wav
from tiny_encoder import write_encoder_model

from voicegate.device.contract import ModelContract
from voicegate.train.data.corpus import load_corpus
from voicegate.train.eval import encoder_eval as EE
from voicegate.train.eval import enrolment as P
from voicegate.train.eval import enrolment_report as R

ALLOWED, HELDOUT, SINGLE, TRAINED = ("f1", "m1"), ("f2", "m2"), ("m3",), ("f3",)
RECORDINGS = 4


SECONDS = 2.5  # one (shorter) attempt per recording


def make_corpus(root):
    """2 allowed and 2 held-out voices with 4 recordings each, a held-out voice with a single
    recording, and a not-allowed training voice the protocol must leave alone."""
    rows = ["path,speaker,recording,seconds"]
    for spk in (*ALLOWED, *HELDOUT, *SINGLE, *TRAINED):
        for r in range(RECORDINGS if spk in ALLOWED + HELDOUT else 1):
            rel = f"{spk}/{spk}-{r}.flac"
            write_wav(root / rel, synth_voice(spk, SECONDS, seed=r, pauses=False))
            rows.append(f"{rel},{spk},{spk}-{r},{SECONDS}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    roles = {"allowed": list(ALLOWED), "not_allowed_train": list(TRAINED),
             "heldout_impostors": list(HELDOUT + SINGLE)}
    (root / "roles.json").write_text(json.dumps(roles))
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("enrol_corpus"))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return write_encoder_model(tmp_path_factory.mktemp("enc") / "tiny-encoder.onnx")


def _cfg(corpus, **kw):
    return P.ProtocolConfig(corpus=str(corpus), progress=False, **kw)


def _run(corpus, encoder, channel_fn=None, **kw):
    """The protocol with the tiny encoder (and the device's speech detector)."""
    c = load_corpus(corpus)
    plans = P.plan_speakers(c.recordings, c.roles)
    return plans, P.run_protocol(plans, P.OnnxEmbedder(encoder), _cfg(corpus, **kw), channel_fn)


# --- the plan -----------------------------------------------------------------------------------
def test_plan_enrols_only_unseen_roles_and_splits_recordings(corpus):
    c = load_corpus(corpus)
    plans = {p.speaker: p for p in P.plan_speakers(c.recordings, c.roles)}
    assert set(plans) == set(ALLOWED + HELDOUT + SINGLE)  # the training voice is never used
    for spk, plan in plans.items():
        enrol = {r.recording for r in plan.enrol}
        attempt = {r.recording for r in plan.attempts}
        assert not enrol & attempt
        assert enrol | attempt == {r.recording for r in c.recordings if r.speaker == spk}
    assert not plans["m3"].enrolled and len(plans["m3"].attempts) == 1  # impostor-only
    assert [r.recording for r in plans["f2"].enrol] == ["f2-0", "f2-1"]  # first half
    assert all(plans[s].enrolled for s in ALLOWED + HELDOUT)


def test_a_speaker_the_encoder_trained_on_is_never_enrolled(corpus):
    c = load_corpus(corpus)
    plans = P.plan_speakers(c.recordings, c.roles)
    contract = ModelContract(features={}, method="mc", samples=2, kind="encoder",
                             thresholds={"accept": 0.5, "uncertainty_limit": 0.1, "deny": 0.3},
                             corpus={"training_speakers": {c.root.name: ["f3", "m1"]}})
    trained, lists = P.training_speakers(contract, c.root.name)
    assert trained == {"f3", "m1"} and lists == ["training_speakers"]
    with pytest.raises(P.ProtocolError, match="m1"):
        P.check_unseen(plans, trained, lists)
    other = ModelContract(features={}, method="mc", samples=2, thresholds=contract.thresholds,
                          corpus={"validation_speakers": [f"{c.root.name}/f3", "other/m1"]})
    trained, lists = P.training_speakers(other, c.root.name)
    assert trained == {"f3"} and "validation_speakers" in P.check_unseen(plans, trained, lists)
    assert "roles only" in P.check_unseen(plans, None)
    assert P.training_speakers(None, c.root.name) == (None, [])
    # a renamed copy of a training corpus is checked against every corpus's speakers: no leak
    trained, lists = P.training_speakers(contract, "renamed-copy")
    assert trained == {"f3", "m1"}
    with pytest.raises(P.ProtocolError, match="renamed copy"):
        P.check_unseen(plans, trained, lists)
    trained, lists = P.training_speakers(contract, "renamed-copy")
    unseen = P.check_unseen([p for p in plans if p.speaker not in ("f3", "m1")], trained, lists)
    assert "every corpus" in unseen


def test_make_trials_refuses_an_attempt_from_an_enrolment_recording():
    t = P.make_trials(["a", "a", "b"], ["a-2", "a-3", "b-1"], ["a", "b"], [{"a-0"}, {"b-0"}])
    assert t.genuine.tolist() == [True, False, True, False, False, True]
    with pytest.raises(P.ProtocolError, match="b-0"):
        P.make_trials(["a", "b"], ["a-2", "b-0"], ["a", "b"], [{"a-0"}, {"b-0"}])
    with pytest.raises(P.ProtocolError, match="more than one profile"):
        P.make_trials(["a"], ["a-2"], ["b", "b"], [{"b-0"}, {"b-1"}])


# --- the whole protocol on the tiny encoder ---------------------------------------------------
def test_trial_accounting_on_a_tiny_corpus(corpus, encoder):
    plans, emb = _run(corpus, encoder)
    enrolled = [p for p in plans if p.enrolled]
    assert [p["speaker"] for p in emb.profiles] == [p.speaker for p in enrolled]
    # every 2.5 s recording gives one (shorter) attempt
    n_attempts = sum(len(p.attempts) for p in plans)
    assert len(emb.attempts) == n_attempts
    assert len(emb.trials) == n_attempts * len(enrolled)
    assert int(emb.trials.genuine.sum()) == sum(len(p.attempts) for p in enrolled)
    profile_recs = [set(p["recordings"]) for p in emb.profiles]
    for a, p in zip(emb.trials.attempt, emb.trials.profile):
        assert emb.attempts[a]["recording"] not in profile_recs[p]
    single = [i for i, a in enumerate(emb.attempts) if a["speaker"] == "m3"]
    assert single and not emb.trials.genuine[np.isin(emb.trials.attempt, single)].any()
    assert all(p["seconds"] <= 30.0 for p in emb.profiles)
    report = R.channel_report(emb, P.OnnxEmbedder(encoder).contract, n_boot=20)
    assert report["counts"]["impostor_only_speakers"] == 1
    assert report["counts"]["genuine_trials"] + report["counts"]["impostor_trials"] == len(emb.trials)
    op = report["operating_point"]["policy"]
    assert op["genuine"]["n"] == report["counts"]["genuine_trials"]
    assert report["eer"] < 0.5  # the tiny encoder tells the synthetic voices apart somewhat


def test_halves_enrol_a_single_recording_speaker_from_its_first_half(corpus, encoder):
    c = load_corpus(corpus)
    plans = P.plan_speakers(c.recordings, c.roles, halves=True)
    single = next(p for p in plans if p.speaker == "m3")
    assert single.halves and single.enrolled
    assert [i for i, _, _ in single.pieces("enrol")] == ["m3-0#first-half"]
    assert [i for i, _, _ in single.pieces("attempts")] == ["m3-0#second-half"]
    assert not any(p.halves for p in plans if p.speaker != "m3")  # the others keep whole recordings
    emb = P.run_protocol(plans, P.OnnxEmbedder(encoder), _cfg(corpus))
    m3 = [i for i, a in enumerate(emb.attempts) if a["speaker"] == "m3"]
    assert m3 and emb.trials.genuine[np.isin(emb.trials.attempt, m3)].sum() == len(m3)


def test_enrolment_is_capped_at_the_enrol_seconds(corpus, encoder):
    _, emb = _run(corpus, encoder, enrol_seconds=4.0)
    assert all(p["seconds"] <= 4.0 for p in emb.profiles)
    assert all(p["utterances"] == 2 for p in emb.profiles)  # 2.5 s + the first 1.5 s of the second


def test_enrolment_and_attempts_go_through_the_same_seeded_channel(corpus, encoder):
    calls = []

    def stand_in(x, name, seed):
        calls.append((name, seed))
        return (0.5 * x).astype(np.float32)

    plans, emb1 = _run(corpus, encoder, stand_in, channel="half")
    first = list(calls)
    assert {n for n, _ in first} == {"half"}
    used = sum(len(p.attempts) + len(p.enrol) for p in plans)  # 30 s is more than all enrolment audio
    assert len(first) == used  # every enrolment and attempt recording, once each
    calls.clear()
    _, emb2 = _run(corpus, encoder, stand_in, channel="half")
    assert calls == first  # seeds fixed by (seed, channel, recording)
    assert R.trials_digest(emb1) == R.trials_digest(emb2)  # the same trials, so a peer can be compared
    r1 = R.channel_report(emb1, n_boot=5)
    cmp = R.compare_with_peer({"channels": {"half": r1}}, {"model": {"name": "peer"}, "channels": {"half": r1}})
    assert cmp["channels"]["half"]["same_trials"] and not cmp["channels"]["half"]["eer_below_peer"]
    # a peer that scored other trials, with a higher EER: both said
    other = {**r1, "trials_sha256": "0" * 64, "eer": r1["eer"] + 0.1}
    cmp = R.compare_with_peer({"channels": {"half": r1}}, {"model": {"name": "peer"}, "channels": {"half": other}})
    row = cmp["channels"]["half"]
    assert row["same_trials"] is False and row["eer_below_peer"] is True
    assert row["peer_eer"] == other["eer"] and row["eer"] == r1["eer"]
    assert P.channel_seed(0, "half", "f1-0") != P.channel_seed(0, "other", "f1-0")


def test_voicegate_eval_dispatches_an_encoder_to_the_protocol(corpus, encoder, tmp_path):
    from voicegate.train.eval import evaluate as E


    p = argparse.ArgumentParser()
    E.add_arguments(p)
    args = p.parse_args([str(encoder), "--corpus", str(corpus), "--out", str(tmp_path / "out"),
                         "--no-progress", "--bootstrap", "10"])
    assert E.run(args) == 0
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    r = result["channels"]["clean"]
    assert r["counts"]["profiles"] == len(ALLOWED + HELDOUT)
    assert {"eer", "frr_at_far", "min_dcf", "operating_point"} <= set(r)
    assert (tmp_path / "out" / "det.png").stat().st_size > 0
    assert "| clean |" in (tmp_path / "out" / "eval.md").read_text()
    # a peer's run of the same trials, attached afterwards: the comparison says "same trials"
    again = EE.attach_peer(str(tmp_path / "out"), str(tmp_path / "out" / "eval.json"))
    assert again["peer_comparison"]["channels"]["clean"]["same_trials"]
    assert "| clean | yes |" in (tmp_path / "out" / "eval.md").read_text()
    # a peer that scored other trials (the same attempts): never "yes"
    peer = json.loads((tmp_path / "out" / "eval.json").read_text())
    peer.pop("peer_comparison", None)
    peer["channels"]["clean"]["trials_sha256"] = "0" * 64
    (tmp_path / "peer.json").write_text(json.dumps(peer))
    again = EE.attach_peer(str(tmp_path / "out"), str(tmp_path / "peer.json"))
    assert again["peer_comparison"]["channels"]["clean"]["same_trials"] is False
    md = (tmp_path / "out" / "eval.md").read_text()
    assert "| clean | attempts only |" in md and "| clean | yes |" not in md  # same attempts, other trials


# --- figures on hand-made scores ---------------------------------------------------------------
POS, NEG = np.array([0.6, 0.7, 0.8, 0.9]), np.array([0.3, 0.4, 0.5, 0.65])


def test_min_dcf_and_eer_on_hand_made_scores():
    from voicegate.train.eval.openset import eer

    assert eer(POS, NEG)[0] == pytest.approx(0.25)  # at 0.65: one impostor in, one genuine out
    # best cost: threshold 0.7 (no impostor in, 1/4 genuine out): 0.01 * 0.25 / 0.01
    value, at = R.min_dcf(POS, NEG)
    assert value == pytest.approx(0.25) and at == pytest.approx(0.7)
    assert R.min_dcf(POS, NEG - 1.0)[0] == 0.0  # separated: no cost
    assert R.min_dcf(POS, NEG, p_target=0.5)[0] == pytest.approx(0.25)  # P_t 0.5: min of FAR + FRR
    assert R.min_dcf(POS, NEG, p_target=0.99)[1] == pytest.approx(0.6)  # misses cost most: accept all genuine


def test_frr_at_far_with_and_without_enough_impostors():
    r = R.frr_at_far(POS, NEG, 0.01)
    assert r["far"] == 0.0 and r["frr"] == pytest.approx(0.25)  # above 0.65, 0.6 is rejected
    assert not r["resolved"]  # 4 impostor trials cannot resolve 1 %
    neg = np.linspace(0.0, 0.5, 200)
    r = R.frr_at_far(np.array([0.4, 0.6]), neg, 0.01)  # 2 of 200 may pass: threshold above 0.4925
    assert r["resolved"] and r["far"] <= 0.01 and r["frr"] == pytest.approx(0.5)
    assert r["frr_ci95"][0] < 0.5 < r["frr_ci95"][1]


def test_speaker_bootstrap_of_a_perfect_system_is_zero():
    score = np.array([0.9, 0.1, 0.8, 0.2, 0.95, 0.05])
    genuine = np.array([True, False, True, False, True, False])
    profile = np.array([0, 0, 1, 1, 2, 2])
    assert R.bootstrap_eer(score, genuine, profile, n_boot=30) == [0.0, 0.0]
    assert R.bootstrap_eer(score, genuine, np.zeros(6, int)) is None  # one speaker: no interval


def test_a_classifier_and_an_encoder_are_scored_on_the_same_attempts(corpus, encoder, tmp_path, monkeypatch):
    """`voicegate eval CLASSIFIER ENCODER`: the study's closed-set protocol, the encoder deciding as a
    household of the enrolled allowed speakers, both models on the very same attempts."""
    import hashlib

    from test_evaluate import write_tiny

    from voicegate.train.eval import evaluate as E

    seen: dict = {}  # gate name -> digest of every attempt's spectrogram images, in order
    real = E.score_attempts

    def spy(gates, *args, **kw):
        for name, gate in gates.items():
            def predict(images, _predict=gate.predict, _name=name):
                seen.setdefault(_name, []).append(hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest())
                return _predict(images)
            gate.predict = predict
        return real(gates, *args, **kw)

    monkeypatch.setattr(E, "score_attempts", spy)
    clf = write_tiny(tmp_path / "clf-mc.onnx", corpus, "mc")
    result = E.evaluate(E.EvalConfig(models=[str(clf), str(encoder)], corpus=str(corpus), progress=False))
    names = list(result["models"])
    assert list(seen) == names and len(seen[names[0]]) > 0
    assert seen[names[0]] == seen[names[1]]  # the same attempts, image for image, in the same order
    assert names[0] == "clf-mc" and names[1].startswith("tiny-encoder (household of 2)")
    old, new = (result["models"][n]["verification"]["heldout_impostors"] for n in names)
    assert old["n_genuine"] == new["n_genuine"] > 0 and old["n_impostor"] == new["n_impostor"] > 0
    household = result["models"][names[1]]
    assert household["decisions"]["allowed"]["n"] == result["counts"]["allowed"]["attempts"]


def test_channel_names():
    from voicegate.train.data.channel import CHANNELS

    assert EE.channel_names("all") == ["clean", *CHANNELS]
    assert EE.channel_names("clean, telephone") == ["clean", "telephone"]
    for bad in ("bogus", "clean,telephon", ""):
        with pytest.raises(ValueError, match="channel"):
            EE.channel_names(bad)

"""`voicegate eval`: the attempt cutting, the rejecting-policy accounting (hand-made decision lists
with known answers), and the command end to end on the generated corpus with tiny exported models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from tiny_gate import TinyNet, make_contract

from voicegate.device.policy import DENIED, GRANTED, UNCERTAIN, Thresholds, decide, summarize
from voicegate.export import graphs
from voicegate.export.writing import write_model
from voicegate.train.eval import evaluate as E
from voicegate.train.data.corpus import load_corpus
from voicegate.train.eval.openset import far_frr
from voicegate.train.data.splits import TEST, split_recordings

G, D, U = GRANTED, DENIED, UNCERTAIN


# --- attempts -----------------------------------------------------------------------------------
def test_cut_attempts_drops_the_tail_and_keeps_a_short_recording_whole():
    sr = 16_000
    parts = E.cut_attempts(np.arange(10 * sr, dtype=np.float32), 3.0, 1.0, sr)
    assert [p.size for p in parts] == [3 * sr] * 3  # 10 s -> three 3 s attempts, 1 s tail dropped
    assert parts[1][0] == 3 * sr  # consecutive, not overlapping
    assert [p.size for p in E.cut_attempts(np.zeros(2 * sr, np.float32), 3.0, 1.0, sr)] == [2 * sr]
    assert E.cut_attempts(np.zeros(sr // 2, np.float32), 3.0, 1.0, sr) == []
    with pytest.raises(ValueError):
        E.cut_attempts(np.zeros(sr, np.float32), 0.0)


# --- retry and policy accounting ---------------------------------------------------------------
def test_after_one_retry_takes_the_same_speakers_next_attempt_cyclically():
    decisions = [U, G, D, G, U, U, U]
    groups = ["a", "a", "a", "b", "b", "b", "c"]
    final, no_retry = E.after_one_retry(decisions, groups)
    # a: U -> a's next (G); b: [G, U, U] -> U retries with U (stays), last U wraps to b's first (G)
    # c: a single attempt has no retry
    assert list(final) == [G, G, D, G, U, G, U]
    assert no_retry == 1


def test_after_one_retry_does_not_need_contiguous_groups():
    final, _ = E.after_one_retry([U, U, D, G], ["a", "b", "a", "b"])
    assert list(final) == [D, G, D, G]


def test_policy_report_counts_uncertain_as_reject_and_retries():
    pos = [G, U, D, G]  # genuine attempts of one speaker
    neg = [D, G, U, D]  # impostor attempts of one speaker
    r = E.policy_report(pos, neg, ["p"] * 4, ["n"] * 4)
    assert r["far"] == pytest.approx(1 / 4)
    assert r["frr"] == pytest.approx(2 / 4)  # the UNCERTAIN and the DENIED
    assert r["uncertain_share"] == {"genuine": 0.25, "impostor": 0.25, "all": 0.25}
    # genuine U retries with D -> still rejected; impostor U retries with D -> still rejected
    assert r["frr_after_retry"] == pytest.approx(2 / 4)
    assert r["far_after_retry"] == pytest.approx(1 / 4)
    assert r["genuine"][G] == 0.5 and r["genuine"]["n"] == 4


def test_a_retry_can_also_let_an_impostor_in():
    r = E.policy_report([G, G], [U, G, D, D], ["p", "p"], ["n1", "n1", "n2", "n2"])
    assert r["far"] == pytest.approx(1 / 4)
    assert r["far_after_retry"] == pytest.approx(2 / 4)  # n1's UNCERTAIN retries into a GRANTED
    assert r["frr"] == 0.0 and r["frr_after_retry"] == 0.0


def test_failed_attempts_are_never_access():
    r = E.policy_report([G, E.FAILED], [E.FAILED, D], ["p", "p"], ["n", "n"])
    assert r["frr"] == 0.5 and r["far"] == 0.0
    assert r["genuine"][E.FAILED] == 0.5


def test_rejecting_scores_reproduce_the_gates_granted_share():
    """Sweeping the rejecting policy's scores at the accept threshold gives exactly the GRANTED
    share of the device policy, for genuine and impostor utterances alike."""
    rng = np.random.default_rng(0)
    t = Thresholds(accept=0.6, uncertainty_limit=0.08, deny=0.2)
    stats = [summarize(rng.beta(a, 2.0, size=(2, 10))) for a in rng.uniform(0.3, 6.0, size=400)]
    p = np.array([s.p_allow for s in stats])
    u = np.array([s.std for s in stats])
    verdicts = np.array([decide(s, t, "std")[0] for s in stats], dtype=object)
    pos, neg = np.arange(200), np.arange(200, 400)
    rej = E.rejecting_scores(p, u, t.uncertainty_limit)
    far, frr = far_frr(rej[pos], rej[neg], t.accept)
    assert far == pytest.approx(np.mean(verdicts[neg] == G))
    assert frr == pytest.approx(np.mean(verdicts[pos] != G))
    assert 0 < np.mean(verdicts == U) < 1  # the example really exercises UNCERTAIN
    # and the rejecting policy can only reject more than the plain decision
    plain_far, plain_frr = far_frr(p[pos], p[neg], t.accept)
    assert far <= plain_far and frr >= plain_frr


def test_plain_report_known_answers():
    r = E.plain_report([0.9, 0.8, 0.7, 0.2], [0.1, 0.2, 0.6, 0.3, 0.4], 0.5)
    assert r["far"] == pytest.approx(1 / 5) and r["frr"] == pytest.approx(1 / 4)
    # FRR stays 1/4 from t = 0.2+ to 0.7 while FAR falls 0.4 -> 0.2 between 0.4 and 0.6: they
    # cross (linearly interpolated) at 0.25
    assert r["eer"] == pytest.approx(0.25)
    assert r["n_genuine"] == 4 and r["n_impostor"] == 5


# --- end to end -------------------------------------------------------------------------------
def write_tiny(path, corpus, method: str, bias=None, accept: float = 0.5, corpus_ref=None, fingerprint=None):
    """A tiny exported model whose contract names ``corpus`` as its training corpus (split seed 0);
    ``corpus_ref`` replaces the stored path (e.g. a name), ``fingerprint`` is stored as given."""
    contract = make_contract(method, 4 if method == "mc" else 3,
                             Thresholds(accept=accept, uncertainty_limit=0.1, deny=0.3))
    roles = json.loads((corpus / "roles.json").read_text())
    contract.corpus = {"data_config": {"corpus": corpus_ref or str(corpus), "seed": 0}, "roles": roles}
    if fingerprint is not None:
        contract.corpus["fingerprint"] = fingerprint
    if method == "mc":
        proto = graphs.export_mc(TinyNet(bias=bias).eval(), contract.samples)
    else:
        proto = graphs.export_ensemble([TinyNet(seed=i, bias=bias).eval() for i in range(contract.samples)])
    write_model(proto, contract, path)
    return path


def parse(argv):
    p = argparse.ArgumentParser()
    E.add_arguments(p)
    return p.parse_args(argv)


def test_eval_end_to_end_with_known_answers(tiny_corpus, tmp_path, capsys):
    # MC model that always says "allowed" (std 0: no uncertainty); ensemble that never does.
    mc = write_tiny(tmp_path / "m" / "yes-mc.onnx", tiny_corpus, "mc", bias=(0.0, 6.0))
    ens = write_tiny(tmp_path / "m" / "no-ensemble.onnx", tiny_corpus, "ensemble", bias=(6.0, 0.0))
    out = tmp_path / "out"
    code = E.run(parse([str(mc), str(ens), "--out", str(out), "--json", "--no-progress"]))
    assert code == 0
    result = json.loads(capsys.readouterr().out)

    # the evaluated recordings are exactly the training split's test recordings + all impostors'
    corpus = load_corpus(tiny_corpus)
    split = split_recordings(corpus.recordings, corpus.roles, seed=0)
    allowed_test = {r for r, s in split.items() if s == TEST and r.split("-")[0] in corpus.roles.allowed}
    assert result["counts"]["allowed"]["recordings"] == len(allowed_test)
    assert result["counts"]["heldout_impostors"]["recordings"] == 5 * len(corpus.roles.heldout_impostors)
    n_pos = result["counts"]["allowed"]["attempts"]
    assert n_pos >= len(allowed_test)

    yes, no = result["models"]["yes-mc"], result["models"]["no-ensemble"]
    for key in ("heldout_impostors", "not_allowed_split"):
        v = yes["verification"][key]
        assert v["n_genuine"] == n_pos
        assert v["plain"]["attempts"]["far"] == 1.0 and v["plain"]["attempts"]["frr"] == 0.0
        assert v["rejecting"]["far"] == 1.0 and v["rejecting"]["frr"] == 0.0
        assert v["rejecting"]["uncertain_share"]["all"] == 0.0
        w = no["verification"][key]
        assert w["plain"]["attempts"]["far"] == 0.0 and w["plain"]["attempts"]["frr"] == 1.0
        assert w["rejecting"]["far"] == 0.0 and w["rejecting"]["frr"] == 1.0
    # closed set: "always allowed" is right exactly on the allowed share
    cs = yes["closed_set"]["attempts"]
    assert cs["accuracy"] == pytest.approx(cs["n_allowed"] / cs["n"])
    assert cs["confusion_matrix"] == [[0, cs["n_not_allowed"]], [0, cs["n_allowed"]]]
    assert no["closed_set"]["windows"]["confusion_matrix"][1][1] == 0
    assert yes["decisions"]["heldout_impostors"][GRANTED] == 1.0

    for name in ("eval.json", "eval.md", "det_heldout_impostors.png", "det_not_allowed_split.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "eval.json").read_text())["counts"] == result["counts"]
    assert "| yes-mc |" in (out / "eval.md").read_text()

    # non-speech attempts (issue 10): a model that says "allowed" to anything grants every one of
    # them when the speech detector is bypassed, and none through the device path
    ns = result["nonspeech"]
    assert ns["protocol"]["attempts"] == ns["models"]["yes-mc"]["n"] > 0
    assert ns["models"]["yes-mc"]["model_only"]["far"]["k"] == ns["models"]["yes-mc"]["n"]
    assert ns["models"]["yes-mc"]["device"]["far"]["k"] == 0
    assert ns["models"]["no-ensemble"]["model_only"]["far"]["k"] == 0
    assert "Non-speech false accepts" in (out / "eval.md").read_text()


def _fingerprint_of(corpus) -> dict:
    from voicegate.train.data.config import PrepareConfig

    _, _, fp = E.evaluation_recordings(PrepareConfig(corpus=str(corpus)), {}, "test")
    return fp


def test_eval_refuses_a_corpus_that_changed_since_training(tiny_corpus, tmp_path, capsys):
    """Issue 14: a corpus whose recordings differ from the contract's fingerprint would move
    recordings between splits; eval refuses, or with --allow-corpus-change warns and records it."""
    import shutil

    changed = tmp_path / tiny_corpus.name
    shutil.copytree(tiny_corpus, changed)
    lines = (changed / "manifest.csv").read_text().splitlines()
    (changed / "manifest.csv").write_text("\n".join(lines[:-1]) + "\n")  # one recording fewer
    mc = write_tiny(tmp_path / "m" / "fp-mc.onnx", tiny_corpus, "mc", fingerprint=_fingerprint_of(tiny_corpus))
    assert E.run(parse([str(mc), "--no-progress", "--no-nonspeech"])) == 0  # the training corpus: fine
    capsys.readouterr()
    assert E.run(parse([str(mc), "--corpus", str(changed), "--no-progress", "--no-nonspeech"])) == 2  # a corpus it cannot use
    err = capsys.readouterr().err.strip()
    assert "differs from the one the model was trained on" in err and "\n" not in err
    assert E.run(parse([str(mc), "--corpus", str(changed), "--no-progress", "--no-nonspeech", "--json",
                        "--allow-corpus-change"])) == 0
    fp = json.loads(capsys.readouterr().out)["protocol"]["corpus_fingerprint"]["per_model"]["fp-mc"]
    assert fp["checked"] and not fp["same"] and any("manifest.csv" in d for d in fp["differences"])


def test_eval_finds_a_corpus_named_in_the_contract(tiny_corpus, tmp_path, capsys, monkeypatch):
    """Issue 14: the contract names the corpus; --corpus or $VOICEGATE_SHARED_DATA locate it."""
    mc = write_tiny(tmp_path / "m" / "named-mc.onnx", tiny_corpus, "mc", corpus_ref=tiny_corpus.name)
    monkeypatch.delenv("VOICEGATE_SHARED_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert E.run(parse([str(mc), "--no-progress", "--no-nonspeech"])) == 2  # a corpus it cannot find
    err = capsys.readouterr().err
    assert "VOICEGATE_SHARED_DATA" in err and "--corpus" in err and err.count("\n") == 1
    monkeypatch.setenv("VOICEGATE_SHARED_DATA", str(tiny_corpus.parent))
    assert E.run(parse([str(mc), "--no-progress", "--no-nonspeech", "--json"])) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["protocol"]["corpus"] == tiny_corpus.name and result["nonspeech"] is None


def test_eval_reports_a_missing_corpus_in_one_line(tiny_corpus, tmp_path, capsys):
    mc = write_tiny(tmp_path / "m" / "x-mc.onnx", tiny_corpus, "mc")
    code = E.run(parse([str(mc), "--corpus", str(tmp_path / "nowhere"), "--no-progress"]))
    assert code == 2  # the training side's usage code, as prepare and train
    err = capsys.readouterr().err.strip()
    assert err.startswith("voicegate eval:") and "nowhere" in err and "\n" not in err


def test_wilson_interval_known_values():
    lo, hi = E.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)  # 0 of 10 is still up to ~28 %
    lo, hi = E.wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    r = E.policy_report([G] * 9 + [U], [D] * 10, ["p"] * 10, ["n"] * 10)
    assert r["frr"] == pytest.approx(0.1) and r["frr_ci95"][0] < 0.1 < r["frr_ci95"][1]
    assert r["far_ci95"] == [0.0, pytest.approx(0.2775, abs=1e-4)]


def test_the_shared_corpora_default_to_beside_the_checkout(tmp_path, monkeypatch):
    """One lookup for the tests, benchmarks, make_demo and eval: $VOICEGATE_SHARED_DATA, else
    ../shared/data beside the repository; a contract's corpus name resolves there too."""
    from voicegate.train.data.fingerprint import resolve_corpus, shared_data_dir

    monkeypatch.delenv("VOICEGATE_SHARED_DATA", raising=False)
    repo = Path(__file__).resolve().parents[1]
    assert shared_data_dir() == repo.parent / "shared" / "data"
    (tmp_path / "somecorpus").mkdir()
    monkeypatch.setenv("VOICEGATE_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    assert resolve_corpus("somecorpus") == tmp_path / "somecorpus"
    assert resolve_corpus("/elsewhere/machine/somecorpus") == tmp_path / "somecorpus"
    # never the current folder: a corpus of the same name there is not it
    (tmp_path / "cwd" / "othercorpus").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(FileNotFoundError, match="othercorpus"):
        resolve_corpus("othercorpus")


def test_eval_exit_codes_name_the_problem(tiny_corpus, tmp_path, capsys):
    """5 for a modified model (as on the device), 2 for an option it cannot use, 1 otherwise."""
    mc = write_tiny(tmp_path / "m" / "code-mc.onnx", tiny_corpus, "mc")
    from voicegate.device.cli import main

    assert main(["eval", str(mc), "--corpus", str(tiny_corpus), "--attempt-seconds", "0"]) == 2
    data = bytearray(mc.read_bytes())
    data[-10] ^= 0xFF
    mc.write_bytes(bytes(data))  # its sha256 sidecar no longer matches
    assert E.run(parse([str(mc), "--corpus", str(tiny_corpus), "--no-progress"])) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert "--attempt-seconds: must be > 0" in err[-2] and err[-1].startswith("voicegate eval: ")


@pytest.mark.parametrize("option", [["--channels", "all"], ["--halves"], ["--enrol-seconds", "10"],
                                    ["--peer", "x.json"], ["--bootstrap", "5"]])
def test_a_classifier_eval_refuses_encoder_only_options(tiny_corpus, tmp_path, capsys, option):
    mc = write_tiny(tmp_path / "m" / "opt-mc.onnx", tiny_corpus, "mc")
    assert E.run(parse([str(mc), "--corpus", str(tiny_corpus), "--no-progress", *option])) == 2
    assert f"{option[0]} applies to encoder models" in capsys.readouterr().err


def test_eval_names_a_peer_file_that_is_not_json(tmp_path, capsys):
    from voicegate.train.eval import encoder_eval

    peer = tmp_path / "peer.json"
    peer.write_text("not json")
    args = parse([str(tmp_path / "enc.onnx"), "--corpus", str(tmp_path), "--peer", str(peer)])
    assert encoder_eval.run(args) == 2
    err = capsys.readouterr().err
    assert "peer.json: not a readable eval.json" in err and err.count("\n") == 1

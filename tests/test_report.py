"""`voicegate report {eda,uncertainty,interpret,params}` on a tiny generated corpus and a tiny run."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from voicegate.train.reports import report
from voicegate.train.models.classifier import ModelConfig, build_model

TINY = ModelConfig(arch="compact", widths=(4, 4, 8, 8), embed_dim=16, dropout=0.3)
MEMBERS = 2
EPOCHS = 2


@pytest.fixture(scope="session")
def tiny_run(tiny_corpus, tmp_path_factory):
    """(corpus, prepared corpus, run folder): the tiny corpus prepared into a cache, and a 2-member
    run of a tiny compact CNN trained for 2 epochs with per-epoch checkpoints. The run records the
    data config, so the report commands find the cache through it."""
    from voicegate.train.data.prepare import PrepareConfig, prepare_corpus
    from voicegate.train.models.trainer import TrainConfig, train_run

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("tiny_run")
    cfg = PrepareConfig(corpus=str(tiny_corpus), cache_dir=str(base / "cache"), progress=False,
                        aug_copies=1, nonspeech_windows=0)
    prepared = prepare_corpus(cfg)
    tcfg = TrainConfig(epochs=EPOCHS, batch_size=16, lr=3e-3, patience=0, seed=0, ensemble=MEMBERS,
                       device="cpu", threads=1, save_every_epoch=True)
    run_dir = base / "run"
    train_run(prepared, run_dir, TINY, tcfg, data_config=cfg.to_dict())
    return tiny_corpus, prepared, run_dir


def run_report(argv: list) -> dict:
    """Parse ``voicegate report ARGV`` with the command's own parser, run it, return summary.json."""
    parser = argparse.ArgumentParser(prog="voicegate report")
    report.add_arguments(parser)
    args = parser.parse_args(argv)
    assert report.run(args) == 0
    out = Path(args.out)
    assert (out / "summary.md").is_file()
    summary = json.loads((out / "summary.json").read_text())
    for name in summary["figures"]:
        assert (out / name).stat().st_size > 1000, name
        assert f"]({name})" in (out / "summary.md").read_text()
    return summary


def all_numbers(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from all_numbers(v)
    elif isinstance(x, list):
        for v in x:
            yield from all_numbers(v)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield x


def test_eda(tiny_run, tmp_path):
    corpus, prepared, _ = tiny_run
    s = run_report(["eda", "--corpus", str(corpus), "--cache", str(prepared.root), "--out", str(tmp_path),
                    "--f0-seconds", "2.0"])
    assert {"recordings_per_speaker.png", "durations.png", "intensity_per_frequency.png", "f0_overlay.png",
            "f0_per_speaker.png", "mel_vs_linear.png", "female_vs_male.png"} <= set(s["figures"])
    assert all(math.isfinite(v) for v in all_numbers(s))
    assert s["n_speakers"] == 6 and s["n_recordings"] == 30
    assert sum(r["recordings"] for r in s["roles"].values()) == 30
    for spk in s["speakers"].values():
        assert 0 < spk["seconds_trimmed"] <= spk["seconds_raw"]
        assert spk["f0_median_hz"] is not None and 60 <= spk["f0_median_hz"] <= 400, spk
    # the synthetic voices are one espeak recording played faster (f1) or slower (m1): the female
    # voice's F0 comes out clearly higher (synth.py scales the F0 by sqrt(VOICES F0 / 100 Hz))
    f1, m1 = (s["speakers"][k]["f0_median_hz"] for k in ("f1", "m1"))
    assert f1 / m1 >= 1.2, (f1, m1)
    # same trimmer as preparation: the per-speaker trimmed totals agree with the prepare report
    assert s["trimming_check_vs_prepare"]["speakers_compared"] == 6
    assert s["trimming_check_vs_prepare"]["max_abs_diff_seconds"] < 0.05
    assert "tiny" in (tmp_path / "summary.md").read_text()


def implied_verdict(metric: str, row: dict) -> str:
    """What MC is, from a comparison row's numbers (the rule in uncertainty.compare's docstring)."""
    from voicegate.train.reports import uncertainty as U

    a, b = row["mc"], row["ensemble"]
    relative = metric in ("nll", "brier", "aurc")
    margin = max(U.REL_MARGIN * abs(b), U.REL_FLOOR) if relative else U.ABS_MARGIN
    ci = row.get("ci95_ensemble_minus_mc")
    if abs(a - b) <= margin:
        return "comparable"
    if ci and ci[0] <= 0 <= ci[1]:
        return "not distinguishable"
    higher_better = metric in U.HIGHER_BETTER
    return "better" if (a > b) == higher_better else "worse"


def test_reports_use_the_one_jsonable():
    from voicegate.device import audit

    assert report.jsonable is audit.jsonable
    payload = {"a": np.float32(0.5), "b": np.arange(3), "c": [float("nan"), np.inf], "p": Path("x/y")}
    assert audit.jsonable(payload) == {"a": 0.5, "b": [0, 1, 2], "c": [None, None], "p": "x/y"}


def test_mc_vs_ensemble_verdicts_on_known_numbers():
    from voicegate.train.reports import uncertainty as U

    def compare(mc: dict, ens: dict, boot=None) -> dict:  # the other metrics absent (None)
        blank = dict.fromkeys((*U.HIGHER_BETTER, *U.LOWER_BETTER))
        return U.compare({**blank, **mc}, {**blank, **ens}, boot)

    def one(mc_acc, ens_acc, ci=None):
        boot = {"accuracy": {"low": ci[0], "high": ci[1], "resamples": 50}} if ci else None
        return compare({"accuracy": mc_acc}, {"accuracy": ens_acc}, boot)["accuracy"]["mc_is"]

    assert one(0.90, 0.905) == "comparable"  # within the 0.01 margin
    assert one(0.90, 0.95) == "worse" and one(0.95, 0.90) == "better"
    assert one(0.90, 0.95, ci=(-0.01, 0.08)) == "not distinguishable"  # the interval holds 0
    assert one(0.90, 0.95, ci=(0.02, 0.08)) == "worse"
    brier = compare({"brier": 0.100}, {"brier": 0.105})["brier"]["mc_is"]  # relative: 10 % of 0.105
    assert brier == "comparable" and compare({"brier": 0.08}, {"brier": 0.10})["brier"]["mc_is"] == "better"


def test_uncertainty(tiny_run, tmp_path):
    corpus, prepared, run_dir = tiny_run
    s = run_report(["uncertainty", "--corpus", str(corpus), "--run", str(run_dir), "--out", str(tmp_path),
                    "--threads", "1", "--timing-batch", "4", "--bootstrap", "50"])
    methods = s["methods"]
    assert list(methods) == ["single", "MC-2", "MC-20", "MC-50", f"ensemble-{MEMBERS}"]
    n_test = len(prepared.indices("test", aug=False))
    for name, m in methods.items():
        assert m["n"] == n_test
        for key in ("accuracy", "f1_weighted", "ece", "brier"):
            assert 0.0 <= m[key] <= 1.0, (name, key)
        assert m["nll"] >= 0 and m["ms_per_window"] > 0 and m["size_mb"] > 0
        assert m["open_set"]["n_impostor"] == len(prepared.indices("heldout", aug=False))
    assert methods["MC-50"]["samples"] == 50
    # the deterministic and ensemble rows agree with what the trainer measured on the same windows
    member0 = json.loads((run_dir / "member0" / "metrics.json").read_text())
    assert methods["single"]["accuracy"] == pytest.approx(member0["test"]["windows"]["accuracy"])
    ens = json.loads((run_dir / "ensemble.json").read_text())
    assert methods[f"ensemble-{MEMBERS}"]["accuracy"] == pytest.approx(ens["mean_of_members"]["test"]["windows"]["accuracy"])
    # the ensemble holds every member; MC dropout one
    assert methods[f"ensemble-{MEMBERS}"]["size_mb"] == pytest.approx(MEMBERS * methods["MC-50"]["size_mb"])
    assert set(s["winners"]) >= {"accuracy", "ece", "nll", "brier"}
    cmp = s["mc_vs_ensemble"]
    assert cmp["accuracy"]["mc"] == methods["MC-50"]["accuracy"]
    assert set(cmp) >= {"accuracy", "ece", "nll", "brier"}
    for metric, row in cmp.items():  # each verdict is the one this run's own numbers imply
        assert row["mc_is"] == implied_verdict(metric, row), (metric, row)
    low, high = cmp["brier"]["ci95_ensemble_minus_mc"]
    assert low <= high
    # the door setting: the test windows and the held-out impostors together
    door = s["settings"]["test + heldout"]
    n_heldout = len(prepared.indices("heldout", aug=False))
    assert door["n_windows"] == n_test + n_heldout
    for name, m in door["methods"].items():
        # impostors are all "not allowed": the errors are the closed-set errors plus accepted impostors
        accepted = round(methods[name]["open_set"]["impostor_accept_rate"] * n_heldout)
        assert m["misclassified"] == methods[name]["misclassified"] + accepted
    assert {"reliability_door.png", "risk_coverage_door.png"} <= set(s["figures"])
    md = (tmp_path / "summary.md").read_text()
    worse = any(row["mc_is"] == "worse" for row in cmp.values())
    assert "| MC-50 |" in md
    assert ("is **not** comparable to" in md) == worse and ("is **comparable** to" in md) == (not worse)


def test_interpret(tiny_run, tmp_path):
    corpus, prepared, run_dir = tiny_run
    s = run_report(["interpret", "--corpus", str(corpus), "--run", str(run_dir), "--out", str(tmp_path)])
    assert {"conv1_filters.png", "feature_maps_allowed.png", "feature_maps_not_allowed.png", "gradcam.png",
            "saliency_per_frequency.png"} <= set(s["figures"])
    for kind, per_class in s["band_shares"].items():
        for cls, shares in per_class.items():
            values = list(shares.values())
            # all None: no positive evidence at all (possible for an undertrained Grad-CAM)
            assert values == [None] * len(values) or sum(values) == pytest.approx(1.0), (kind, cls)
        assert all(v is not None for v in s["band_shares"]["intensity"]["allowed"].values())
    # densities are relative to a flat profile: weighted by the rows in each band they average to 1
    freqs = np.array(s["frequencies_hz"])
    rows_in = [((freqs >= lo) & (freqs < hi)).sum() for lo, hi in report.FREQUENCY_BANDS]
    density = list(s["band_density"]["intensity"]["allowed"].values())
    assert np.dot(density, rows_in) / freqs.size == pytest.approx(1.0)
    assert sum(s["n_windows"].values()) == len(prepared.indices("test", aug=False))
    member0 = json.loads((run_dir / "member0" / "metrics.json").read_text())
    assert s["accuracy"] == pytest.approx(member0["test"]["windows"]["accuracy"])


def test_params(tiny_run, tmp_path):
    corpus, prepared, run_dir = tiny_run
    s = run_report(["params", "--corpus", str(corpus), "--run", str(run_dir), "--out", str(tmp_path)])
    assert {"distance_from_init.png", "reinit_robustness.png"} <= set(s["figures"])
    assert s["epochs"] == list(range(EPOCHS + 1))
    assert list(s["layers"]) == ["conv1", "conv2", "conv3", "conv4", "fc1", "head"]
    trained = str(s["trained_epoch"])
    for layer, d in s["relative_distance"].items():
        assert d[0] == 0.0 and all(v >= 0 for v in d)
        row = s["robustness"][layer]
        # resetting a layer to the weights it already has changes nothing
        assert row[trained] == pytest.approx(s["baseline"])
        assert set(row) == {"random", *map(str, s["reset_epochs"])}
        assert all(0 <= v <= 1 for v in all_numbers(row))


def test_rerandomised_layers_are_not_the_initialisation(tiny_run):
    from voicegate.train.models.classifier import load_checkpoint
    from voicegate.train.reports.params import RERANDOM_SEED, layer_groups, load_state, variant

    _, _, run_dir = tiny_run
    trained, _ = load_checkpoint(run_dir / "member0" / "best.pt")
    init = load_state(run_dir / "member0" / "epochs" / "epoch000.pt")
    name, paths = layer_groups(trained)[0]
    fresh = variant(trained, paths, None, RERANDOM_SEED).state_dict()
    key = paths[0] + ".weight"
    assert not torch.equal(fresh[key], init[key])
    assert not torch.equal(fresh[key], trained.state_dict()[key])
    reset = variant(trained, paths, init, 0).state_dict()
    assert torch.equal(reset[key], init[key])


# --- units -------------------------------------------------------------------------------------
def test_mc_head_without_dropout_is_the_plain_head():
    from voicegate.train.reports.uncertainty import head_probs, mc_head_samples

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="compact", widths=(4, 4, 8, 8), embed_dim=16, dropout=0.0)).eval()
    feats = torch.rand(5, 16)
    s = mc_head_samples(model, feats, 3, torch.Generator().manual_seed(0))
    assert s.shape == (3, 5)
    assert np.allclose(s, head_probs(model, feats)[None], atol=1e-6)
    model.head[0].p = 0.5
    s = mc_head_samples(model, feats, 20, torch.Generator().manual_seed(0))
    assert s.std(axis=0).max() > 0  # dropout live: the samples differ


def test_layer_groups_pair_each_conv_with_its_batchnorm():
    from voicegate.train.reports.params import layer_groups

    compact = layer_groups(build_model(TINY))
    assert [n for n, _ in compact] == ["conv1", "conv2", "conv3", "conv4", "fc1", "head"]
    assert compact[0][1] == ["trunk.0", "trunk.1"]  # conv + its BatchNorm
    seed = layer_groups(build_model(ModelConfig(arch="seed", widths=(2, 2, 2), embed_dim=4)))
    assert [n for n, _ in seed] == ["conv1", "conv2", "conv3", "fc1", "head"]
    assert all(len(p) == 1 for _, p in seed)  # no BatchNorm in the study's model


def test_gradcam_shapes_and_range():
    from voicegate.train.reports.interpret import explain

    torch.manual_seed(0)
    model = build_model(TINY).eval()
    x = torch.rand(3, 1, 224, 224)
    cam, sal, p = explain(model, x, torch.tensor([0, 1, 1]))
    assert cam.shape == (3, 224, 224) and sal.shape == (3, 224, 224) and p.shape == (3,)
    assert cam.min() >= 0 and cam.max() <= 1 + 1e-6
    assert np.isfinite(sal).all()


def test_summary_json_has_no_nan(tmp_path):
    r = report.Report(name="x", corpus="c", out=tmp_path)
    r.data["v"] = {"a": float("nan"), "b": np.float32(1.5), "c": np.arange(2)}
    r.table(["k", "v"], [["a", float("nan")], ["b", None]])
    r.write()
    assert json.loads((tmp_path / "summary.json").read_text())["v"] == {"a": None, "b": 1.5, "c": [0, 1]}
    assert "| a | n/a |" in (tmp_path / "summary.md").read_text()


def test_building_the_parser_imports_nothing_heavy():
    code = (
        "import sys, argparse\n"
        "from voicegate.train.reports import report\n"
        "report.add_arguments(argparse.ArgumentParser())\n"
        "heavy = [m for m in ('torch', 'matplotlib', 'librosa', 'sklearn') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_eda_intensity_leaves_out_the_non_speech_windows():
    """The preparation's pure noise windows (role nonspeech) are nobody's voice: they must not be
    averaged into a speaker role's spectrum, nor counted as speakers."""
    from types import SimpleNamespace

    from voicegate.train.data.build import NONSPEECH_ROLE
    from voicegate.train.reports.eda import intensity_profiles

    images = np.zeros((4, 224, 224), np.uint8)
    images[3] = 255  # the noise window is bright everywhere
    index = SimpleNamespace(aug=np.array([0, 0, 1, 0]), role=np.array(["allowed", "allowed", "allowed", NONSPEECH_ROLE]),
                            speaker=np.array(["a", "b", "a", f"{NONSPEECH_ROLE}:white"]))
    profiles, counts = intensity_profiles(SimpleNamespace(index=index, images=images))
    assert counts == {"a": 1, "b": 1} and set(profiles) == {"a", "b"}
    assert all(float(v.max()) == 0.0 for v in profiles.values())

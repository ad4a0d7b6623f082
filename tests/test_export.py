"""ONNX export: live MC dropout under onnxruntime's defaults, parity with torch, the full export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from fake_corpus import fake_corpus
from tiny_gate import TinyNet

from voicegate.device.contract import INPUT_NAME, OUTPUT_NAME, ModelContract
from voicegate.device.features import feature_contract
from voicegate.device.policy import GRANTED
from voicegate.device.runtime import Gate, run_session
from voicegate.device.model_files import file_sha256
from voicegate.export import graphs
from voicegate.export.onnx_export import (
    ExportConfig,
    MC_PARITY_ROUNDS,
    ExportError,
    check_ensemble_parity,
    check_mc_parity,
    validation_utterances,
)
from voicegate.train.models.classifier import ModelConfig, build_model, save_checkpoint
from voicegate.train.data.cache import CACHE_FORMAT
from voicegate.train.data.fingerprint import absolute_paths
from voicegate.train.models.trainer import RUN_FORMAT

torch.set_num_threads(1)


def tiny_compact(seed: int):
    """A real CompactCNN (BatchNorm, time-stats pooling) at toy widths, with non-trivial BN stats."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch="compact", widths=(4, 4, 4, 4), embed_dim=8))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():
        model.head[1].weight.mul_(20.0)  # spread the outputs so parity is not trivially ~0.5
    return model.eval()


@pytest.fixture(scope="module")
def windows():
    corpus = fake_corpus()
    rows = corpus.indices("val", aug=False)[:6]
    return np.asarray(corpus.images[rows], np.float32)


def default_session(proto) -> ort.InferenceSession:
    """onnxruntime with NO options at all: its default graph optimisation level."""
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def test_mc_samples_vary_under_default_ort_options(windows):
    proto = graphs.export_mc(tiny_compact(0), samples=16)
    sess = default_session(proto)
    feed = {INPUT_NAME: windows[:, None]}
    a = sess.run([OUTPUT_NAME], feed)[0]
    b = sess.run([OUTPUT_NAME], feed)[0]
    assert a.shape == (len(windows), 16)
    assert (a.std(axis=1) > 1e-4).all(), "the T samples of a window must differ"
    assert np.abs(a - b).max() > 1e-4, "two runs must draw fresh masks"
    assert ((a >= 0) & (a <= 1)).all()


def test_naive_dropout_export_is_the_trap_we_avoid(windows):
    """Why the masks come from a random op: ORT's optimiser deletes Dropout nodes."""
    model = tiny_compact(0)

    class Naive(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            f = self.m.trunk(x).unsqueeze(1).expand(-1, 8, -1)
            return torch.softmax(self.m.head[1](torch.nn.functional.dropout(f, 0.3, True)), -1)[..., 1]

    import io
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Naive().train(), (torch.rand(2, 1, 224, 224),), buf, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=17, dynamo=False,
                          training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    assert "Dropout" in {n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node}
    out = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"]).run(
        None, {INPUT_NAME: windows[:2, None]})[0]
    assert out.std(axis=1).max() < 1e-6  # the samples collapse: uncertainty would read 0


def test_mc_with_dropout_off_matches_torch(windows):
    model = tiny_compact(1)
    proto = graphs.export_mc(model, samples=8)
    off = run_session(default_session(graphs.with_dropout_p(proto, 0.0)), windows)
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(windows[:, None])), -1)[:, 1].numpy()
    assert np.abs(off - ref[:, None]).max() < 1e-4
    assert ref.std() > 1e-3  # the comparison is not between constants


def test_mc_parity_check_passes_and_reports(windows):
    model = tiny_compact(2)
    proto = graphs.export_mc(model, samples=50)
    report = check_mc_parity(proto, model, windows, 50)
    assert report["max_abs_dropout_off"] < 1e-4
    assert report["onnx_sample_std_max"] > 0
    assert report["mc_samples_compared"] == 50 * MC_PARITY_ROUNDS


def test_mc_masks_are_shared_by_the_windows_of_a_batch(windows):
    proto = graphs.export_mc(TinyNet(), samples=12)
    same = np.repeat(windows[:1, None], 3, axis=0)
    out = run_session(default_session(proto), same)
    assert np.abs(out[0] - out[1]).max() == 0 and np.abs(out[0] - out[2]).max() == 0
    assert out[0].std() > 1e-4


def test_ensemble_parity_with_torch(windows):
    models = [tiny_compact(s) for s in range(3)]
    proto = graphs.export_ensemble(models)
    got = run_session(default_session(proto), windows)
    with torch.no_grad():
        x = torch.from_numpy(windows[:, None])
        ref = np.stack([torch.softmax(m(x), -1)[:, 1].numpy() for m in models], axis=1)
    assert got.shape == (len(windows), 3)
    assert np.abs(got - ref).max() < 1e-4
    assert check_ensemble_parity(proto, models, windows)["max_abs"] < 1e-4


def test_parity_check_fails_loudly(windows):
    models = [tiny_compact(s) for s in range(2)]
    proto = graphs.export_ensemble(models)
    with pytest.raises(ExportError, match="parity"):
        check_ensemble_parity(proto, [models[0], tiny_compact(7)], windows)
    mc = graphs.export_mc(models[0], samples=8)
    with pytest.raises(ExportError, match="parity"):
        check_mc_parity(mc, tiny_compact(7), windows, 8)


def test_fp16_weights_halve_the_file_and_keep_the_outputs(windows):
    from voicegate.export.onnx_export import check_fp16

    model = tiny_compact(3)
    p32 = graphs.export_mc(model, samples=8)
    p16 = graphs.store_weights_fp16(p32, min_elements=16)
    halves = [i for i in p16.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert halves and all(i.name != graphs.DROPOUT_P_NAME for i in halves)
    assert len(p16.SerializeToString()) < len(p32.SerializeToString())
    assert check_fp16(p32, p16, windows) < 5e-3
    out = run_session(default_session(p16), windows)
    assert out.std(axis=1).min() > 0  # still live MC dropout


def test_mc_export_refuses_a_model_without_dropout():
    with pytest.raises(ValueError, match="dropout"):
        graphs.export_mc(TinyNet(p=0.0), samples=4)


def test_validation_utterances_never_include_heldout():
    corpus = fake_corpus(windows_per_recording=3)
    utts = validation_utterances(corpus)
    recs = {r for r, _, _ in utts}
    assert recs == {f"{s}-3" for s in ("a1", "a2", "n1", "n2", "n3")}  # val recordings only
    assert all(im.shape == (3, 224, 224) and im.dtype == np.float32 for _, _, im in utts)
    assert len(validation_utterances(corpus, utterance_windows=2)) == 10  # 3 windows -> 2 + 1
    corpus.index.split[corpus.index.role == "heldout_impostors"] = "val"  # a corrupted split
    with pytest.raises(ExportError, match="held-out impostors"):
        validation_utterances(corpus)


def write_fake_cache(path, corpus) -> None:
    """A prepared-corpus cache on disk (what `voicegate prepare` writes) from the fake corpus."""
    path.mkdir()
    np.save(path / "images.npy", np.asarray(corpus.images))
    corpus.index.to_csv(path / "index.csv")
    meta = {"format": CACHE_FORMAT, "feature_contract": feature_contract(), **corpus.meta}
    (path / "meta.json").write_text(json.dumps(meta))
    (path / "report.json").write_text("{}")


def write_run(run_dir, models) -> None:
    cfg = ModelConfig(arch="compact", widths=(4, 4, 4, 4), embed_dim=8)
    # the training machine's paths, as a real run records them
    data_config = {"corpus": "/home/trainer/corpora/fake", "cache_dir": "/var/cache/voicegate/fake-1234",
                   "noise_dir": "/home/trainer/corpora/noise"}
    for i, m in enumerate(models):
        save_checkpoint(run_dir / f"member{i}" / "best.pt", m, cfg,
                        {"data_config": data_config, "roles": {"allowed": ["a1", "a2"]}})
    run_info = {"format": RUN_FORMAT, "arch": "compact", "checkpoint": "best.pt",
                "members": [f"member{i}" for i in range(len(models))]}
    (run_dir / "run.json").write_text(json.dumps(run_info))


def test_export_command_end_to_end(tmp_path, capsys):
    from voicegate.device.cli import main

    corpus = fake_corpus()
    write_fake_cache(tmp_path / "cache", corpus)
    write_run(tmp_path / "run", [tiny_compact(s) for s in range(2)])
    out = tmp_path / "models" / "gate.onnx"
    rc = main(["export", str(tmp_path / "run"), "--out", str(out), "--method", "both", "--weights", "fp16",
               "--samples", "10", "--cache", str(tmp_path / "cache"), "--target-far", "0.0"])
    assert rc == 0, capsys.readouterr()
    manifest = json.loads((tmp_path / "models" / "manifest.json").read_text())
    for method, samples in (("mc", 10), ("ensemble", 2)):
        path = tmp_path / "models" / f"gate-{method}.onnx"
        digest = file_sha256(path)
        assert manifest[path.name] == digest
        assert (tmp_path / "models" / f"{path.name}.sha256").read_text().split()[0] == digest
        gate = Gate.load(path)
        c = gate.contract
        assert (c.method, c.samples, c.features) == (method, samples, feature_contract())
        assert c.corpus["validation_utterances"] == 5 and c.corpus["roles"]["allowed"] == ["a1", "a2"]
        # issue 14: no machine path in a shipped artefact; the corpus by name, with its fingerprint
        assert absolute_paths(c.to_dict()) == []
        assert c.corpus["name"] == "fake" == c.corpus["data_config"]["corpus"]
        assert c.corpus["data_config"]["cache_dir"] is None and c.corpus["data_config"]["noise_dir"] == "noise"
        fp = c.corpus["fingerprint"]
        assert fp["recordings"]["val"] == sorted(f"{s}-3" for s in ("a1", "a2", "n1", "n2", "n3"))
        assert fp["recordings"]["heldout"] == [f"h1-{r}" for r in range(5)] and set(fp["recordings_sha256"]) == set(fp["recordings"])
        val = c.metrics["validation"]
        # target FAR 0 on validation: no not-allowed validation utterance is granted
        assert val["policy"]["not_allowed"][GRANTED] == 0.0 and val["accept_only"]["far"] == 0.0
        assert 0.0 <= c.thresholds.deny <= c.thresholds.accept <= 1.0
        assert c.weights_sha256 and c.created_at and c.extra["export_config"]["weights"] == "fp16"
        assert c.metrics["parity"]["fp16_max_abs_vs_fp32"] < 5e-3
        assert path.stat().st_size < 200_000
    assert ModelContract.from_metadata(
        {p.key: p.value for p in onnx.load(str(tmp_path / "models" / "gate-mc.onnx")).metadata_props}
    ).method == "mc"


@pytest.mark.parametrize("option, said", [(["--method", "ensemble"], ">= 2 members"),
                                          (["--method", "both"], ">= 2 members"),
                                          (["--member", "5"], "--member 5: the run has members 0..0")])
def test_export_of_members_the_run_does_not_have_is_a_usage_error(tmp_path, capsys, option, said):
    from voicegate.device.cli import main

    write_fake_cache(tmp_path / "cache", fake_corpus())
    write_run(tmp_path / "run", [tiny_compact(0)])
    rc = main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.onnx"),
               "--cache", str(tmp_path / "cache"), *option])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and said in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("option", [["--backend", "wccn"], ["--score-norm", "as-norm"]])
def test_encoder_only_options_on_a_classifier_run_are_refused(tmp_path, capsys, option):
    from voicegate.device.cli import main

    write_fake_cache(tmp_path / "cache", fake_corpus())
    write_run(tmp_path / "run", [tiny_compact(0)])
    rc = main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.onnx"), "--cache",
               str(tmp_path / "cache"), *option])
    assert rc == 2 and f"{option[0]} applies to encoder runs" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_an_out_that_is_not_onnx_is_a_usage_error_before_any_work(tmp_path, capsys):
    from voicegate.device.cli import main

    assert main(["export", str(tmp_path / "no-run-here"), "--out", str(tmp_path / "m.bin")]) == 2
    assert "--out must name a .onnx file" in capsys.readouterr().err


def test_export_refuses_windows_another_featurizer_selected(tmp_path, capsys):
    """Thresholds chosen on windows the device would not select (another speech-detector padding)
    would not hold at the door: the export stops with one line."""
    from voicegate.device.cli import main

    write_fake_cache(tmp_path / "cache", fake_corpus())
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    meta["feature_contract"]["speech_detector"]["pad_s"] += 0.25
    (tmp_path / "cache" / "meta.json").write_text(json.dumps(meta))
    write_run(tmp_path / "run", [tiny_compact(0)])
    rc = main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.onnx"), "--method", "mc",
               "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert rc == 2 and "another featurizer" in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.onnx").exists()


SHIPPED = Path(__file__).resolve().parents[1] / "models"


@pytest.mark.parametrize("path", sorted(SHIPPED.glob("*.onnx")), ids=lambda p: p.name)
def test_no_shipped_model_carries_a_machine_path(path):
    """Issue 14: every shipped model's metadata (contract and any other key) holds no absolute
    path of the machine it was made on (the corpus is named, and found with --corpus or
    $VOICEGATE_SHARED_DATA)."""
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    for key, value in meta.items():
        try:
            value = json.loads(value)
        except ValueError:
            pass
        assert absolute_paths(value, key) == [], f"{path.name}: {absolute_paths(value, key)[:3]}"


def test_absolute_paths_finds_posix_windows_and_home_paths():
    found = absolute_paths({"a": "/work/x", "b": ["C:\\data", {"c": "~/corpus"}], "d": "librispeech", "e": 3})
    assert [f.split(":")[0] for f in found] == [".a", ".b[0]", ".b[1].c"]
    assert absolute_paths({"corpus": "librispeech", "noise_dir": "auto", "ratio": "1/2"}) == []


def test_export_config_methods():
    assert ExportConfig(method="both").methods() == ["mc", "ensemble"]
    assert ExportConfig().samples == 50 and ExportConfig().target_far == 0.01

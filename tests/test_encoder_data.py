"""Encoder data side: channel augmentation, the GE2E teacher wrapper, and a tiny end-to-end
train + export of the speaker encoder on generated speech."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import numpy as np
import pytest

from voicegate.device.audio import SAMPLE_RATE
from voicegate.train.data import channel

from conftest import skip_or_fail
from synth import make_manifest_corpus, synth_voice


def band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / SAMPLE_RATE)
    return float(spec[(f >= lo) & (f < hi)].sum())


@pytest.fixture(scope="module")
def voice():
    return synth_voice("f1", 3.0, seed=1)


def test_named_channels_are_deterministic_and_keep_the_length(voice):
    for name in channel.CHANNELS:
        a = channel.apply_channel(voice, name, seed=3)
        b = channel.apply_channel(voice, name, seed=3)
        c = channel.apply_channel(voice, name, seed=4)
        assert a.shape == voice.shape and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c), name
        assert np.all(np.isfinite(a)) and np.abs(a).max() <= 1.0
    with pytest.raises(ValueError):
        channel.apply_channel(voice, "walkie_talkie")


def test_telephone_removes_the_band_above_3400_hz_and_far_field_is_24_db_down(voice):
    tel = channel.apply_channel(voice, "telephone")
    share = lambda x: band_energy(x, 4500, 8000) / band_energy(x, 0, 8000)  # noqa: E731
    assert share(tel) < 0.05 * share(voice)
    far = channel.apply_channel(voice, "far_field")
    drop_db = 10 * np.log10(np.mean(far.astype(np.float64) ** 2) / np.mean(voice.astype(np.float64) ** 2))
    assert -26.0 < drop_db < -20.0


def test_random_channel_every_stage(voice):
    cfg = channel.ChannelConfig(reverb_prob=1, band_prob=1, codec_prob=1, noise_prob=1, rir_bank=2)
    y, params = channel.random_channel(voice, np.random.default_rng(0), {"hum": np.sin(np.arange(8000) * 0.05)}, cfg)
    assert y.shape == voice.shape and np.all(np.isfinite(y))
    assert {"room", "band", "noise", "snr_db", "gain_db", "codec"} <= set(params)
    assert -30.0 <= params["gain_db"] <= 6.0 and 0.0 <= params["snr_db"] <= 20.0


def test_pkg_resources_stand_in(monkeypatch):
    from voicegate.train.models import teacher

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pkg_resources" else real_find(name, *a))
    monkeypatch.delitem(sys.modules, "pkg_resources", raising=False)
    try:
        teacher.ensure_pkg_resources()
        import pkg_resources

        assert pkg_resources.get_distribution("numpy").version == np.__version__
    finally:
        sys.modules.pop("pkg_resources", None)


def test_teacher_batched_mels_match_resemblyzer():
    from voicegate.train.models import teacher

    if importlib.util.find_spec("resemblyzer") is None:
        skip_or_fail("the GE2E teacher is not installed (pip install --no-deps resemblyzer)")
    had = "pkg_resources" in sys.modules
    t = teacher.Teacher(threads=1)
    assert ("pkg_resources" in sys.modules) == had  # the stand-in does not outlive the import
    windows = np.stack([synth_voice("m1", 2.0, seed=s) for s in (0, 1)])
    ref = t._audio.wav_to_mel_spectrogram(teacher.normalise_volume(windows[0]))
    np.testing.assert_allclose(t.mels(windows)[0], ref, rtol=1e-3, atol=1e-6 * ref.max())
    e = t.embed_windows(windows)
    assert e.shape == (2, teacher.TEACHER_DIM)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_tiny_encoder_train_and_export_end_to_end(tmp_path, monkeypatch, capsys):
    from voicegate.device.encoder import Encoder
    from voicegate.export.encoder_export import export_encoder
    from voicegate.export.onnx_export import ExportConfig, ExportError
    from voicegate.train.data.encoder_data import EncoderData, EncoderDataConfig, prepare_encoder_data
    from voicegate.train.models.fit_encoder import EncoderTrainConfig, train_encoder

    root = make_manifest_corpus(tmp_path / "tiny", allowed=("f1",), not_allowed=("f2", "m2", "f4", "m4"),
                                impostors=("m3",), recordings=3, seconds=3.0)
    cfg = EncoderDataConfig(corpora=[str(root)], cache=str(tmp_path / "cache"), max_windows=3, aug_copies=1,
                            val_speakers={"tiny": 2}, teacher=False, workers=1,
                            channel=channel.ChannelConfig(rir_bank=2).to_dict())
    data = EncoderData(prepare_encoder_data(cfg))
    meta = data.meta
    trained = {s.split("/")[1] for s in meta["speakers"]}
    validation = {s.split("/")[1] for s in meta["validation_speakers"]}
    assert len(trained) == 2 and len(validation) == 2 and not trained & validation
    assert not (trained | validation) & {"f1", "m3"}  # allowed and held-out never reach the encoder
    assert data.images.shape[1] == 2 and data.images.dtype == np.uint8
    assert meta["per_corpus"]["tiny"]["training_windows"] == data.labels.size
    assert prepare_encoder_data(cfg) == data.folder  # the cache is reused

    run = train_encoder(EncoderTrainConfig(data=str(data.folder), out=str(tmp_path / "run"), epochs=6, batch_size=4,
                                           lr=1e-2, warmup=0.05, threads=1, encoder={"widths": (4, 8, 8, 16), "trunk_dim": 16,
                                                               "embedding_dim": 8}))
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 6 and "eer" in history[-1]["val"]["all"]
    assert (run / "curves.png").stat().st_size > 0
    # --init: a fine-tune starts from the checkpoint's weights (with lr 0 it keeps them exactly)
    import torch

    from voicegate.train.models.encoder import load_encoder

    tuned = train_encoder(EncoderTrainConfig(data=str(data.folder), out=str(tmp_path / "tuned"), epochs=1,
                                             batch_size=4, lr=0.0, threads=1, init=str(run / "checkpoint.pt"),
                                             encoder={"widths": (4, 8, 8, 16), "trunk_dim": 16, "embedding_dim": 8}))
    before = dict(load_encoder(run / "checkpoint.pt")[0].named_parameters())
    after = dict(load_encoder(tuned / "checkpoint.pt")[0].named_parameters())  # batch-norm statistics move
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="configuration"):
        train_encoder(EncoderTrainConfig(data=str(data.folder), out=str(tmp_path / "x"), epochs=1, threads=1,
                                         init=str(run / "checkpoint.pt"), encoder={"embedding_dim": 16}))
    with pytest.raises(ValueError, match="speaker-fraction"):  # the ablation trains from scratch only
        train_encoder(EncoderTrainConfig(data=str(data.folder), out=str(tmp_path / "x"), epochs=1, threads=1,
                                         init=str(run / "checkpoint.pt"), speaker_fraction=0.5))

    out = export_encoder(run, tmp_path / "models" / "enc.onnx", ExportConfig(samples=4, parity_windows=4),
                         backend="wccn")
    enc = Encoder.load(out)
    c = enc.contract
    assert c.kind == "encoder" and c.samples == 4 and c.embedding_dim == 8
    assert c.calibration["type"] == "logistic" and c.calibration["a"] > 0
    assert c.metrics["backend"]["type"] == "wccn" and c.metrics["backend"]["speakers"] == 2
    assert str(tmp_path) not in json.dumps(c.to_dict())  # no absolute paths in the contract
    emb = enc.embed(data.val_images[:3].astype(np.float32) / 255.0)
    assert emb.shape == (3, 4, 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-4)
    assert (out.parent / (out.name + ".sha256")).is_file()
    # AS-norm: the same graph re-scored against a cohort of the training speakers (export/score_norm.py)
    from voicegate.device.scoring import ScoreNorm
    from voicegate.export.score_norm import rescore

    asn = Encoder.load(rescore(out, tmp_path / "models" / "enc-asn.onnx", str(data.folder), top=1))
    cal = asn.contract.calibration
    assert cal["type"] == "as-norm-logistic" and cal["a"] > 0 and cal["cohort_shape"] == [2, 8]  # 2 training voices
    assert isinstance(asn.score_norm, ScoreNorm) and asn.score_norm.cohort.shape == (2, 8)
    assert asn.contract.extra["rescored_from"]["sha256"] == enc.sha256 and asn.sha256 != enc.sha256
    assert "as_norm_score" in asn.contract.metrics["validation"] and asn.contract.metrics["validation_raw_cosine"]
    np.testing.assert_allclose(asn.embed(data.val_images[:3].astype(np.float32) / 255.0).mean(1),
                               emb.mean(1), atol=0.3)  # the same graph (fresh MC masks)
    with pytest.raises(ExportError, match="already normalised"):
        rescore(tmp_path / "models" / "enc-asn.onnx", tmp_path / "models" / "x.onnx", str(data.folder))
    assert out.name in json.loads((out.parent / "manifest.json").read_text())

    # a deep ensemble: a second run from another seed on the same data, both in one graph
    tiny = {"widths": (4, 8, 8, 16), "trunk_dim": 16, "embedding_dim": 8}
    run2 = train_encoder(EncoderTrainConfig(data=str(data.folder), out=str(tmp_path / "run2"), epochs=6,
                                            batch_size=4, lr=1e-2, warmup=0.05, threads=1, seed=1, encoder=tiny))
    # members trained for seconds embed every synthetic voice alike in eval mode (no dropout noise to
    # fit either), so the cosine -> p fit has no slope to find: a fixed one stands in for it here
    # (the fit itself: test_encoder.test_calibration_is_monotone_and_rejects_a_non_separating_encoder)
    import voicegate.export.encoder_calibration as encoder_calibration

    monkeypatch.setattr(encoder_calibration, "fit_calibration", lambda g, i: {"type": "logistic", "a": 10.0, "b": -7.0})
    ens = export_encoder([run, run2], tmp_path / "models" / "enc-ens.onnx",
                         ExportConfig(method="ensemble", parity_windows=4))  # no back-end: the default
    e2 = Encoder.load(ens)
    assert e2.contract.method == "ensemble" and e2.contract.samples == 2 and e2.contract.embedding_dim == 16
    assert [m["seed"] for m in e2.contract.metrics["members"]] == [0, 1]
    assert e2.contract.metrics["backend"] == {"type": "none"}
    emb = e2.embed(data.val_images[:3].astype(np.float32) / 255.0)
    assert emb.shape == (3, 2, 16) and np.abs(emb[:, 0, 8:]).max() == 0 and np.abs(emb[:, 1, :8]).max() == 0
    with pytest.raises(ExportError, match="seed"):  # the same run twice is not an ensemble
        export_encoder([run, run], tmp_path / "models" / "copies.onnx", ExportConfig(method="ensemble"))
    with pytest.raises(ExportError, match="ensemble"):
        export_encoder([run, run2], tmp_path / "models" / "x.onnx", ExportConfig(method="mc"))
    # through the CLI these are usage errors (exit 2, one line), not failures (exit 1)
    from voicegate.device.cli import main

    for argv, said in (([str(run), str(run2), "--method", "mc"], "--method mc exports one encoder run"),
                       ([str(run), "--method", "ensemble"], "--method ensemble needs >= 2"),
                       ([str(run), str(run), "--method", "ensemble"], "share a training seed")):
        capsys.readouterr()
        assert main(["export", *argv, "--out", str(tmp_path / "models" / "cli.onnx")]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1, err

    # a cache whose windows another featurizer selected (here: another speech-detector padding) is
    # never used to choose thresholds, and is prepared again rather than reused
    meta_path = data.folder / "meta.json"
    stale = json.loads(meta_path.read_text())
    stale["feature_contract"]["speech_detector"]["pad_s"] += 0.25
    meta_path.write_text(json.dumps(stale))
    with pytest.raises(ExportError, match="another featurizer"):
        export_encoder(run, tmp_path / "models" / "stale.onnx", ExportConfig(samples=4, parity_windows=4))
    from voicegate.device.features import feature_contract

    prepare_encoder_data(cfg)
    assert EncoderData(data.folder).meta["feature_contract"] == feature_contract()


def test_train_encoder_cli_needs_a_corpus(tmp_path, capsys):
    import argparse

    from voicegate.train.models import encoder_cli

    p = argparse.ArgumentParser()
    encoder_cli.add_arguments(p)
    assert encoder_cli.run(p.parse_args([])) == 2
    assert encoder_cli.run(p.parse_args(["--corpus", str(tmp_path)])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("voicegate train-encoder:") for line in err)


def test_train_encoder_pseudo_speaker_options_are_checked_before_any_work(tmp_path, capsys):
    import argparse

    from voicegate.train.models import encoder_cli
    from voicegate.train.models.encoder_cli import DEFAULT_PSEUDO_PROB, pseudo_options

    assert pseudo_options("", None) == ((), 0.0)
    assert pseudo_options("0.9, 1.1", None) == ((0.9, 1.1), DEFAULT_PSEUDO_PROB)
    assert pseudo_options("0.9", 0.5) == ((0.9,), 0.5)
    for warps, prob, said in (("", 0.5, "needs --pseudo-warps"), ("0.9,x", None, "comma-separated numbers"),
                              ("1.0", None, "other than 1"), ("3", None, "(0.5, 2)")):
        with pytest.raises(ValueError, match=re.escape(said)):
            pseudo_options(warps, prob)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "manifest.csv").write_text("path,speaker\n")  # never read: the options fail first
    p = argparse.ArgumentParser()
    encoder_cli.add_arguments(p)
    capsys.readouterr()
    assert encoder_cli.run(p.parse_args(["--corpus", str(tmp_path / "c"), "--pseudo-prob", "0.4",
                                         "--cache", str(tmp_path / "cache")])) == 2
    err = capsys.readouterr().err.strip()
    assert err == "voicegate train-encoder: --pseudo-prob needs --pseudo-warps (the pseudo-speakers' warp factors)"
    assert not (tmp_path / "cache").exists()


def test_speaker_subset_keeps_each_corpus_share_and_renumbers_labels():
    from voicegate.train.data.encoder_data import speaker_subset

    speakers = [f"a/{i}" for i in range(10)] + [f"b/{i}" for i in range(4)]
    labels = np.repeat(np.arange(len(speakers)), 3)  # 3 windows per speaker
    mask, new, chosen = speaker_subset(speakers, labels, 0.5, seed=1)
    assert sum(s.startswith("a/") for s in chosen) == 5 and sum(s.startswith("b/") for s in chosen) == 2
    assert mask.sum() == 3 * len(chosen)
    assert sorted(set(new.tolist())) == list(range(len(chosen)))  # dense, 0..m-1
    # every kept window keeps its speaker: the renumbered label names the same person
    assert [chosen[k] for k in new] == [speakers[k] for k in labels[mask]]
    assert speaker_subset(speakers, labels, 0.5, seed=1)[2] == chosen  # the seed decides
    assert speaker_subset(speakers, labels, 1.0, seed=1)[0].all()
    with pytest.raises(ValueError, match="fraction"):
        speaker_subset(speakers, labels, 0.0, seed=1)

"""Fine-tuning a shipped encoder: weights recovered from the ONNX graph, frozen BatchNorm, the
relational distillation loss and the frequency-warp pseudo-speakers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from voicegate.train.models.encoder import EncoderConfig, SpeakerEncoder, relation_loss, warp_frequency

TINY = {"widths": (4, 8, 8, 16), "trunk_dim": 16, "embedding_dim": 8, "dropout": 0.3}


def trained_looking_encoder(seed: int = 0) -> SpeakerEncoder:
    """A tiny encoder whose BatchNorms are not the identity (as after training)."""
    torch.manual_seed(seed)
    enc = SpeakerEncoder(EncoderConfig(n_speakers=5, **TINY))
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return enc.eval()


def write_mc_model(enc: SpeakerEncoder, path, samples: int = 4) -> None:
    import onnx

    from voicegate.export.encoder_export import export_encoder_mc
    from voicegate.export.graphs import set_metadata

    proto = export_encoder_mc(enc, samples=samples)
    contract = {"kind": "encoder", "method": "mc", "embedding_dim": enc.cfg.embedding_dim, "samples": samples}
    set_metadata(proto, {"voicegate.contract": json.dumps(contract)})
    onnx.save(proto, str(path))


def test_an_exported_mc_encoder_is_recovered_to_the_same_function(tmp_path):
    from voicegate.train.models.from_onnx import encoder_state_from_onnx

    enc = trained_looking_encoder()
    write_mc_model(enc, tmp_path / "enc.onnx")
    cfg, state = encoder_state_from_onnx(tmp_path / "enc.onnx")
    assert cfg["widths"] == [4, 8, 8, 16] and cfg["embedding_dim"] == 8 and cfg["dropout"] == pytest.approx(0.3)
    back = SpeakerEncoder(EncoderConfig.from_dict({**cfg, "n_speakers": 5}))
    back.load_state_dict(state)
    x = torch.from_numpy(np.random.default_rng(1).random((3, 1, 224, 224), dtype=np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(back.eval()(x).numpy(), enc(x).numpy(), atol=1e-5)
    # the BatchNorms are identities; the folded statistics live in the convolutions
    bn = [m for m in back.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(m.running_mean == 0) and torch.all(m.weight == 1) for m in bn)


def test_a_classifier_or_ensemble_model_is_refused(tmp_path):
    import onnx

    from voicegate.export.graphs import set_metadata
    from voicegate.train.models.from_onnx import encoder_state_from_onnx

    write_mc_model(trained_looking_encoder(), tmp_path / "enc.onnx")
    proto = onnx.load(str(tmp_path / "enc.onnx"))
    set_metadata(proto, {"voicegate.contract": json.dumps({"kind": "encoder", "method": "ensemble"})})
    onnx.save(proto, str(tmp_path / "ens.onnx"))
    with pytest.raises(ValueError, match="not a voicegate MC-dropout encoder"):
        encoder_state_from_onnx(tmp_path / "ens.onnx")


def test_frozen_batchnorm_keeps_its_statistics_in_training_mode():
    from voicegate.train.models.from_onnx import freeze_batchnorm

    enc = trained_looking_encoder()
    before = [m.running_mean.clone() for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    enc.train()
    freeze_batchnorm(enc)
    assert enc.head[0].training  # dropout still on
    enc(torch.rand(4, 1, 224, 224))
    after = [m.running_mean for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_warp_frequency_moves_a_harmonic_up_or_down_and_keeps_it_at_factor_one():
    x = torch.zeros(3, 1, 224, 6)
    x[:, 0, 223 - 50] = 1.0  # a line at frequency bin 50 (row 0 is the highest frequency)
    y = warp_frequency(x, torch.tensor([1.1, 0.9, 1.0]))
    peak = 223 - y[:, 0, :, 0].argmax(1)
    assert peak.tolist() == [55, 45, 50]
    torch.testing.assert_close(y[2], x[2])
    assert float(y[1, 0, : 223 - 202].abs().max()) == 0.0  # above 0.9 x the top: the image's floor


def test_relation_loss_is_zero_when_the_student_sees_voices_as_the_teacher_does():
    t = torch.nn.functional.normalize(torch.randn(12, 32), dim=-1)
    same = relation_loss(t, t, tau_student=0.05, tau_teacher=0.05)
    other = relation_loss(torch.nn.functional.normalize(torch.randn(12, 32), dim=-1), t, 0.05, 0.05)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    assert float(other) > 0.1


def test_a_start_from_a_model_of_another_width_is_refused(tmp_path):
    from voicegate.train.models.encoder import EncoderTraining
    from voicegate.train.models.from_onnx import start_from_onnx

    write_mc_model(trained_looking_encoder(), tmp_path / "enc.onnx")
    run = EncoderTraining(EncoderConfig(n_speakers=2, **{**TINY, "trunk_dim": 32}))
    with pytest.raises(ValueError, match="another architecture"):
        start_from_onnx(run, tmp_path / "enc.onnx", np.zeros((2, 1, 224, 224), np.uint8), np.array([0, 1]), None, 2)


def test_centred_teacher_targets_keep_what_tells_voices_apart():
    from voicegate.train.models.fit_encoder import center_teacher

    rng = np.random.default_rng(0)
    common = np.abs(rng.normal(size=32)) * 3.0  # GE2E-like: every embedding shares a positive direction
    voices = np.abs(common + rng.normal(size=(2, 32)))
    t = np.concatenate([voices[0] + 0.1 * rng.normal(size=(20, 32)), voices[1] + 0.1 * rng.normal(size=(20, 32))])
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    c = center_teacher(t)
    assert c.dtype == np.float32 and c.shape == t.shape
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5)
    raw_other = float((t[:20] @ t[20:].T).mean())
    centred_other, centred_same = float((c[:20] @ c[20:].T).mean()), float((c[:20] @ c[:20].T).mean())
    assert raw_other > 0.5  # raw: two different voices still look alike
    assert centred_other < -0.5 < 0.5 < centred_same  # centred: they point apart

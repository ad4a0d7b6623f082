"""The two architectures, their shared trunk/head interface, and checkpoint round-trips."""

import pytest
import torch
from torch import nn

from voicegate.device.features import FEATURE_VERSION
from voicegate.train.models.classifier import (
    CompactCNN,
    ModelConfig,
    SpectrogramCNN,
    build_model,
    count_macs,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
)

TINY = ModelConfig(arch="compact", widths=(4, 8, 8, 8), embed_dim=16, dropout=0.5)


def test_seed_model_is_the_study_model():
    model = build_model(ModelConfig(arch="seed"))
    assert isinstance(model, SpectrogramCNN)
    # conv 320 + 18,496 + 73,856; fc1 128*28*28*512 + 512; fc2 512*2 + 2
    assert count_parameters(model) == 51_474_434
    fc1 = model.trunk.fc1
    assert (fc1.in_features, fc1.out_features) == (128 * 28 * 28, 512)
    assert [m.out_channels for m in model.trunk if isinstance(m, nn.Conv2d)] == [32, 64, 128]
    assert model.head[0].p == 0.5 and model.head[1].out_features == 2


def test_compact_model_is_edge_sized():
    model = build_model(ModelConfig(arch="compact"))
    assert isinstance(model, CompactCNN)
    assert count_parameters(model) < 1_000_000
    assert count_macs(model) < 60_000_000


@pytest.mark.parametrize("cfg", [TINY, ModelConfig(arch="seed", widths=(2, 2, 2), embed_dim=8)])
def test_trunk_then_head_equals_forward(cfg):
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.rand(3, 1, 224, 224)
    with torch.no_grad():
        feats = model.trunk(x)
        assert feats.shape == (3, model.feature_dim)
        assert torch.allclose(model.head(feats), model(x))
        assert model(x).shape == (3, 2)
    # dropout lives only in the head, so MC sampling needs the trunk once
    dropouts = [name for name, m in model.named_modules() if isinstance(m, nn.Dropout)]
    assert dropouts == ["head.0"]


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = build_model(TINY)
    # move BatchNorm statistics away from their defaults so the buffers are checked too
    model.train()
    model(torch.rand(4, 1, 224, 224))
    model.eval()
    path = save_checkpoint(tmp_path / "m.pt", model, TINY, {"seed": 7, "roles": {"allowed": ["a1"]}})
    loaded, ckpt = load_checkpoint(path)
    assert not loaded.training
    assert ckpt["seed"] == 7 and ckpt["roles"] == {"allowed": ["a1"]}
    assert ckpt["model_config"]["feature_version"] == FEATURE_VERSION
    assert ModelConfig.from_dict(ckpt["model_config"]) == TINY
    x = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_config_dict_round_trip_and_validation():
    cfg = ModelConfig(arch="seed")
    assert cfg.widths == (32, 64, 128) and cfg.dropout == 0.5 and cfg.embed_dim == 512
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        ModelConfig(arch="resnet")
    with pytest.raises(ValueError):
        ModelConfig(arch="compact", widths=(8, 8))


def test_load_rejects_other_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a voicegate checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")

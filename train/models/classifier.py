"""The two classifiers, their config, and checkpoints that rebuild them.

Both models take float32 (batch, 1, 224, 224) spectrogram images in [0, 1] (rows = frequency,
highest first; columns = time) and return logits for (not_allowed, allowed). Both expose the
same split, which the ONNX exporter relies on:

- ``model.trunk(x) -> (B, D)``: everything up to and including fc1 + ReLU (deterministic);
- ``model.head = nn.Sequential(nn.Dropout(p), nn.Linear(D, 2))``: the only dropout;
- ``model(x) == model.head(model.trunk(x))``.

So MC-dropout sampling runs the trunk once and only the tiny head T times.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from voicegate.device.features import FEATURE_VERSION, IMAGE_SIZE

log = logging.getLogger(__name__)

ARCHS = ("seed", "compact")
N_CLASSES = 2  # 0 = not_allowed, 1 = allowed
CHECKPOINT_FORMAT = "voicegate-checkpoint-1"

# Per-architecture defaults for the width parameters (ModelConfig fields left as None).
DEFAULT_WIDTHS = {"seed": (32, 64, 128), "compact": (16, 32, 64, 128)}
DEFAULT_EMBED = {"seed": 512, "compact": 128}
DEFAULT_DROPOUT = {"seed": 0.5, "compact": 0.3}


@dataclass
class ModelConfig:
    arch: str = "compact"  # "seed" (the study's SpectrogramCNN) or "compact" (edge CNN)
    dropout: Optional[float] = None  # head dropout p; None -> the arch default (seed 0.5, compact 0.3)
    widths: Optional[tuple] = None  # conv channels; None -> arch default (seed 32,64,128; compact 16,32,64,128)
    embed_dim: Optional[int] = None  # fc1 width D (trunk output); None -> arch default (seed 512, compact 128)
    image_size: int = IMAGE_SIZE  # input is (B, 1, image_size, image_size)
    n_classes: int = N_CLASSES  # logits: index 1 = allowed
    feature_version: str = FEATURE_VERSION  # featurizer the model was trained on (checked at export/load)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.dropout is None:
            self.dropout = DEFAULT_DROPOUT[self.arch]
        if self.widths is None:
            self.widths = DEFAULT_WIDTHS[self.arch]
        self.widths = tuple(int(w) for w in self.widths)
        n_widths = len(DEFAULT_WIDTHS[self.arch])
        if len(self.widths) != n_widths:
            raise ValueError(f"arch {self.arch} needs {n_widths} widths, got {self.widths}")
        if self.embed_dim is None:
            self.embed_dim = DEFAULT_EMBED[self.arch]
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def make_head(dim: int, dropout: float, n_classes: int = N_CLASSES) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, n_classes))


class GateModel(nn.Module):
    """Shared interface: ``forward(x) = head(trunk(x))``; subclasses build trunk and head."""

    trunk: nn.Module
    head: nn.Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    @property
    def feature_dim(self) -> int:
        return self.head[1].in_features

    @property
    def last_conv(self) -> nn.Conv2d:
        """The last convolution (the Grad-CAM target)."""
        return [m for m in self.trunk.modules() if isinstance(m, nn.Conv2d)][-1]


class SpectrogramCNN(GateModel):
    """The study's model, layer for layer: three conv3x3+ReLU+maxpool blocks (32, 64, 128), then
    fc 128*28*28 -> 512, ReLU, dropout 0.5, fc 512 -> 2. About 51.5 M parameters (206 MB fp32)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        c_in, size = 1, cfg.image_size
        for i, c in enumerate(cfg.widths, 1):
            layers[f"conv{i}"] = nn.Conv2d(c_in, c, 3, padding=1)
            layers[f"relu{i}"] = nn.ReLU()
            layers[f"pool{i}"] = nn.MaxPool2d(2)
            c_in, size = c, size // 2
        layers["flatten"] = nn.Flatten()
        layers["fc1"] = nn.Linear(c_in * size * size, cfg.embed_dim)
        layers["relu_fc1"] = nn.ReLU()
        self.trunk = nn.Sequential(layers)
        self.head = make_head(cfg.embed_dim, cfg.dropout, cfg.n_classes)


class TimeStatsPool(nn.Module):
    """(B, C, F, T) -> (B, C*F*2): mean and standard deviation over time only.

    The frequency axis is kept because speaker identity lives in the spectral envelope; pooling
    over time makes the embedding independent of where in the window the speech falls.
    Written with plain mean/sqrt so it exports to any ONNX opset.
    """

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1)
        std = torch.sqrt(((x - mean.unsqueeze(-1)) ** 2).mean(dim=-1) + self.eps)
        return torch.cat([mean, std], dim=1).flatten(1)


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class CompactCNN(GateModel):
    """Edge-sized CNN (~0.6 M parameters, ~46 M multiply-adds per window at default widths).

    stem: conv3x3 stride 2 + BN + ReLU + maxpool 2 (224 -> 56); blocks: conv3x3 + BN + ReLU, with
    maxpool 2 after all but the last (56 -> 28 -> 14); then mean+std over time per (channel,
    frequency band), fc1 + ReLU, and the head dropout -> linear. BatchNorm right after the first
    convolution normalises the input scale, so no separate input normalisation is needed (and
    whatever the model does to its input is inside it, hence inside the ONNX export).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        stem, *blocks = cfg.widths
        layers = [*conv_bn_relu(1, stem, stride=2), nn.MaxPool2d(2)]
        size, c_in = cfg.image_size // 4, stem
        for i, c in enumerate(blocks):
            layers += conv_bn_relu(c_in, c)
            if i < len(blocks) - 1:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c_in = c
        self.trunk = nn.Sequential(
            *layers,
            TimeStatsPool(),
            nn.Linear(c_in * size * 2, cfg.embed_dim),
            nn.ReLU(inplace=True),
        )
        self.head = make_head(cfg.embed_dim, cfg.dropout, cfg.n_classes)


def build_model(cfg: ModelConfig) -> GateModel:
    return {"seed": SpectrogramCNN, "compact": CompactCNN}[cfg.arch](cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: int = IMAGE_SIZE) -> int:
    """Multiply-accumulates of one forward pass on one window (Conv2d and Linear layers)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output.numel() * k
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 1, image_size, image_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def save_checkpoint(path, model: nn.Module, cfg: ModelConfig, extra: Optional[dict] = None) -> Path:
    """Write config + weights (+ ``extra``: train/data config, speakers, roles, seed, metrics...).

    ``extra`` must be JSON-serialisable (numpy scalars and paths are converted), so the checkpoint
    holds only plain values and loads with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        **plain(extra or {}),
        "format": CHECKPOINT_FORMAT,
        "model_config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return path


def plain(value):
    """A JSON round trip: numpy scalars/arrays -> Python values, paths -> str."""

    def default(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"checkpoint extra: cannot store {type(o).__name__}")

    return json.loads(json.dumps(value, default=default))


def load_checkpoint(path) -> tuple:
    """Rebuild the model from the checkpoint alone -> ``(model on cpu in eval mode, ckpt dict)``."""
    from .torchutil import read_checkpoint

    ckpt = read_checkpoint(path, CHECKPOINT_FORMAT)
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    model = build_model(cfg)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt

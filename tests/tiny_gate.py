"""Tiny gate models for the export, runtime and CLI tests (exported in milliseconds).

``TinyNet`` has the real models' interface (``trunk(x) -> (B, D)`` including fc1 + ReLU,
``head = Sequential(Dropout(p), Linear(D, 2))``). ``write_gate_model`` exports one (MC or
ensemble) with a hand-made contract, sidecar and manifest, the way ``voicegate export`` does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from voicegate.device.contract import ModelContract
from voicegate.device.features import feature_contract
from voicegate.device.policy import Thresholds
from voicegate.export import graphs
from voicegate.export.writing import write_model


class TinyNet(nn.Module):
    """224x224 -> average-pool to 8x8 -> fc1 (D) + ReLU -> Dropout(p) -> Linear(D, 2)."""

    def __init__(self, dim: int = 8, p: float = 0.5, seed: int = 0, bias: tuple | None = None,
                 head_scale: float = 3.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        fc1 = nn.Linear(64, dim)
        out = nn.Linear(dim, 2)
        with torch.no_grad():
            fc1.weight.copy_(torch.randn(dim, 64, generator=g) * 0.3)
            fc1.bias.fill_(1.0)  # features stay positive, so dropout always changes something
            out.weight.copy_(torch.randn(2, dim, generator=g) * head_scale)
            out.bias.zero_()
            if bias is not None:  # a fixed verdict: small weights, and the bias decides
                out.weight.mul_(0.1 / head_scale)  # dropout still moves the samples a little
                out.bias.copy_(torch.tensor(bias, dtype=torch.float32))
        self.trunk = nn.Sequential(nn.AvgPool2d(28), nn.Flatten(), fc1, nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(p), out)

    def forward(self, x):
        return self.head(self.trunk(x))


def make_contract(method: str = "mc", samples: int = 8, thresholds: Thresholds | None = None,
                  features: dict | None = None) -> ModelContract:
    return ModelContract(
        features=features or feature_contract(),
        method=method,
        samples=samples,
        thresholds=thresholds or Thresholds(accept=0.5, uncertainty_limit=0.1, deny=0.3),
        architecture="tiny",
        corpus={"roles": {"allowed": ["a1"]}},
        metrics={"validation": {"note": "hand-made for tests"}},
        created_at="2026-01-01T00:00:00Z",
        voicegate_version="test",
    )


def write_gate_model(path: Path, method: str = "mc", samples: int = 8, models: list | None = None,
                     thresholds: Thresholds | None = None, features: dict | None = None) -> Path:
    """Export TinyNet(s) to ``path`` with a contract, sidecar and manifest entry."""
    path = Path(path)
    if method == "mc":
        model = (models or [TinyNet()])[0].eval()
        proto = graphs.export_mc(model, samples)
    else:
        models = models or [TinyNet(seed=i) for i in range(samples)]
        samples = len(models)
        proto = graphs.export_ensemble([m.eval() for m in models])
    write_model(proto, make_contract(method, samples, thresholds, features), path)
    return path

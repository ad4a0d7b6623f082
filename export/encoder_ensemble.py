"""A deep ensemble of speaker encoders as one ONNX graph (``voicegate export RUN RUN... --method ensemble``).

K encoder runs trained from different seeds on the same data (``voicegate train-encoder --seed``)
each learn their own embedding space: member 1's vector and member 2's vector for the same voice
are not comparable, so their embeddings cannot simply be averaged. The graph therefore gives
every member its own block of one K*D space:

    sample k of a window = member k's L2-normalised embedding in block k, zeros elsewhere

so the output keeps the device's encoder contract, (batch, S = K, K*D) L2-normalised rows, and the
device scores it with the same rule as an MC model (``device/scoring.py``): a profile's
centroid is the normalised mean over windows and samples, i.e. every member's mean embedding in
its own block, scaled by 1/sqrt(sum of the block norms squared); the utterance's sample k scores
``cos_k = e_k . m_k / |m|`` -- member k's agreement with the profile, on a scale shared by all
members -- and the spread of the K calibrated scores is the ensemble's disagreement (its
uncertainty). No dropout at inference: the members are deterministic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PARITY_ATOL = 1e-4


def load_members(runs: list, checkpoint: str) -> list:
    """[(encoder, checkpoint dict, checkpoint path)] of every run; ValueError unless they can
    form one ensemble (same architecture and embedding size, same data and validation speakers)."""
    from voicegate.train.models.encoder import load_encoder

    members = []
    for run in runs:
        path = Path(run) / checkpoint
        encoder, ckpt = load_encoder(path)
        members.append((encoder, ckpt, path))
    first_cfg = members[0][0].cfg.to_dict()
    first_val = members[0][1].get("data", {}).get("validation_speakers")
    for (enc, ckpt, path), run in zip(members[1:], runs[1:]):
        cfg = enc.cfg.to_dict()
        if cfg != first_cfg:
            diff = sorted(k for k in set(cfg) | set(first_cfg) if cfg.get(k) != first_cfg.get(k))
            raise ValueError(f"{run}: encoder config differs from {runs[0]} in {', '.join(diff)}")
        if ckpt.get("data", {}).get("validation_speakers") != first_val:
            raise ValueError(f"{run}: trained with other validation speakers than {runs[0]} "
                             "(ensemble members must share the data: same --data-seed and cache)")
    seeds = [m[1].get("train_config", {}).get("seed") for m in members]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the runs share a training seed ({seeds}): a deep ensemble needs different seeds")
    return members


def ensemble_module(encoders: list):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class EncoderEnsemble(nn.Module):
        """K encoders -> (B, K, K*D): member k's normalised embedding in block k."""

        def __init__(self):
            super().__init__()
            self.members = nn.ModuleList([e.eval().cpu() for e in encoders])
            self.dim = int(encoders[0].cfg.embedding_dim)

        def forward(self, x):
            k_all, d = len(self.members), self.dim
            rows = [F.pad(m(x), (k * d, (k_all - 1 - k) * d)) for k, m in enumerate(self.members)]
            return torch.stack(rows, dim=1)

    return EncoderEnsemble().eval()


def export_encoder_ensemble(encoders: list, opset: int = 17):
    import onnx

    from voicegate.device.contract import EMBEDDINGS_NAME, INPUT_NAME

    from .graphs import _example_input, _to_onnx

    if len(encoders) < 2:
        raise ValueError(f"an ensemble needs >= 2 encoder runs, got {len(encoders)}")
    module = ensemble_module(encoders)
    proto = _to_onnx(module, (_example_input(int(encoders[0].cfg.image_size)),), [INPUT_NAME], opset,
                     output_name=EMBEDDINGS_NAME)
    onnx.checker.check_model(proto)
    return proto


def check_ensemble_parity(proto, encoders: list, images: np.ndarray, session_fn, run_fn) -> dict:
    """ValueError unless every block of the graph's output is its member's torch eval embedding
    (within PARITY_ATOL) and the other blocks are zero."""
    import torch

    x = torch.from_numpy(np.asarray(images, np.float32)[:, None])
    out = run_fn(session_fn(proto), images)  # (n, K, K*D)
    d, err = int(encoders[0].cfg.embedding_dim), 0.0
    for k, enc in enumerate(encoders):
        with torch.no_grad():
            ref = enc.eval()(x).numpy()
        block = out[:, k, k * d : (k + 1) * d]
        rest = np.delete(out[:, k, :], np.s_[k * d : (k + 1) * d], axis=1)
        err = max(err, float(np.abs(block - ref).max()), float(np.abs(rest).max()) if rest.size else 0.0)
    if err > PARITY_ATOL:
        raise ValueError(f"encoder ensemble parity failed: max |onnx - torch| = {err:.2e}")
    return {"max_abs_vs_torch": err, "members": len(encoders), "windows": int(len(images)),
            "max_norm_error": float(np.abs(np.linalg.norm(out, axis=-1) - 1).max())}

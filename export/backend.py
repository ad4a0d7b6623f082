"""A linear back-end folded into the exported encoder: within-class covariance normalisation (WCCN).

The encoder's embedding space is not isotropic: some directions vary a lot *within* one voice
(channel, words, mood) and say little about who speaks. WCCN whitens those directions:

    e' = normalise(L^T (e - mu)),   L = cholesky(inverse(S_w + eps I))

with ``mu`` the mean and ``S_w`` the within-speaker covariance of the encoder's embeddings of its
own TRAINING windows (clean and one augmented version each; never a validation, allowed or
held-out speaker). It is one linear map and a normalisation, so it goes into the ONNX graph
after the embedding head: the device, the profiles and the scoring rule do not change, and the
calibration and thresholds are fitted afterwards on the validation speakers as usual.
Measured on the shipped MC encoder (``benchmarks/score_norm.py``, speechocean762 clean, speakers
never heard): EER 7.80 % -> 6.59 %, FRR at FAR 1 % 32.1 -> 30.3 %.

**Not the default** (``voicegate export --backend wccn`` asks for it): whitening amplifies the
directions in which real voices hardly vary, and a voice from outside that world lands anywhere.
Against the demo household, 24 espeak-ng voices x 3 tries (``benchmarks/synthetic_voices.py``)
were GRANTED 14 times of 72 with WCCN (16 in a first run), 0 times without it (``benchmarks/synthetic-voices.json``). A door must not open to a speech
synthesiser, so the shipped encoders carry no back-end.
"""

from __future__ import annotations

import numpy as np

WCCN_EPS = 1e-3  # ridge on S_w (its trace is about 1: unit-norm embeddings)


def training_embeddings(encoder, data, versions=(0, 1), batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) eval-mode embeddings of the training windows (clean + first augmented) and labels:
    the cohort's loop (``score_norm.training_window_embeddings``) with the torch encoder."""
    import torch

    from .score_norm import training_window_embeddings

    encoder.eval()

    def embed(images: np.ndarray) -> np.ndarray:  # (n, 224, 224) -> (n, 1, D): one "sample"
        with torch.no_grad():
            return encoder(torch.from_numpy(images[:, None])).numpy()[:, None, :]

    return training_window_embeddings(embed, data, versions, batch)


def fit_wccn(x: np.ndarray, y: np.ndarray, eps: float = WCCN_EPS) -> dict:
    """{mu (D,), transform (D, D)} from embeddings ``x`` with speaker labels ``y``."""
    x = np.asarray(x, np.float64)
    classes, idx = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise ValueError("WCCN needs embeddings of at least two speakers")
    means = np.stack([x[idx == k].mean(0) for k in range(classes.size)])
    within = x - means[idx]
    sw = within.T @ within / len(x) + eps * np.eye(x.shape[1])
    transform = np.linalg.cholesky(np.linalg.inv(sw))  # (D, D): e' = (e - mu) @ transform
    return {"mu": x.mean(0), "transform": transform, "speakers": int(classes.size), "windows": int(len(x)),
            "eps": eps}


def with_wccn(encoder, wccn: dict):
    """The encoder with the back-end after it: same ``trunk``, ``head``, ``cfg``; ``forward`` and
    ``post`` (the back-end alone, for the MC graph that runs the head itself) apply it."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class WithWCCN(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = encoder
            self.trunk, self.head, self.cfg = encoder.trunk, encoder.head, encoder.cfg
            self.register_buffer("mu", torch.tensor(wccn["mu"], dtype=torch.float32))
            self.register_buffer("transform", torch.tensor(wccn["transform"], dtype=torch.float32))

        def post(self, emb):
            return F.normalize((emb - self.mu) @ self.transform, dim=-1)

        def forward(self, x):
            return self.post(self.inner(x))

    return WithWCCN().eval()


def wccn_encoder(encoder, data) -> tuple[object, dict]:
    """(encoder with WCCN, a summary for the contract) fitted on ``data``'s training windows."""
    x, y = training_embeddings(encoder, data)
    w = fit_wccn(x, y)
    return with_wccn(encoder, w), {"type": "wccn", "fitted_on": "the encoder's training windows (clean + "
                                   "one augmented version), eval mode", "speakers": w["speakers"],
                                   "windows": w["windows"], "eps": w["eps"]}

"""The speaker encoder: the study's compact CNN trunk plus an embedding head with dropout.

Input: float32 (batch, 1, 224, 224) spectrogram images in [0, 1], the device featurizer's.
The split the exporter relies on (as for the classifier):

- ``model.trunk(x) -> (B, trunk_dim)``: the compact CNN up to fc1 + ReLU (deterministic);
- ``model.head = nn.Sequential(nn.Dropout(p), nn.Linear(trunk_dim, embedding_dim))``: the only
  dropout, so MC dropout gives a distribution of embeddings while the trunk runs once;
- ``model(x) = normalise(model.head(model.trunk(x)))``: L2-normalised (B, D) embeddings.

Training objective (:class:`AAMSoftmax`): additive angular margin softmax over the training
speakers (cosine logits scaled by ``scale``, the target's angle widened by ``margin``), so the
cosine of two embeddings means "same voice". Optional distillation: a linear projection of the
(unnormalised) embedding towards the GE2E teacher's 256-d embedding of the clean window
(cosine loss, :func:`distill_loss`); the projection is training-only and never exported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from voicegate.device.features import FEATURE_VERSION, IMAGE_SIZE
from voicegate.device.scoring import centroid, sample_embeddings, window_embeddings
from voicegate.train.models.classifier import CompactCNN, ModelConfig, plain

ENCODER_CHECKPOINT_FORMAT = "voicegate-encoder-checkpoint-1"


@dataclass
class EncoderConfig:
    n_speakers: int = 2  # training classes of the AAM head
    arch: str = "compact"
    widths: Optional[tuple] = None  # conv channels (None: the compact default 16, 32, 64, 128)
    trunk_dim: int = 128  # fc1 width of the trunk
    embedding_dim: int = 128  # D
    dropout: float = 0.2  # the head's dropout (the MC-dropout rate)
    margin: float = 0.2  # AAM additive angular margin (radians)
    scale: float = 30.0  # AAM logit scale
    teacher_dim: int = 256  # 0: no distillation projection
    image_size: int = IMAGE_SIZE
    feature_version: str = FEATURE_VERSION

    def __post_init__(self):
        if self.arch != "compact":
            raise ValueError(f"the encoder uses the compact trunk, got arch {self.arch!r}")
        if not 0.0 < self.dropout < 1.0:
            raise ValueError(f"the encoder's head dropout must be in (0, 1) for MC dropout, got {self.dropout}")
        if self.widths is not None:
            self.widths = tuple(int(w) for w in self.widths)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = None if self.widths is None else list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class SpeakerEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        trunk_cfg = ModelConfig(arch="compact", widths=cfg.widths, embed_dim=cfg.trunk_dim,
                                dropout=cfg.dropout, image_size=cfg.image_size)
        self.trunk = CompactCNN(trunk_cfg).trunk
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.trunk_dim, cfg.embedding_dim))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised (B, D) embeddings (the head's output)."""
        return self.head(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.raw(x), dim=-1)


class AAMSoftmax(nn.Module):
    """Additive angular margin softmax (ArcFace): logits s*cos(theta + m) for the target."""

    def __init__(self, dim: int, n_classes: int, margin: float = 0.2, scale: float = 30.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.margin, self.scale = float(margin), float(scale)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, margin: Optional[float] = None) -> tuple:
        """(loss, cosine logits without margin) for L2-normalised ``emb``."""
        m = self.margin if margin is None else float(margin)
        cos = F.linear(emb, F.normalize(self.weight, dim=-1)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = cos.gather(1, labels[:, None])
        theta = torch.acos(target)
        # past pi - m the margin would wrap round; fall back to the CosFace-style penalty there
        with_margin = torch.where(theta + m < math.pi, torch.cos(theta + m), target - m * math.sin(m))
        logits = cos.scatter(1, labels[:, None], with_margin) * self.scale
        return F.cross_entropy(logits, labels), cos


def distill_loss(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cosine) between the student's projection and the teacher's embedding."""
    return (1.0 - F.cosine_similarity(projected, teacher, dim=-1)).mean()


def relation_loss(emb: torch.Tensor, teacher: torch.Tensor, tau_student: float = 0.1,
                  tau_teacher: float = 0.05) -> torch.Tensor:
    """Relational distillation: for each window of the batch, the softmax over the OTHER windows
    of the student's cosines (temperature ``tau_student``) is pulled towards the teacher's
    (``tau_teacher``), KL(teacher || student) averaged over rows. The student learns which voices
    the teacher finds alike, with no projection to absorb the difference. ``emb``: (B, D)
    L2-normalised; ``teacher``: (B, T) teacher embeddings."""
    t = F.normalize(teacher, dim=-1)
    eye = torch.eye(emb.shape[0], dtype=torch.bool, device=emb.device)
    s_logits = (emb @ emb.T / tau_student).masked_fill(eye, -1e4)
    t_logits = (t @ t.T / tau_teacher).masked_fill(eye, -1e4)
    p_t = F.softmax(t_logits, dim=1)
    return (p_t * (F.log_softmax(t_logits, dim=1) - F.log_softmax(s_logits, dim=1))).sum(1).mean()


def warp_frequency(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Pseudo-speakers: every image's frequency axis scaled by its factor (> 1: content moves up,
    as in a faster, higher voice; the image's top rows are discarded; < 1: down, the vacated top
    rows set to 0, the image's floor). Row 0 is the highest frequency. ``x``: (B, 1, F, T)."""
    b, _, f, t = x.shape
    k = torch.arange(f, dtype=x.dtype, device=x.device)  # frequency index, 0 = lowest
    src = k[None, :] / factors[:, None].to(x.dtype)  # (B, F): the source bin of each output bin
    lo = src.floor().clamp(0, f - 1)
    hi = (lo + 1).clamp(max=f - 1)
    w = (src - lo).clamp(0, 1)
    flipped = x.flip(2)  # index 0 = lowest frequency
    gather = lambda idx: torch.gather(flipped, 2, idx.long()[:, None, :, None].expand(b, 1, f, t))
    out = gather(lo) * (1 - w)[:, None, :, None] + gather(hi) * w[:, None, :, None]
    out = out * (src <= f - 1).to(x.dtype)[:, None, :, None]
    return out.flip(2)


class EncoderTraining(nn.Module):
    """The encoder plus its training-only parts (AAM class weights, distillation projection)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.encoder = SpeakerEncoder(cfg)
        self.aam = AAMSoftmax(cfg.embedding_dim, cfg.n_speakers, cfg.margin, cfg.scale)
        self.project = nn.Linear(cfg.embedding_dim, cfg.teacher_dim) if cfg.teacher_dim else None


# --- scoring (numpy; the device's scoring rule, voicegate.device.scoring, S samples) ------------
def trials(enrol: list, attempts: list) -> dict:
    """Every attempt against every profile: cosines (n_trials, S) and who is who.

    ``enrol``: per speaker k, its (n, S, D) enrolment embeddings; ``attempts``: [(k, (W, S, D))].
    Returns ``cos``, ``profile`` and ``speaker`` (indices) and ``genuine`` (profile == speaker).
    """
    centroids = np.stack([centroid(window_embeddings(e)) for e in enrol])  # (P, D), as enrolment stores

    cos, profile, speaker = [], [], []
    for k, emb in attempts:
        c = sample_embeddings(emb) @ centroids.T  # (S, P)
        cos.append(c.T)
        profile.append(np.arange(len(enrol)))
        speaker.append(np.full(len(enrol), k))
    profile, speaker = np.concatenate(profile), np.concatenate(speaker)
    return {"cos": np.concatenate(cos), "profile": profile, "speaker": speaker, "genuine": profile == speaker}


def trial_cosines(enrol: list, attempts: list) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) cosines, (n, S) each: see :func:`trials`."""
    t = trials(enrol, attempts)
    return t["cos"][t["genuine"]], t["cos"][~t["genuine"]]


def eer(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(equal error rate, threshold) of scores where higher means "same speaker"."""
    g, i = np.sort(np.ravel(genuine)), np.sort(np.ravel(impostor))
    thr = np.unique(np.concatenate([g, i]))
    frr = np.searchsorted(g, thr, side="left") / g.size  # genuine below the threshold
    far = 1.0 - np.searchsorted(i, thr, side="left") / i.size  # impostors at or above it
    j = int(np.argmin(np.abs(frr - far)))
    return float((frr[j] + far[j]) / 2.0), float(thr[j])


def frr_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float = 0.01) -> tuple[float, float]:
    """(FRR, threshold) at the lowest threshold whose FAR is <= ``far``."""
    g, i = np.ravel(genuine), np.sort(np.ravel(impostor))
    k = int(np.floor(far * i.size))  # impostors that may be accepted (score >= threshold)
    thr = float(np.nextafter(i[i.size - 1 - k], np.inf)) if k < i.size else float(i[0])
    return float(np.mean(g < thr)), thr


# --- checkpoints -------------------------------------------------------------------------------
def save_encoder(path, training: EncoderTraining, extra: Optional[dict] = None) -> Path:
    """Config + weights of the encoder (and its training parts) + ``extra`` (plain JSON values)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        **plain(extra or {}),
        "format": ENCODER_CHECKPOINT_FORMAT,
        "encoder_config": training.encoder.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in training.encoder.state_dict().items()},
        "training_state_dict": {k: v.detach().cpu() for k, v in training.state_dict().items()},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return path


def load_encoder(path) -> tuple[SpeakerEncoder, dict]:
    """(encoder on cpu in eval mode, checkpoint dict) from the checkpoint alone."""
    from .torchutil import read_checkpoint

    ckpt = read_checkpoint(path, ENCODER_CHECKPOINT_FORMAT, "encoder checkpoint")
    model = SpeakerEncoder(EncoderConfig.from_dict(ckpt["encoder_config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt

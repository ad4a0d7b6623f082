"""Torch plumbing used everywhere on the training side: device choice and seeding.

Device selection happens here and nowhere else: CUDA when present, then Apple MPS, then CPU,
unless the caller names one (``--device``).
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def select_device(name: str | None = None) -> torch.device:
    """``None``/``"auto"`` -> cuda > mps > cpu; anything else is taken as a torch device string."""
    if name and name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if device.type == "mps" and not _mps_available():
            raise ValueError(f"--device {name}: MPS is not available on this machine")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif _mps_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    log.info("device: %s", device)
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator for DataLoader shuffling/augmentation."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(threads: int | None) -> None:
    """Limit torch's CPU threads (``None`` keeps torch's default)."""
    if threads:
        torch.set_num_threads(int(threads))


def read_checkpoint(path, fmt: str, what: str = "checkpoint") -> dict:
    """The dict saved at ``path`` (on the CPU, weights only), refused unless its ``format`` is ``fmt``."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's own messages run to many lines (and advise weights_only=False)
        raise ValueError(f"{path}: not a readable {what} (torch.load failed: {type(e).__name__}; "
                         "truncated, or not a voicegate checkpoint?)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise ValueError(f"{path}: not a voicegate {what} (expected format {fmt})")
    return ckpt

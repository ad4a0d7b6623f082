"""A thin torch view over a prepared corpus (see voicegate.train.data.prepare).

The prepared corpus owns the windows (``images``: float16 (N, 224, 224), memory-mapped) and a
per-window index (speaker, recording, split, label, role, aug). This module only selects rows of
one split and hands them to torch as float32 (1, 224, 224) tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass
class SplitData:
    """The rows of one split: positions in ``images`` and their per-window metadata."""

    name: str
    rows: np.ndarray  # int64 positions into the corpus images
    labels: np.ndarray  # int64, 1 = allowed
    speakers: np.ndarray  # str
    recordings: np.ndarray  # str

    def __len__(self) -> int:
        return int(self.rows.size)

    def subset(self, n: int, seed: int) -> "SplitData":
        """A seeded random subset of n rows (all rows when n >= len)."""
        if n >= len(self):
            return self
        pick = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return SplitData(self.name, self.rows[pick], self.labels[pick], self.speakers[pick], self.recordings[pick])


def split_data(corpus, split: str, aug: bool = True) -> SplitData:
    """Rows of ``split``; ``aug=False`` keeps only the clean windows (no augmented copies)."""
    rows = corpus.indices(split, aug=aug).astype(np.int64)
    index = corpus.index
    return SplitData(
        name=split,
        rows=rows,
        labels=index.label[rows].astype(np.int64),
        speakers=index.speaker[rows].astype(str),
        recordings=index.recording[rows].astype(str),
    )


def speaker_roles(corpus) -> dict:
    """{role: sorted speakers} from the corpus index."""
    speakers, roles = corpus.index.speaker, corpus.index.role
    return {str(r): sorted(map(str, set(speakers[roles == r]))) for r in sorted(set(roles))}


class WindowDataset(Dataset):
    """(image float32 (1, H, W), label int64) pairs for the rows of one split."""

    def __init__(self, images, data: SplitData):
        self.images = images
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        img = np.asarray(self.images[self.data.rows[i]], dtype=np.float32)
        return torch.from_numpy(img).unsqueeze(0), int(self.data.labels[i])

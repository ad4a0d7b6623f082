"""A tiny in-memory stand-in for a prepared corpus (voicegate.train.prepare.PreparedCorpus).

Same shape as the real thing: ``images`` float16 (N, 224, 224) in [0, 1], ``index`` with one row
per window (speaker, recording, split, label, role, aug) and ``indices(split, aug=None)``. Each
speaker's windows carry a bright horizontal band at the speaker's own frequency rows, so a tiny
CNN can learn allowed vs not allowed within a couple of epochs.
"""

from __future__ import annotations

import numpy as np

SPEAKERS = {  # speaker: (role, band row)
    "a1": ("allowed", 30),
    "a2": ("allowed", 100),
    "n1": ("not_allowed_train", 60),
    "n2": ("not_allowed_train", 140),
    "n3": ("not_allowed_train", 180),
    "h1": ("heldout_impostors", 120),
}
SPLIT_OF_RECORDING = ("train", "train", "train", "val", "test")


class FakeCorpus:
    def __init__(self, windows_per_recording: int = 4, size: int = 224, seed: int = 0, train_aug_copies: int = 1):
        rng = np.random.default_rng(seed)
        images, rows = [], []
        for spk, (role, band) in SPEAKERS.items():
            for r, split in enumerate(SPLIT_OF_RECORDING):
                split = "heldout" if role == "heldout_impostors" else split
                copies = 1 + (train_aug_copies if split == "train" else 0)
                for w in range(windows_per_recording):
                    clean = 0.2 * rng.random((size, size))
                    start = rng.integers(0, size // 2)
                    clean[band : band + 12, start : start + size // 2] += 0.7
                    for aug in range(copies):
                        img = clean if aug == 0 else clean + 0.1 * rng.random((size, size))
                        images.append(np.clip(img, 0, 1))
                        rows.append((spk, f"{spk}-{r}", split, int(role == "allowed"), role, aug))
        self.images = np.stack(images).astype(np.float16)
        cols = list(zip(*rows))
        names = ("speaker", "recording", "split", "label", "role", "aug")
        self.index = {n: np.asarray(c) for n, c in zip(names, cols)}

    def indices(self, split: str, aug=None) -> np.ndarray:
        m = self.index["split"] == split
        if aug is not None:
            m &= self.index["aug"] == aug
        return np.flatnonzero(m)

"""A tiny in-memory prepared corpus (a real voicegate.train.data.cache.PreparedCorpus, no audio).

Each speaker's windows carry a bright horizontal band at the speaker's own frequency rows, so a
tiny CNN can learn allowed vs not allowed within a couple of epochs. Train recordings also get
augmented copies (aug > 0), as preparation makes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voicegate.train.data.cache import PreparedCorpus, WindowIndex

SPEAKERS = {  # speaker: (role, band row)
    "a1": ("allowed", 30),
    "a2": ("allowed", 100),
    "n1": ("not_allowed_train", 60),
    "n2": ("not_allowed_train", 140),
    "n3": ("not_allowed_train", 180),
    "h1": ("heldout_impostors", 120),
}
SPLIT_OF_RECORDING = ("train", "train", "train", "val", "test")


def fake_corpus(windows_per_recording: int = 4, seed: int = 0, train_aug_copies: int = 1) -> PreparedCorpus:
    rng = np.random.default_rng(seed)
    size = 224
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
                    rec = f"{spk}-{r}"
                    rows.append((spk, rec, rec, split, int(role == "allowed"), role, aug, 0.5 * w))
    roles = {role: [s for s, (r, _) in SPEAKERS.items() if r == role] for role, _ in SPEAKERS.values()}
    meta = {"roles": roles}
    return PreparedCorpus(Path("fake"), np.stack(images).astype(np.float16), WindowIndex.from_rows(rows), meta, {})

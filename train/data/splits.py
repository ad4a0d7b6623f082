"""Train/val/test splits by recording, stratified by speaker, with a leakage check.

The split unit is the recording id (a DAPS script of one speaker, a source file, a round of
commands), never a window, so no fragment of one recording can appear in two splits.

* Each speaker's recording ids are sorted, shuffled with a generator seeded from
  ``(seed, speaker)`` and divided 60/20/20 (at least one each for val and test). Seeding per
  speaker keeps one speaker's split unchanged when other speakers are added or removed.
* A speaker with fewer than 3 recordings cannot be stratified: each of its recordings goes to
  train, val or test at random (seeded) with the 60/20/20 probabilities.
* Held-out impostors get the split ``"heldout"`` for every recording, and nothing else does.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np

from voicegate.train.data.corpus import Recording, Roles

TRAIN, VAL, TEST, HELDOUT = "train", "val", "test", "heldout"
SPLITS = (TRAIN, VAL, TEST)
ALL_SPLITS = (TRAIN, VAL, TEST, HELDOUT)
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
MIN_STRATIFIED = 3  # recordings a speaker needs for a per-speaker 60/20/20 division


def keyed_rng(seed: int, *keys: object) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``keys`` (stable across runs and machines)."""
    text = "\x1f".join(str(k) for k in (seed, *keys))
    digest = hashlib.sha256(text.encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or min(f) < 0 or abs(sum(f) - 1.0) > 1e-6 or f[0] <= 0:
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    return f  # type: ignore[return-value]


def split_sizes(n: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[int, int, int]:
    """(train, val, test) counts for one speaker's ``n >= MIN_STRATIFIED`` recordings."""
    _, f_val, f_test = check_fractions(fractions)
    n_val = max(1, round(f_val * n)) if f_val > 0 else 0
    n_test = max(1, round(f_test * n)) if f_test > 0 else 0
    return n - n_val - n_test, n_val, n_test


def split_recordings(
    recordings: Iterable[Recording],
    roles: Roles,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> dict[str, str]:
    """Map every recording id to ``train``, ``val``, ``test`` or ``heldout``."""
    fractions = check_fractions(fractions)
    per_speaker: dict[str, set[str]] = {}
    for r in recordings:
        per_speaker.setdefault(r.speaker, set()).add(r.recording)
    out: dict[str, str] = {}
    for speaker in sorted(per_speaker):
        ids = sorted(per_speaker[speaker])
        if speaker in roles.heldout_impostors:
            out.update((i, HELDOUT) for i in ids)
            continue
        rng = keyed_rng(seed, "split", speaker)
        if len(ids) < MIN_STRATIFIED:
            picks = rng.choice(len(SPLITS), size=len(ids), p=fractions)
            out.update((i, SPLITS[k]) for i, k in zip(ids, picks))
            continue
        order = [ids[k] for k in rng.permutation(len(ids))]
        n_train, n_val, _ = split_sizes(len(ids), fractions)
        for pos, i in enumerate(order):
            out[i] = TRAIN if pos < n_train else VAL if pos < n_train + n_val else TEST
    return out


def count_leakage(pairs: Iterable[tuple[str, str]]) -> int:
    """Number of recording ids that occur in more than one split, from (recording, split) pairs."""
    seen: dict[str, set[str]] = {}
    for rec, split in pairs:
        seen.setdefault(str(rec), set()).add(str(split))
    return sum(1 for s in seen.values() if len(s) > 1)


def count_heldout_violations(pairs: Iterable[tuple[str, str]], roles: Roles) -> int:
    """Rows that break the held-out rule, from (speaker, split) pairs.

    A held-out impostor outside ``heldout`` (so in train, val or test), or any other speaker
    inside ``heldout``, counts as one violation.
    """
    heldout = set(roles.heldout_impostors)
    return sum(1 for spk, split in pairs if (str(spk) in heldout) != (split == HELDOUT))

"""Speaker roles: who the gate lets in, who else training may use, who is kept out for open-set tests.

``roles.json`` beside a corpus holds the three lists (:data:`ROLE_NAMES`); :class:`Roles` reads,
checks, overrides and completes them (:mod:`.corpus` re-exports everything here).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

log = logging.getLogger("voicegate.train.data.corpus")

ROLE_ALLOWED = "allowed"
ROLE_NOT_ALLOWED = "not_allowed_train"
ROLE_HELDOUT = "heldout_impostors"
ROLE_NAMES = (ROLE_ALLOWED, ROLE_NOT_ALLOWED, ROLE_HELDOUT)


class CorpusError(ValueError):
    """The corpus cannot be read (bad layout, bad manifest, conflicting roles)."""


def _names(values: Optional[Iterable]) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        values = values.split(",")
    out = []
    for v in values:
        v = str(v).strip()
        if v and v not in out:
            out.append(v)
    return tuple(out)


@dataclass(frozen=True)
class Roles:
    """Who the gate lets in, who else training may use, and who is kept out for open-set tests."""

    allowed: tuple[str, ...] = ()
    not_allowed_train: tuple[str, ...] = ()
    heldout_impostors: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "allowed", _names(self.allowed))
        object.__setattr__(self, "not_allowed_train", _names(self.not_allowed_train))
        object.__setattr__(self, "heldout_impostors", _names(self.heldout_impostors))
        seen: dict[str, str] = {}
        for role in ROLE_NAMES:
            for spk in getattr(self, role):
                if spk in seen:
                    raise CorpusError(f"speaker {spk!r} is both {seen[spk]} and {role}")
                seen[spk] = role

    def role_of(self, speaker: str) -> str:
        if speaker in self.allowed:
            return ROLE_ALLOWED
        if speaker in self.heldout_impostors:
            return ROLE_HELDOUT
        return ROLE_NOT_ALLOWED

    def label_of(self, speaker: str) -> int:
        """Class index: 1 = allowed, 0 = not allowed (training speakers and impostors alike)."""
        return 1 if speaker in self.allowed else 0

    def to_dict(self) -> dict:
        return {r: list(getattr(self, r)) for r in ROLE_NAMES}

    @classmethod
    def from_dict(cls, d: dict) -> "Roles":
        unknown = set(d) - set(ROLE_NAMES)
        if unknown:
            raise CorpusError(f"roles: unknown keys {sorted(unknown)} (expected {list(ROLE_NAMES)})")
        return cls(*(d.get(r, ()) for r in ROLE_NAMES))

    @classmethod
    def from_file(cls, path: os.PathLike | str) -> "Roles":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CorpusError(f"{path}: cannot read roles ({e})") from None
        if not isinstance(data, dict):
            raise CorpusError(f"{path}: roles must be a JSON object")
        return cls.from_dict(data)

    def with_overrides(
        self,
        allowed: Optional[Iterable[str]] = None,
        impostors: Optional[Iterable[str]] = None,
    ) -> "Roles":
        """Replace the allowed and/or held-out lists; displaced speakers become training speakers.

        A speaker named in both overrides is an error. Anyone dropped from ``allowed`` or from
        ``heldout_impostors`` becomes a not-allowed training speaker (logged).
        """
        new_allowed = self.allowed if allowed is None else _names(allowed)
        new_heldout = self.heldout_impostors if impostors is None else _names(impostors)
        if impostors is None:  # an allowed override may pull a speaker out of the held-out list
            new_heldout = tuple(s for s in new_heldout if s not in new_allowed)
        elif allowed is None:  # and an impostor override out of the allowed list
            new_allowed = tuple(s for s in new_allowed if s not in new_heldout)
        both = set(new_allowed) & set(new_heldout)
        if both:
            raise CorpusError(f"speakers {sorted(both)} are both allowed and held-out impostors")
        everyone = [*self.allowed, *self.not_allowed_train, *self.heldout_impostors]
        taken = set(new_allowed) | set(new_heldout)
        rest = tuple(s for s in everyone if s not in taken)
        moved = [s for s in rest if s not in self.not_allowed_train]
        if moved:
            log.info("roles override: %s now train as not-allowed speakers", ", ".join(moved))
        return Roles(new_allowed, rest, new_heldout)

    def resolve(self, speakers: Iterable[str]) -> "Roles":
        """These roles with every speaker of the corpus placed; unlisted ones are not-allowed."""
        listed = set(self.allowed) | set(self.not_allowed_train) | set(self.heldout_impostors)
        present = sorted(set(speakers))
        extra = [s for s in present if s not in listed]
        if extra:
            shown = ", ".join(extra[:10]) + (f" (+{len(extra) - 10} more)" if len(extra) > 10 else "")
            log.info("%d speaker(s) not named in the roles become not_allowed_train: %s", len(extra), shown)
        missing = [s for s in self.allowed if s not in set(present)]
        if missing:
            log.warning("allowed speaker(s) with no recordings in the corpus: %s", ", ".join(missing))
        return Roles(self.allowed, (*self.not_allowed_train, *extra), self.heldout_impostors)

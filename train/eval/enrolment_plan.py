"""Who enrols and who attacks in the enrolment protocol, the unseen-speaker check, and the trials.

Steps 1 to 4 of :mod:`.enrolment` (its docstring has the protocol): :func:`plan_speakers` (who
enrols from which recordings, which recordings give attempts), :func:`training_speakers` and
:func:`check_unseen` (nobody the encoder trained or chose thresholds on is enrolled or attacks),
:func:`make_trials` (every attempt against every profile, never an attempt from a recording its
profile was enrolled from).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from voicegate.train.eval.protocol import EvalError

log = logging.getLogger(__name__)

ENROLLED_ROLES = ("allowed", "heldout_impostors")


class ProtocolError(EvalError):
    """The protocol cannot run, or would break its own rules (a trained speaker enrolled, ...)."""



# --- who enrols, what attempts ------------------------------------------------------------------
@dataclass
class SpeakerPlan:
    speaker: str
    role: str  # allowed | heldout_impostors
    enrol: list = field(default_factory=list)  # Recordings to enrol from, in order
    attempts: list = field(default_factory=list)  # Recordings that give attempts
    halves: bool = False  # one recording: enrol from the first half of its speech, attempt with the second

    @property
    def enrolled(self) -> bool:
        return bool(self.enrol)

    def pieces(self, which: str) -> list:
        """[(piece id, Recording, half)] of ``enrol`` or ``attempts``; half is None (all of it),
        0 or 1 (the first or second half of the recording's speech, with its own piece id)."""
        recs = self.enrol if which == "enrol" else self.attempts
        if not self.halves:
            return [(r.recording, r, None) for r in recs]
        half = 0 if which == "enrol" else 1
        return [(f"{r.recording}#{('first', 'second')[half]}-half", r, half) for r in recs]


def plan_speakers(recordings: Sequence, roles, split_seed: int = 0,
                  split_fractions: Sequence[float] = (0.6, 0.2, 0.2), halves: bool = False) -> list[SpeakerPlan]:
    """One plan per allowed and held-out speaker (see the module docstring, steps 1 to 3).

    ``halves``: a held-out speaker with a single recording enrols from the first half of its
    speech and attempts with the second half, instead of being impostor-only (an opt-in,
    weaker protocol: enrolment and attempts then share one recording session)."""
    from voicegate.train.data.splits import TRAIN, split_recordings

    assignment = split_recordings(recordings, roles, split_seed, split_fractions)
    by_speaker: dict[str, dict[str, list]] = {}
    for rec in sorted(recordings, key=lambda r: (r.speaker, r.recording, r.item)):
        by_speaker.setdefault(rec.speaker, {}).setdefault(rec.recording, []).append(rec)
    plans = []
    for role in ENROLLED_ROLES:
        for spk in getattr(roles, role):
            groups = by_speaker.get(spk)
            if not groups:
                log.warning("%s speaker %s has no recordings; not enrolled", role, spk)
                continue
            ids = sorted(groups)
            if role == "allowed":
                enrol_ids = [i for i in ids if assignment[i] == TRAIN]
                if len(enrol_ids) in (0, len(ids)):  # too few recordings to split: first half
                    enrol_ids = ids[: len(ids) // 2]
            else:
                enrol_ids = ids[: len(ids) // 2]  # one recording: nothing to enrol from
            rest = [i for i in ids if i not in enrol_ids]
            if halves and len(ids) == 1 and role != "allowed":
                plans.append(SpeakerPlan(spk, role, list(groups[ids[0]]), list(groups[ids[0]]), halves=True))
                continue
            plans.append(SpeakerPlan(spk, role, [r for i in enrol_ids for r in groups[i]],
                                     [r for i in rest for r in groups[i]]))
    return plans


SPEAKER_LISTS = ("training_speakers", "validation_speakers")


ANY_CORPUS = "every corpus's ids (this corpus's name is not one the contract knows)"


def training_speakers(contract, corpus_name: str) -> tuple[Optional[set], list]:
    """(speakers of ``corpus_name`` the encoder trained on or chose thresholds on, the names of
    the lists found) from its contract: ``corpus[...]`` or ``extra[...]`` under SPEAKER_LISTS,
    each {corpus name: [ids]} or a list of "corpus/id" strings. (None, []) without any list.

    A corpus is named by its folder. When ``corpus_name`` is none of the names in the contract
    (a renamed copy, ``LibriSpeech/`` for ``librispeech/``), its speakers are checked against
    every corpus's ids instead, so a copy of a training corpus cannot pass as unseen."""
    if contract is None:
        return None, []
    found, per_corpus = [], {}
    for key in SPEAKER_LISTS:
        for where in (contract.corpus or {}, contract.extra or {}):
            value = where.get(key)
            if not isinstance(value, (dict, list, tuple)):
                continue
            found.append(key)
            if isinstance(value, dict):
                for name, ids in value.items():
                    per_corpus.setdefault(str(name), set()).update(map(str, ids))
            else:
                for s in map(str, value):
                    name, _, sid = s.partition("/")
                    if sid:
                        per_corpus.setdefault(name, set()).add(sid)
    if not found:
        return None, []
    known = set(per_corpus) | set((contract.corpus or {}).get("corpora") or {})
    lists = sorted(set(found))
    if corpus_name in known or not known:
        return per_corpus.get(corpus_name, set()), lists
    return set().union(*per_corpus.values()), lists + [ANY_CORPUS]


def check_unseen(plans: Sequence[SpeakerPlan], trained: Optional[set], lists: Sequence[str] = SPEAKER_LISTS) -> str:
    """Raise ProtocolError if any enrolled or impostor-only speaker is in ``trained``; say how
    the check was made."""
    if trained is None:
        return "the model's contract lists no training or validation speakers: checked by roles only"
    seen = sorted(p.speaker for p in plans if p.speaker in trained)
    renamed = ANY_CORPUS in lists
    lists = [x for x in lists if x != ANY_CORPUS]
    if seen:
        hint = (": is this folder a renamed copy of a corpus the encoder trained on? give it that "
                "corpus's name" if renamed else "")
        raise ProtocolError(f"speakers the encoder trained on would be enrolled or attack: {seen[:10]}{hint}")
    where = ("speakers of every corpus (this corpus's name is not one the contract knows)" if renamed
             else "speakers of this corpus")
    return (f"none of the {len(plans)} enrolled / impostor-only speakers is among the {len(trained)} "
            f"{where} in the contract's {' and '.join(lists)}")


# --- trials ---------------------------------------------------------------------------------------
@dataclass
class Trials:
    attempt: np.ndarray  # row into the attempt table
    profile: np.ndarray  # row into the profile table
    genuine: np.ndarray  # bool

    def __len__(self) -> int:
        return int(self.attempt.size)


def make_trials(attempt_speakers: Sequence[str], attempt_recordings: Sequence[str],
                profile_speakers: Sequence[str], profile_recordings: Sequence[set]) -> Trials:
    """Every attempt against every profile; genuine iff same speaker. Raises ProtocolError if an
    attempt's recording is one its profile was enrolled from, or a speaker has two profiles."""
    if len(set(profile_speakers)) != len(profile_speakers):
        raise ProtocolError("a speaker has more than one profile")
    a_spk = np.asarray(attempt_speakers, dtype=object)
    a_rec = list(attempt_recordings)
    n_a, n_p = len(a_rec), len(profile_speakers)
    attempt = np.repeat(np.arange(n_a), n_p)
    profile = np.tile(np.arange(n_p), n_a)
    genuine = a_spk[attempt] == np.asarray(profile_speakers, dtype=object)[profile]
    enrolled_from = {rec: p for p, recs in enumerate(profile_recordings) for rec in recs}
    for i, rec in enumerate(a_rec):
        if rec in enrolled_from:
            raise ProtocolError(f"attempt {i} comes from recording {rec!r}, which profile "
                                f"{profile_speakers[enrolled_from[rec]]!r} was enrolled from")
    return Trials(attempt, profile, genuine.astype(bool))

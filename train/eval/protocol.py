"""The evaluation protocol of ``voicegate eval``: which recordings, which roles, which split.

The corpus, its roles and its split are rebuilt from the model's contract (the preparation config
training used) with the training side's own loader and split, so the split is the training split.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

ATTEMPT_SECONDS = 3.0  # one door attempt: about what a person says to be let in
MIN_ATTEMPT_SECONDS = 1.0  # a recording with less trimmed speech than this gives no attempt
IMPOSTOR_SETS = {
    "heldout_impostors": "open set: held-out impostors (never seen in training)",
    "not_allowed_split": "closed set: the not-allowed training speakers' unseen recordings",
}
RETRY_RULE = (
    "an UNCERTAIN attempt is followed by the same speaker's next attempt (the next stretch of "
    "speech in the recording, else in the speaker's next recording, cyclically); its decision is "
    "final, UNCERTAIN again = not granted. Speakers with a single attempt get no retry."
)


class EvalError(ValueError):
    """The evaluation cannot run as asked (no corpus, no speakers of a role, mismatched models): a
    ValueError, so the CLI exits 2 (``voicegate.train.commands.failure_exit``)."""


@dataclass
class EvalConfig:
    models: list = field(default_factory=list)  # exported .onnx paths; empty = the shipped ones
    method: str = "both"  # with no model paths: which shipped models (mc | ensemble | both)
    corpus: Optional[str] = None  # corpus folder; None = the one in the first model's contract
    split: str = "test"  # closed-set split of the known speakers (test or val)
    attempt_seconds: float = ATTEMPT_SECONDS  # length of one door attempt (trimmed speech)
    min_attempt_seconds: float = MIN_ATTEMPT_SECONDS  # shorter recordings give no attempt
    threads: int = 1  # onnxruntime threads per model
    seed: Optional[int] = 0  # onnxruntime seed for the MC masks (None: unseeded)
    out: Optional[str] = None  # folder for eval.json, eval.md and the DET PNGs
    progress: bool = True  # tqdm bar over recordings
    allow_corpus_change: bool = False  # evaluate (loudly warned) even if the corpus fingerprint differs
    nonspeech: bool = True  # also decide the non-speech attempts (noise files, generated noise)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EvalConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def prepare_config_of(contract, corpus: Optional[str] = None):
    """The preparation config training used (from the contract), with ``corpus`` overriding its path."""
    from voicegate.train.data.prepare import PrepareConfig

    data_config = dict((contract.corpus or {}).get("data_config") or {})
    cache = data_config.get("cache") or data_config.get("cache_dir")
    if not data_config.get("corpus") and cache:  # trained from a cache: its meta.json has the config
        try:
            data_config = {**json.loads((Path(cache) / "meta.json").read_text())["config"], **data_config}
        except (OSError, ValueError, KeyError):
            log.warning("cannot read the preparation config of the cache %s", cache)
    from voicegate.train.data.fingerprint import CorpusNotFound, resolve_corpus

    stored = data_config.get("corpus") or (contract.corpus or {}).get("name")
    if not stored and not corpus:
        raise EvalError("the model's contract names no training corpus; pass --corpus")
    try:
        data_config["corpus"] = str(resolve_corpus(stored or "", corpus))
    except CorpusNotFound as e:
        raise EvalError(str(e)) from None
    known = PrepareConfig.__dataclass_fields__
    return PrepareConfig.from_dict({k: v for k, v in data_config.items() if k in known})


def contract_roles(contract) -> dict:
    roles = (contract.corpus or {}).get("roles") or {}
    return {k: list(v) for k, v in roles.items() if v}


def evaluation_recordings(prep_cfg, roles: dict, split: str = "test"):
    """(corpus, [(Recording, role, split)], fingerprint): the closed-set ``split`` recordings of
    the known speakers and every recording of the held-out impostors, in (speaker, recording)
    order, and the fingerprint of the split rebuilt here (:mod:`voicegate.train.data.fingerprint`).

    ``roles`` (the model's training roles) override the corpus's default allowed and held-out
    lists, as they did in training, so labels mean what the model learned.
    """
    from voicegate.train.data.corpus import ROLE_HELDOUT, load_corpus
    from voicegate.train.data.build import limit_recordings
    from voicegate.train.data.fingerprint import fingerprint
    from voicegate.train.data.splits import HELDOUT, split_recordings

    root = Path(prep_cfg.corpus).expanduser()
    if not root.exists():
        raise EvalError(f"corpus folder {root} not found (--corpus names it, else the model's contract)")
    allowed = roles.get("allowed") or prep_cfg.allowed
    impostors = roles.get("heldout_impostors") if "heldout_impostors" in roles else prep_cfg.impostors
    corpus = load_corpus(root, prep_cfg.layout, prep_cfg.versions, allowed, impostors)
    recordings = sorted(
        limit_recordings(corpus.recordings, prep_cfg.max_recordings_per_speaker),
        key=lambda r: (r.speaker, r.recording, r.item),
    )
    assignment = split_recordings(recordings, corpus.roles, prep_cfg.seed, prep_cfg.split_fractions)
    chosen = []
    for rec in recordings:
        role = corpus.roles.role_of(rec.speaker)
        where = assignment[rec.recording]
        if (role == ROLE_HELDOUT and where == HELDOUT) or (role != ROLE_HELDOUT and where == split):
            chosen.append((rec, role, where))
    fp = fingerprint(corpus.root, ((r.recording, assignment[r.recording]) for r in recordings))
    return corpus, chosen, fp


def check_fingerprint(contract, here: dict, allow_change: bool = False) -> dict:
    """Compare the contract's training-corpus fingerprint with the split rebuilt ``here``.

    A difference is refused (EvalError) unless ``allow_change``, which logs a loud warning and
    records the differences in the result; a contract without a fingerprint is warned about.
    """
    from voicegate.train.data.fingerprint import differences

    stored = (contract.corpus or {}).get("fingerprint")
    if not stored:
        log.warning("the model's contract has no corpus fingerprint (exported before fingerprints): "
                    "cannot check that the split is the training split")
        return {"checked": False, "differences": []}
    diff = differences(stored, here)
    if diff and not allow_change:
        raise EvalError("the corpus differs from the one the model was trained on (" + "; ".join(diff[:3])
                        + "); its test split may hold training recordings. Pass the original corpus, or "
                        "--allow-corpus-change to evaluate anyway")
    for d in diff:
        log.warning("CORPUS CHANGED since training: %s", d)
    return {"checked": True, "same": not diff, "differences": diff}

"""The configuration of ``voicegate prepare``: what a prepared cache is built from, and its CLI options.

Nothing heavy is imported here: this module builds the CLI's ``--help``.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

from voicegate.device.features import INFER_HOP_SECONDS, TRAIN_HOP_SECONDS

from voicegate.train.data.splits import DEFAULT_FRACTIONS

PREPARE_VERSION = 2  # bump when preparation changes what it writes for the same inputs
CACHE_ENV = "VOICEGATE_CACHE"
# fields of older configs: per-class copies (4 for the allowed class, 1 for the others) taught the
# model that noise means "allowed" (issue 10); every class now gets ``aug_copies``
LEGACY_FIELDS = ("aug_copies_allowed", "aug_copies_other")

log = logging.getLogger(__name__)


@dataclass
class PrepareConfig:
    corpus: str
    cache_dir: Optional[str] = None  # None: $VOICEGATE_CACHE or ~/.cache/voicegate, then <name>-<key>
    layout: str = "auto"
    allowed: Optional[list[str]] = None  # overrides roles.json's allowed list
    impostors: Optional[list[str]] = None  # overrides roles.json's heldout_impostors list
    versions: Optional[list[str]] = None  # DAPS versions; None = every version found
    seed: int = 0
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    train_hop_seconds: float = TRAIN_HOP_SECONDS
    eval_hop_seconds: float = INFER_HOP_SECONDS
    aug_copies: int = 2  # augmented copies per training recording, the same for every class
    nonspeech_windows: int = 480  # pure non-speech "not allowed" training windows (0: none)
    snr_db: tuple[float, float] = (5.0, 20.0)
    pitch_semitones: float = 1.5
    pitch_prob: float = 0.5
    noise_prob: float = 0.8
    max_shift_seconds: float = TRAIN_HOP_SECONDS
    noise_dir: Optional[str] = "auto"  # "auto": <corpus>/../noise if present; None: synthetic only
    max_recordings_per_speaker: Optional[int] = None  # keep the first N recording ids (tests)
    max_read_seconds: Optional[float] = 3600.0  # decode at most this much of any one file
    progress: bool = True
    force: bool = False  # rebuild even when a matching cache exists

    NOT_IN_KEY = ("cache_dir", "progress", "force")

    def __post_init__(self):
        self.split_fractions = tuple(float(f) for f in self.split_fractions)  # type: ignore[assignment]
        self.snr_db = tuple(float(f) for f in self.snr_db)  # type: ignore[assignment]
        if self.aug_copies < 0 or self.nonspeech_windows < 0:
            raise ValueError("augmented copies and non-speech windows must be >= 0")
        if self.train_hop_seconds <= 0 or self.eval_hop_seconds <= 0:
            raise ValueError("window hops must be > 0 seconds")
        if len(self.snr_db) != 2 or self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"snr_db must be (low, high), got {self.snr_db}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["split_fractions"] = list(self.split_fractions)
        d["snr_db"] = list(self.snr_db)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PrepareConfig":
        d = dict(d)
        legacy = [k for k in LEGACY_FIELDS if k in d]
        if legacy:  # models trained before every class got the same copies; their split is the same
            log.info("PrepareConfig: ignoring the legacy fields %s (now one aug_copies for every class)", legacy)
            for k in legacy:
                d.pop(k)
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"PrepareConfig: unknown fields {sorted(unknown)}")
        return cls(**d)

    def key_dict(self) -> dict:
        d = self.to_dict()
        for k in self.NOT_IN_KEY:
            d.pop(k, None)
        d["corpus"] = str(Path(self.corpus).expanduser().resolve())
        return d


def default_cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from voicegate.device.xdg import base

    return base("XDG_CACHE_HOME") / "voicegate"


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _pair(text: str) -> tuple[float, float]:
    parts = [float(t) for t in text.split(",")]
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}")
    return parts[0], parts[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = PrepareConfig(corpus="")
    parser.add_argument("--corpus", required=True, help="corpus folder (manifest, DAPS or folder-per-speaker layout)")
    parser.add_argument("--cache", help="cache folder (default: $VOICEGATE_CACHE or ~/.cache/voicegate/<name>-<key>)")
    parser.add_argument("--layout", choices=["auto", "manifest", "daps", "folders"], default=d.layout)
    parser.add_argument("--allowed", nargs="+", type=_csv_list, metavar="SPEAKER",
                        help="allowed speakers, space or comma separated, as for train (overrides roles.json)")
    parser.add_argument("--impostors", nargs="+", type=_csv_list, metavar="SPEAKER",
                        help="held-out impostor speakers, space or comma separated (overrides roles.json)")
    parser.add_argument("--versions", type=_csv_list, help="DAPS versions to use, comma separated (default: all found)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--aug-copies", type=int, default=d.aug_copies,
                        help="augmented copies per train recording, the same for every class (default %(default)s)")
    parser.add_argument("--nonspeech-windows", type=int, default=d.nonspeech_windows,
                        help="pure non-speech 'not allowed' train windows: noise files, coloured noise, hum (default %(default)s)")
    parser.add_argument("--snr", type=_pair, default=d.snr_db, metavar="LOW,HIGH", help="noise SNR range in dB")
    parser.add_argument("--pitch", type=float, default=d.pitch_semitones, help="largest pitch shift in semitones (0: none)")
    parser.add_argument("--pitch-prob", type=float, default=d.pitch_prob, help="share of augmented copies that are pitch shifted")
    parser.add_argument("--noise", default=d.noise_dir, help="noise folder, 'auto' (<corpus>/../noise) or 'none'")
    parser.add_argument("--max-per-speaker", type=int, help="use only the first N recordings of each speaker")
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching cache exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    return PrepareConfig(
        corpus=args.corpus,
        cache_dir=args.cache,
        layout=args.layout,
        allowed=None if args.allowed is None else [n for part in args.allowed for n in part],
        impostors=None if args.impostors is None else [n for part in args.impostors for n in part],
        versions=args.versions,
        seed=args.seed,
        aug_copies=args.aug_copies,
        nonspeech_windows=args.nonspeech_windows,
        snr_db=args.snr,
        pitch_semitones=args.pitch,
        pitch_prob=args.pitch_prob,
        noise_dir=args.noise,
        max_recordings_per_speaker=args.max_per_speaker,
        force=args.force,
        progress=not args.no_progress,
    )

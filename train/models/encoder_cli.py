"""`voicegate train-encoder`: its options, checked before the minutes of data preparation, then
the data set (:mod:`voicegate.train.data.encoder_data`) and the training loop
(:mod:`voicegate.train.models.fit_encoder`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from voicegate.device.options import (NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT,
                                      PROBABILITY, number)

from .fit_encoder import BEST_NAME, CHECKPOINT_NAME, EncoderTrainConfig, train_encoder


def corpora_in(folder: Path) -> list[Path]:
    """Every sub-folder of ``folder`` with a manifest.csv and a roles.json."""
    return sorted(p for p in Path(folder).iterdir() if (p / "manifest.csv").is_file() and (p / "roles.json").is_file())


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = EncoderTrainConfig()
    p.add_argument("--corpus", action="append", default=[], help="a corpus folder (manifest.csv + roles.json); repeat")
    p.add_argument("--corpora", help="a folder whose every corpus (manifest + roles) is used, e.g. ../shared/data")
    p.add_argument("--noise", help="folder of real noise recordings for the channel augmentation")
    p.add_argument("--cache", default=d.data, help="encoder data cache folder (default %(default)s)")
    p.add_argument("--out", default=d.out, help="run folder (default %(default)s)")
    p.add_argument("--epochs", type=POSITIVE_INT, default=d.epochs, help="at most this many epochs (default %(default)s)")
    p.add_argument("--minutes", type=POSITIVE_FLOAT, default=d.minutes,
                   help="wall-clock budget; the LR schedule follows it (default %(default)s)")
    p.add_argument("--batch-size", type=number(int, 2), default=d.batch_size,
                   help="windows per step (default %(default)s)")
    p.add_argument("--lr", type=POSITIVE_FLOAT, default=d.lr, help="AdamW peak learning rate (default %(default)s)")
    p.add_argument("--distill-weight", type=NON_NEGATIVE_FLOAT, default=d.distill_weight, help="0 trains without the teacher")
    p.add_argument("--distill-center", action="store_true",
                   help="distil to the teacher's embeddings minus their training mean (the part that tells "
                        "voices apart) rather than to the raw, all-positive embeddings")
    p.add_argument("--no-teacher", action="store_true", help="prepare no teacher embeddings (and train without)")
    p.add_argument("--dropout", type=number(float, 0.0, 0.95), default=0.2, help="head dropout = the MC-dropout rate (default %(default)s)")
    p.add_argument("--embedding-dim", type=POSITIVE_INT, default=128, help="embedding size D (default %(default)s)")
    p.add_argument("--margin", type=NON_NEGATIVE_FLOAT, default=0.2, help="AAM-softmax additive angular margin (default %(default)s)")
    p.add_argument("--scale", type=POSITIVE_FLOAT, default=30.0, help="AAM-softmax scale s (default %(default)s)")
    p.add_argument("--max-windows", type=POSITIVE_INT, default=20, help="windows per recording (default %(default)s)")
    p.add_argument("--aug-copies", type=NON_NEGATIVE_INT, default=3, help="augmented copies per window (default %(default)s)")
    p.add_argument("--limit-speakers", type=NON_NEGATIVE_INT, default=0, help="tiny runs: training speakers per corpus")
    p.add_argument("--threads", type=POSITIVE_INT, default=d.threads, help="torch CPU threads (default %(default)s)")
    p.add_argument("--init", metavar="CHECKPOINT", default="",
                   help="fine-tune this encoder checkpoint (same speakers and architecture) instead of "
                        "starting from random weights; the AAM margin is then on from the first step")
    p.add_argument("--workers", type=POSITIVE_INT, default=2, help="processes preparing the data")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="training seed: initialisation, batch order, augmentation choice (default %(default)s); "
                        "ensemble members differ in it")
    p.add_argument("--data-seed", type=int, default=0,
                   help="seed of the prepared data (validation speakers, channels; default %(default)s): keep it "
                        "equal across ensemble members so they share one cache and one validation split")
    p.add_argument("--relation-weight", type=NON_NEGATIVE_FLOAT, default=d.relation_weight,
                   help="weight of the relational distillation loss (the student's batch cosines follow the "
                        "teacher's; default %(default)s: off)")
    p.add_argument("--pseudo-warps", default="",
                   help="frequency-warp factors, e.g. 0.9,1.1: each makes a pseudo-speaker of every speaker")
    p.add_argument("--pseudo-prob", type=PROBABILITY, default=None,
                   help=f"share of the windows shown as a pseudo-speaker; needs --pseudo-warps "
                        f"(default {DEFAULT_PSEUDO_PROB} with them)")
    p.add_argument("--speaker-fraction", type=number(float, 0.0, 1.0, low_open=True), default=1.0,
                   help="ablation: train (from scratch) on this share of each corpus's training speakers, "
                        "drawn with --seed; validation speakers unchanged (default %(default)s: all)")


DEFAULT_PSEUDO_PROB = 0.3


def pseudo_options(warps_text: str, prob: float | None) -> tuple[tuple, float]:
    """``--pseudo-warps`` and ``--pseudo-prob`` -> (warp factors, share of pseudo-speaker
    windows). ValueError for a factor that is not a number in (0.5, 2) other than 1 (1 is the
    speaker itself), or a share given without factors (it would silently do nothing)."""
    parts = [w.strip() for w in warps_text.split(",") if w.strip()]
    try:
        warps = tuple(float(w) for w in parts)
    except ValueError:
        raise ValueError(f"--pseudo-warps {warps_text!r}: give comma-separated numbers, e.g. 0.9,1.1") from None
    bad = [w for w in warps if not (0.5 < w < 2.0) or w == 1.0]
    if bad:
        raise ValueError(f"--pseudo-warps: {bad[0]:g} is not a warp factor in (0.5, 2) other than 1")
    if not warps:
        if prob is not None:
            raise ValueError("--pseudo-prob needs --pseudo-warps (the pseudo-speakers' warp factors)")
        return (), 0.0
    return warps, DEFAULT_PSEUDO_PROB if prob is None else float(prob)


def run(args: argparse.Namespace) -> int:
    from voicegate.train.commands import error_text, failure_exit
    from voicegate.train.data.encoder_data import EncoderDataConfig, prepare_encoder_data

    corpora = [Path(c) for c in args.corpus]
    if args.corpora:
        corpora += corpora_in(Path(args.corpora))
    if not corpora:
        print("voicegate train-encoder: give --corpus DIR (repeatable) or --corpora DIR", file=sys.stderr)
        return 2
    missing = [str(c) for c in corpora if not (c / "manifest.csv").is_file()]
    if missing:
        print(f"voicegate train-encoder: no manifest.csv in {', '.join(missing)}", file=sys.stderr)
        return 2
    try:  # before the data preparation, which takes minutes
        warps, pseudo_prob = pseudo_options(args.pseudo_warps, args.pseudo_prob)
    except ValueError as e:
        print(f"voicegate train-encoder: {error_text(e)}", file=sys.stderr)
        return 2
    # absolute paths in the run's records: its export must find the cache from any folder
    data_cfg = EncoderDataConfig(corpora=[str(c.resolve()) for c in corpora], cache=str(Path(args.cache).resolve()),
                                 noise_dir=str(Path(args.noise).resolve()) if args.noise else args.noise,
                                 max_windows=args.max_windows, aug_copies=args.aug_copies,
                                 teacher=not args.no_teacher, workers=args.workers, seed=args.data_seed,
                                 limit_speakers=args.limit_speakers)
    try:
        folder = prepare_encoder_data(data_cfg)
    except (ValueError, OSError) as e:
        print(f"voicegate train-encoder: {error_text(e)}", file=sys.stderr)
        return failure_exit(e)
    meta = json.loads((folder / "meta.json").read_text())
    for name, c in meta["per_corpus"].items():
        print(f"{name}: {c['training_speakers']} training speakers, {c['training_windows']} windows; "
              f"{c['validation_speakers']} validation speakers; excluded {c['excluded_allowed']} allowed + "
              f"{c['excluded_heldout']} held-out")
    cfg = EncoderTrainConfig(
        data=str(Path(folder).resolve()), out=str(Path(args.out).resolve()), epochs=args.epochs, minutes=args.minutes, batch_size=args.batch_size,
        lr=args.lr, distill_weight=0.0 if args.no_teacher else args.distill_weight, threads=args.threads,
        seed=args.seed, encoder={"dropout": args.dropout, "embedding_dim": args.embedding_dim,
                                 "margin": args.margin, "scale": args.scale},
        init=args.init, margin_warmup=0.0 if args.init else EncoderTrainConfig.margin_warmup,
        relation_weight=args.relation_weight, distill_center=args.distill_center,
        pseudo_warps=warps, pseudo_prob=pseudo_prob,
        speaker_fraction=args.speaker_fraction,
    )
    try:
        out = train_encoder(cfg)
    except ValueError as e:  # options that do not fit the run (--init of another shape, ...)
        print(f"voicegate train-encoder: {error_text(e)}", file=sys.stderr)
        return failure_exit(e)
    if not (out / CHECKPOINT_NAME).is_file():
        print(f"voicegate train-encoder: no epoch finished within --minutes {args.minutes:g}, so {out} holds "
              "no checkpoint; give it more time", file=sys.stderr)
        return 1
    print(f"encoder run: {out} (checkpoint {out / CHECKPOINT_NAME}, best {out / BEST_NAME})")
    return 0

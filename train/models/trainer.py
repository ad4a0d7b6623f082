"""`voicegate train`: train a seed or compact CNN, or a deep ensemble of them.

Run layout (a single model is an ensemble of one, so export reads one format)::

    runs/NAME/
      run.json                 what was trained: arch, members, model/train/data config, roles
      ensemble.json            mean of the members' p(allowed) on val/test/heldout, with metrics
      member0/
        best.pt  last.pt       checkpoints (config + weights + train/data config + metrics)
        history.json  curves.png  metrics.json
        epochs/epoch000.pt ... only with --save-every-epoch (epoch 0 = the initialisation)
      member1/ ...

Member i uses seed ``seed + i``: its own initialisation, data order and augmentation draws.
Model selection is on validation balanced accuracy (see voicegate.train.models.fit for why).

This module imports no torch at import time (the CLI builds ``--help`` from it); the torch
side is voicegate.train.models.fit.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import numpy as np

from voicegate.train.commands import error_text
from voicegate.device.options import NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, number
from voicegate.train.data.splits import HELDOUT, TEST, TRAIN, VAL

log = logging.getLogger(__name__)

RUN_FORMAT = "voicegate-run-1"
CHECKPOINT_NAME = "best.pt"  # the member checkpoint that export and evaluation read
EVAL_SPLITS = (VAL, TEST, HELDOUT)  # selection uses VAL only; HELDOUT is only reported


@dataclass
class AugmentConfig:
    enabled: bool = True  # on-the-fly augmentation of train windows (val/test never augmented)
    time_roll: bool = True  # random circular shift along time (the window may start anywhere)
    time_masks: int = 2  # SpecAugment time masks per window
    time_mask_max: int = 20  # widest time mask, frames (224 frames = 2 s, so 20 ~ 0.18 s)
    freq_masks: int = 2  # SpecAugment frequency masks per window
    freq_mask_max: int = 16  # widest frequency mask, bins (224 bins = 8 kHz, so 16 ~ 570 Hz)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentConfig":
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})


@dataclass
class TrainConfig:
    epochs: int = 30  # upper bound; early stopping usually ends sooner
    batch_size: int = 32  # windows per step
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam L2 penalty
    patience: int = 8  # stop after this many epochs without a better val score (0 = never)
    seed: int = 0  # member i uses seed + i
    ensemble: int = 1  # members trained one after another
    device: str = "auto"  # auto = cuda > mps > cpu (voicegate.train.models.torchutil.select_device)
    threads: Optional[int] = None  # torch CPU threads (None = torch default)
    num_workers: int = 0  # DataLoader workers (0 keeps runs reproducible and light)
    limit_train: Optional[int] = None  # train on a seeded random subset of this many windows (quick runs)
    save_every_epoch: bool = False  # also write epochs/epochNNN.pt, including epoch 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # on-the-fly train augmentation

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        kw = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        if isinstance(kw.get("augment"), dict):
            kw["augment"] = AugmentConfig.from_dict(kw["augment"])
        return cls(**kw)


def member_name(i: int) -> str:
    return f"member{i}"


def train_run(corpus, out_dir, model_cfg, tcfg: TrainConfig, data_config: Optional[dict] = None) -> dict:
    """Train ``tcfg.ensemble`` members on a prepared corpus into ``out_dir``; returns ensemble.json."""
    from voicegate.train.models import fit
    from voicegate.train.data.corpus import CorpusError
    from voicegate.train.data.dataset import speaker_roles, split_data
    from voicegate.train.eval.metrics import split_report
    from voicegate.train.models.torchutil import select_device, set_threads

    set_threads(tcfg.threads)
    device = select_device(tcfg.device)
    out_dir = Path(out_dir)

    splits = {TRAIN: split_data(corpus, TRAIN)}
    for name in EVAL_SPLITS:  # evaluation always on clean windows
        splits[name] = split_data(corpus, name, aug=False)
    if tcfg.limit_train:
        splits[TRAIN] = splits[TRAIN].subset(tcfg.limit_train, tcfg.seed)
    if len(set(splits[TRAIN].labels)) < 2:
        raise CorpusError("the training split holds one class only: the corpus needs allowed and not-allowed "
                         "speakers (see --allowed, and the corpus's roles.json)")
    if not len(splits[VAL]) or len(set(splits[VAL].labels)) < 2:
        raise CorpusError("the val split needs windows of both classes to select a model; prepare more recordings per speaker")
    out_dir.mkdir(parents=True, exist_ok=True)  # only once there is something to train
    counts = np.bincount(splits[TRAIN].labels, minlength=2)
    log.info("train windows: %d not_allowed, %d allowed (class weights = inverse frequency)", counts[0], counts[1])
    for name in EVAL_SPLITS:
        log.info("%s windows: %d", name, len(splits[name]))

    roles = speaker_roles(corpus)
    run_info = {
        "format": RUN_FORMAT,
        "arch": model_cfg.arch,
        "ensemble": tcfg.ensemble,
        "members": [member_name(i) for i in range(tcfg.ensemble)],
        "checkpoint": CHECKPOINT_NAME,
        "selection": "val balanced_accuracy",
        "feature_version": model_cfg.feature_version,
        "model_config": model_cfg.to_dict(),
        "train_config": tcfg.to_dict(),
        "data_config": data_config or {},
        "roles": roles,
        "device": str(device),
        "train_counts": {"not_allowed": int(counts[0]), "allowed": int(counts[1])},
    }
    (out_dir / "run.json").write_text(json.dumps(run_info, indent=1))
    ckpt_extra = {k: run_info[k] for k in ("train_config", "data_config", "roles")}

    member_probs, member_summaries = [], []
    for i in range(tcfg.ensemble):
        seed = tcfg.seed + i
        log.info("member %d/%d (seed %d)", i + 1, tcfg.ensemble, seed)
        result = fit.fit_member(
            corpus.images, splits, model_cfg, tcfg, seed, out_dir / member_name(i), device,
            {**ckpt_extra, "member": i},
        )
        member_probs.append(result["probs"])
        member_summaries.append({"member": i, "seed": seed, "best_epoch": result["best_epoch"],
                                 **{s: result["metrics"][s]["windows"] for s in result["metrics"] if s in EVAL_SPLITS}})

    ensemble = {"members": member_summaries, "mean_of_members": {}}
    for name in EVAL_SPLITS:
        data = splits[name]
        if not len(data):
            continue
        probs = np.mean([p[name] for p in member_probs], axis=0)
        ensemble["mean_of_members"][name] = split_report(data.labels, probs, data.speakers, data.recordings)
    (out_dir / "ensemble.json").write_text(json.dumps(ensemble, indent=1))
    return ensemble


def no_run_message(run_dir) -> str:
    """Why ``run_dir`` is not a classifier run: missing, an encoder run, or something else."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return f"{run_dir}: no such run folder"
    if (run_dir / "encoder-run.json").is_file():
        return f"{run_dir}: is a speaker-encoder run; this takes a classifier run (voicegate train)"
    return f"{run_dir}: no run.json (not a voicegate training run)"


def load_run(run_dir) -> list:
    """Every member of a run -> ``[(model on cpu in eval mode, checkpoint dict), ...]``."""
    from voicegate.train.models.classifier import load_checkpoint

    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.is_file():
        raise FileNotFoundError(no_run_message(run_dir))
    info = json.loads(info_path.read_text())
    if info.get("format") != RUN_FORMAT:
        raise ValueError(f"{info_path}: unknown run format {info.get('format')!r}")
    name = info.get("checkpoint", CHECKPOINT_NAME)
    return [load_checkpoint(run_dir / member / name) for member in info["members"]]


# --- CLI ---------------------------------------------------------------------------------------
def _widths(text: str) -> tuple:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated integers, got {text!r}")


def _names(text: str) -> list:
    return [t for t in text.split(",") if t]


def _flat(groups) -> Optional[list]:
    return None if groups is None else [name for group in groups for name in group]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True, help="corpus folder (manifest + roles.json, DAPS, or a folder per speaker)")
    p.add_argument("--cache", help="prepared-window cache folder (default: voicegate prepare's default)")
    p.add_argument("--allowed", nargs="+", type=_names, metavar="SPEAKER", help="allowed speakers, space or comma separated (overrides roles.json)")
    p.add_argument("--impostors", nargs="+", type=_names, metavar="SPEAKER", help="held-out impostor speakers (overrides roles.json)")
    p.add_argument("--layout", choices=("auto", "manifest", "daps", "folders"), help="corpus layout (default: detect)")
    p.add_argument("--arch", choices=("seed", "compact"), default="compact", help="seed = the study's SpectrogramCNN; compact = edge CNN (default)")
    p.add_argument("--out", required=True, help="run folder to write (e.g. runs/NAME)")
    p.add_argument("--epochs", type=POSITIVE_INT, default=TrainConfig.epochs, help="maximum epochs (default %(default)s)")
    p.add_argument("--ensemble", type=POSITIVE_INT, nargs="?", const=5, default=1, metavar="K",
                   help="train K members with seeds seed..seed+K-1 (K=5 when given without a value; default 1)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=TrainConfig.batch_size, help="windows per step (default %(default)s)")
    p.add_argument("--lr", type=POSITIVE_FLOAT, default=TrainConfig.lr, help="Adam learning rate (default %(default)s)")
    p.add_argument("--weight-decay", type=NON_NEGATIVE_FLOAT, default=TrainConfig.weight_decay, help="Adam weight decay (default %(default)s)")
    p.add_argument("--dropout", type=number(float, 0.0, 0.95), help="head dropout (default: seed 0.5, compact 0.3)")
    p.add_argument("--widths", type=_widths, help="conv channels, comma-separated (seed: 3 values, compact: 4)")
    p.add_argument("--embed-dim", type=POSITIVE_INT, help="fc1 width (default: seed 512, compact 128)")
    p.add_argument("--no-augment", action="store_true", help="no on-the-fly time roll / SpecAugment masks")
    p.add_argument("--patience", type=NON_NEGATIVE_INT, default=TrainConfig.patience, help="early-stopping patience in epochs, 0 = off (default %(default)s)")
    p.add_argument("--seed", type=int, default=TrainConfig.seed, help="base seed (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--threads", type=POSITIVE_INT, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--num-workers", type=NON_NEGATIVE_INT, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--limit-train", type=POSITIVE_INT, metavar="N", help="train on a random N-window subset (quick runs)")
    p.add_argument("--save-every-epoch", action="store_true", help="keep a checkpoint per epoch, including epoch 0")


def configs_from_args(args: argparse.Namespace) -> tuple:
    """(ModelConfig, TrainConfig) from parsed CLI arguments."""
    from voicegate.train.models.classifier import ModelConfig

    model_cfg = ModelConfig(arch=args.arch, dropout=args.dropout, widths=args.widths, embed_dim=args.embed_dim)
    if args.ensemble < 1:
        raise ValueError("--ensemble must be at least 1")
    tcfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        patience=args.patience, seed=args.seed, ensemble=args.ensemble, device=args.device,
        threads=args.threads, num_workers=args.num_workers, limit_train=args.limit_train,
        save_every_epoch=args.save_every_epoch, augment=AugmentConfig(enabled=not args.no_augment),
    )
    return model_cfg, tcfg


def run(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit("voicegate train needs PyTorch: pip install 'voicegate[train]'")
    from voicegate.train.data.corpus import CorpusError
    from voicegate.train.eval.metrics import summary_line
    from voicegate.train.data.prepare import prepare_corpus
    from voicegate.train.models.torchutil import select_device

    # the per-epoch lines are this command's progress report: show them without --verbose
    train_log = logging.getLogger("voicegate.train")
    if train_log.getEffectiveLevel() > logging.INFO:
        train_log.setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    try:
        model_cfg, tcfg = configs_from_args(args)
        select_device(tcfg.device)  # an unavailable --device is said before minutes of preparation
        prep_cfg = prepare_config_from_args(args)
        corpus = prepare_corpus(prep_cfg)
    except (CorpusError, ValueError, OSError) as e:
        print(f"voicegate train: error: {error_text(e)}", file=sys.stderr)
        return 2
    try:
        ensemble = train_run(corpus, args.out, model_cfg, tcfg, data_config=prep_cfg.to_dict())
    except (CorpusError, ValueError) as e:  # the splits cannot train a model: said in one line
        print(f"voicegate train: error: {error_text(e)}", file=sys.stderr)
        return 2
    label = f"ensemble of {tcfg.ensemble}" if tcfg.ensemble > 1 else "model"
    for name, report in ensemble["mean_of_members"].items():
        print(f"{label} {name}: {summary_line(report)}")
    print(f"run written to {args.out}")
    return 0


def prepare_config_from_args(args: argparse.Namespace):
    """The PrepareConfig for this run (paths made absolute, so later tools can reopen the cache
    from anywhere). An existing ``--cache`` keeps the options it was prepared with
    (``voicegate prepare --aug-allowed ...``), so training reuses it instead of rebuilding it with
    defaults; ``--corpus``, ``--layout``, ``--allowed`` and ``--impostors`` still apply."""
    from voicegate.train.data.prepare import PrepareConfig

    cache = Path(args.cache).expanduser().resolve() if args.cache else None
    base = {}
    if cache is not None and (cache / "meta.json").is_file():
        base = json.loads((cache / "meta.json").read_text()).get("config", {})
    overrides = {
        "corpus": str(Path(args.corpus).expanduser().resolve()),
        "cache_dir": None if cache is None else str(cache),
        "force": False,
    }
    if args.layout is not None:
        overrides["layout"] = args.layout
    for name in ("allowed", "impostors"):
        if getattr(args, name) is not None:
            overrides[name] = _flat(getattr(args, name))
    return PrepareConfig.from_dict({**base, **overrides})

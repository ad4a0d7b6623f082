"""Training the speaker encoder (the loop behind `voicegate train-encoder`, whose options are in
:mod:`voicegate.train.models.encoder_cli`).

1. prepares (or reuses) the encoder data set (:mod:`voicegate.train.data.encoder_data`): every
   training speaker of every corpus given, validation speakers held out, allowed speakers and
   held-out impostors never used; clean + channel-augmented windows; GE2E teacher embeddings;
2. trains :class:`~voicegate.train.models.encoder.SpeakerEncoder` with AAM-softmax over the
   training speakers, plus (``--distill-weight`` > 0) a cosine loss pulling a projection of the
   student's embedding of the window (clean or augmented) towards the teacher's embedding of the
   CLEAN window. Each epoch shows every window once, in one version: clean with probability
   ``clean_prob``, else one of its augmented copies; SpecAugment masks on top;
3. after every epoch: the validation speakers are enrolled (<= 30 s) and their 3 s attempts scored
   (eval mode, cosine), EER and FRR at FAR 1 % overall and per corpus; ``history.json``,
   ``curves.png``, ``checkpoint.pt`` (last) and ``best.pt`` (lowest validation EER) in ``--out``.

With ``--minutes`` the learning-rate schedule (linear warm-up, cosine decay) follows the wall
clock, so the run anneals fully and stops on time whatever the machine's load.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
RUN_MARKER = "encoder-run.json"  # tells `voicegate export` this folder is an encoder run


@dataclass
class EncoderTrainConfig:
    data: str = "cache/encoder"
    out: str = "runs/encoder"
    epochs: int = 12  # at most; --minutes may stop earlier
    minutes: float = 0.0  # wall-clock budget (0: epochs decide)
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    warmup: float = 0.04  # share of the run spent warming the learning rate up
    margin_warmup: float = 0.15  # share of the run over which the AAM margin grows from 0
    clean_prob: float = 0.3
    distill_weight: float = 2.0  # 0: no teacher
    distill_center: bool = False  # distil to the teacher's embeddings minus their training mean
    time_masks: int = 1
    time_mask_max: int = 24
    freq_masks: int = 1
    freq_mask_max: int = 16
    threads: int = 2
    seed: int = 0
    encoder: dict = field(default_factory=dict)  # EncoderConfig fields (dropout, embedding_dim, ...)
    init: str = ""  # fine-tune: start from this encoder checkpoint or exported MC encoder (.onnx)
    relation_weight: float = 0.0  # relational distillation (encoder.relation_loss); 0: off
    relation_tau_student: float = 0.1
    relation_tau_teacher: float = 0.05
    pseudo_warps: tuple = ()  # frequency-warp factors; each makes a pseudo-speaker of every speaker
    pseudo_prob: float = 0.0  # share of the windows shown as a pseudo-speaker
    freeze_bn: bool = False  # BatchNorm frozen (set for a start from an exported model)
    speaker_fraction: float = 1.0  # < 1: train on this share of each corpus's speakers (ablation)

    def to_dict(self) -> dict:
        return asdict(self)


def lr_factor(progress: float, warmup: float) -> float:
    if progress < warmup:
        return max(progress / warmup, 0.02)
    q = (progress - warmup) / max(1e-9, 1.0 - warmup)
    return 0.5 * (1.0 + np.cos(np.pi * min(1.0, q)))


def center_teacher(teacher: np.ndarray) -> np.ndarray:
    """The teacher's embeddings minus their mean over the training windows, re-normalised.

    GE2E embeddings live in the positive orthant (a ReLU before the normalisation): any two
    voices have a cosine of about 0.7, so a student that outputs the common direction already
    scores a cosine of 0.8 with every target and the plain cosine loss says little about *whose*
    voice it is. Centred, the targets keep only what tells the voices apart.
    """
    t = np.asarray(teacher, np.float32)
    c = t - t.mean(axis=0, keepdims=True)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), np.float32(1e-6))


def embed_images(encoder, images, batch: int = 128) -> np.ndarray:
    """(n, 224, 224) images (uint8 or float in [0, 1]) -> (n, D) eval-mode embeddings."""
    import torch

    encoder.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = np.asarray(images[i : i + batch])
            x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
            out.append(encoder(torch.from_numpy(x)[:, None]).numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.cfg.embedding_dim), np.float32)


def validate(encoder, data) -> dict:
    """EER and FRR at FAR 1 % on the validation speakers (eval mode, one sample)."""
    from .encoder import eer, frr_at_far, trials

    rows, imgs = data.val_rows, data.val_images
    emb = embed_images(encoder, imgs)
    speakers = data.meta["validation_speakers"]
    enrol, attempts = [], []
    for k in np.unique(rows[:, 0]):
        mine = rows[:, 0] == k
        enrol.append(emb[mine & (rows[:, 1] < 0)][:, None])
        for j in np.unique(rows[mine & (rows[:, 1] >= 0), 1]):
            attempts.append((int(k), emb[mine & (rows[:, 1] == j)][:, None]))
    t = trials(enrol, attempts)
    cos, gen = t["cos"][:, 0], t["genuine"]
    corpus = np.array([s.split("/")[0] for s in speakers])
    report = {"all": _figures(cos[gen], cos[~gen], eer, frr_at_far)}
    for name in sorted(set(corpus)):
        same = (corpus[t["profile"]] == name) & (corpus[t["speaker"]] == name)
        if gen[same].any() and (~gen[same]).any():
            report[name] = _figures(cos[same & gen], cos[same & ~gen], eer, frr_at_far)
    return report


def _figures(g, i, eer, frr_at_far) -> dict:
    e, thr = eer(g, i)
    frr1, _ = frr_at_far(g, i, 0.01)
    return {"eer": round(e, 4), "frr_at_far_1pct": round(frr1, 4), "eer_threshold": round(thr, 4),
            "genuine": int(g.size), "impostor": int(i.size)}


def train_encoder(cfg: EncoderTrainConfig) -> Path:
    """Train as ``cfg`` says; returns the run folder."""
    import torch
    from tqdm import tqdm

    from voicegate.train.data.encoder_data import EncoderData, speaker_subset
    from voicegate.train.models.fit import spec_augment
    from voicegate.train.models.torchutil import seed_everything, set_threads

    from .encoder import EncoderConfig, EncoderTraining, distill_loss, relation_loss, save_encoder, warp_frequency
    from .from_onnx import freeze_batchnorm, start_from_onnx

    set_threads(cfg.threads)
    gen = seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = EncoderData(cfg.data)
    t_load = time.time()
    keep, y_all, speakers = np.ones(len(data.labels), bool), data.labels.astype(np.int64), data.meta["speakers"]
    if cfg.speaker_fraction != 1.0:  # speaker_subset refuses a fraction outside (0, 1]
        if cfg.init:
            raise ValueError("--speaker-fraction trains from scratch; it cannot be combined with --init")
        keep, y_all, speakers = speaker_subset(speakers, data.labels, cfg.speaker_fraction, cfg.seed)
    n_spk = len(speakers)
    images = np.ascontiguousarray(data.images if keep.all() else data.images[keep])  # into memory
    labels = torch.from_numpy(y_all)
    use_teacher = cfg.distill_weight > 0 and data.teacher is not None
    if cfg.distill_weight > 0 and data.teacher is None:
        log.warning("the data set has no teacher embeddings: training without distillation")
    t_raw = data.teacher[keep] if use_teacher else None
    teacher = torch.from_numpy(center_teacher(t_raw) if cfg.distill_center else t_raw) if use_teacher else None
    warps = torch.tensor([float(w) for w in cfg.pseudo_warps])
    classes = n_spk * (1 + len(warps))  # pseudo-speaker j of speaker k: k + n * (j + 1)
    enc_cfg = EncoderConfig(**{**cfg.encoder, "n_speakers": classes,
                               "teacher_dim": int(teacher.shape[1]) if use_teacher else 0})
    training = EncoderTraining(enc_cfg)
    if cfg.init.endswith(".onnx"):
        cfg.freeze_bn = True
        start_from_onnx(training, cfg.init, images, data.labels, teacher.numpy() if use_teacher else None,
                        data.n_speakers)
    elif cfg.init:
        cfg.freeze_bn = start_from(training, cfg.init, data) or cfg.freeze_bn
    opt = torch.optim.AdamW(training.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n, versions = images.shape[0], images.shape[1]
    steps_per_epoch = max(1, n // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    budget = cfg.minutes * 60.0
    print(f"encoder training: {n_spk} speakers, {n} windows x {versions} versions "
          f"(loaded in {time.time() - t_load:.0f} s), {len(data.meta['validation_speakers'])} validation "
          f"speakers, teacher {'on' if use_teacher else 'off'}, up to {cfg.epochs} epochs"
          + (f" / {cfg.minutes:g} min" if budget else ""))
    aug = SimpleNamespace(time_roll=True, time_masks=cfg.time_masks, time_mask_max=cfg.time_mask_max,
                          freq_masks=cfg.freq_masks, freq_mask_max=cfg.freq_mask_max)
    extra = {"train_config": cfg.to_dict(), "data": _data_summary(data),
             "trained_speakers": len(speakers), "trained_windows": int(n)}
    (out / RUN_MARKER).write_text(json.dumps({"kind": "encoder", "checkpoint": CHECKPOINT_NAME, "best": BEST_NAME,
                                              "data": str(data.folder)}, indent=1))
    history, best, step, start, done = [], None, 0, time.time(), False
    if cfg.init:  # where the fine-tune starts, on the same validation speakers
        val0 = validate(training.encoder, data)
        history.append({"epoch": 0, "windows": 0, "aam_loss": None, "distill_loss": None, "train_accuracy": None,
                        "lr": 0.0, "progress": 0.0, "elapsed_s": 0.0, "val": val0})
        print(f"start ({Path(cfg.init).name}): val EER {val0['all']['eer']:.2%} "
              f"FRR@FAR1% {val0['all']['frr_at_far_1pct']:.2%}", flush=True)
        start = time.time()
    for epoch in range(1, cfg.epochs + 1):
        training.train()
        if cfg.freeze_bn:
            freeze_batchnorm(training.encoder)
        perm = rng.permutation(n)
        sums = {"aam": 0.0, "distill": 0.0, "relation": 0.0, "acc": 0.0, "n": 0}
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", unit="batch", leave=False, mininterval=15)
        for b in bar:
            progress = max(step / total_steps, (time.time() - start) / budget if budget else 0.0)
            if progress >= 1.0:
                done = True
                break
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(progress, cfg.warmup)
            idx = np.sort(perm[b * cfg.batch_size : (b + 1) * cfg.batch_size])
            v = np.where(rng.random(idx.size) < cfg.clean_prob, 0, rng.integers(1, max(2, versions), idx.size))
            v = np.minimum(v, versions - 1)
            x = torch.from_numpy(images[idx, v].astype(np.float32) / 255.0)[:, None]
            y = labels[idx]
            real = torch.ones(idx.size, dtype=torch.bool)
            if len(warps) and cfg.pseudo_prob > 0:
                j = torch.from_numpy(rng.integers(0, len(warps), idx.size))
                real = torch.from_numpy(rng.random(idx.size) >= cfg.pseudo_prob)
                if (~real).any():
                    x[~real] = warp_frequency(x[~real], warps[j[~real]])
                    y = torch.where(real, y, y + n_spk * (j + 1))
            x = spec_augment(x, aug, gen).contiguous(memory_format=torch.channels_last)
            emb = torch.nn.functional.normalize(training.encoder.raw(x), dim=-1)
            margin = enc_cfg.margin * min(1.0, progress / cfg.margin_warmup) if cfg.margin_warmup else None
            loss_aam, cos = training.aam(emb, y, margin)
            loss = loss_aam
            if use_teacher and real.any():  # the teacher heard the real voice, not a pseudo-speaker
                loss_d = distill_loss(training.project(emb[real]), teacher[idx][real])
                loss = loss + cfg.distill_weight * loss_d
                sums["distill"] += loss_d.item() * idx.size
                if cfg.relation_weight > 0 and int(real.sum()) > 2:
                    loss_r = relation_loss(emb[real], teacher[idx][real], cfg.relation_tau_student,
                                           cfg.relation_tau_teacher)
                    loss = loss + cfg.relation_weight * loss_r
                    sums["relation"] += loss_r.item() * idx.size
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sums["aam"] += loss_aam.item() * idx.size
            sums["acc"] += float((cos.argmax(1) == y).float().sum())
            sums["n"] += idx.size
            if b % 10 == 0:
                bar.set_postfix(aam=f"{sums['aam'] / sums['n']:.2f}", acc=f"{sums['acc'] / sums['n']:.2f}",
                                lr=f"{opt.param_groups[0]['lr']:.1e}")
        bar.close()
        if sums["n"] == 0:
            break
        val = validate(training.encoder, data)
        h = {"epoch": epoch, "windows": sums["n"], "aam_loss": round(sums["aam"] / sums["n"], 4),
             "distill_loss": round(sums["distill"] / sums["n"], 4) if use_teacher else None,
             "relation_loss": round(sums["relation"] / sums["n"], 4) if cfg.relation_weight > 0 else None,
             "train_accuracy": round(sums["acc"] / sums["n"], 4), "lr": opt.param_groups[0]["lr"],
             "progress": round(min(1.0, progress), 3), "elapsed_s": round(time.time() - start, 1), "val": val}
        history.append(h)
        print(f"epoch {epoch}: aam {h['aam_loss']:.3f} acc {h['train_accuracy']:.3f}"
              + (f" distill {h['distill_loss']:.3f}" if use_teacher else "")
              + f"  val EER {val['all']['eer']:.2%} FRR@FAR1% {val['all']['frr_at_far_1pct']:.2%}"
              + f"  ({h['elapsed_s'] / 60:.1f} min)", flush=True)
        extra.update(history=history, epoch=epoch, validation=val)
        save_encoder(out / CHECKPOINT_NAME, training, extra)
        if best is None or val["all"]["eer"] <= best:
            best = val["all"]["eer"]
            save_encoder(out / BEST_NAME, training, {**extra, "best_epoch": epoch})
        (out / "history.json").write_text(json.dumps(history, indent=1))
        plot_curves(history, out / "curves.png")
        if done:
            break
    (out / "train.json").write_text(json.dumps({**extra, "seconds": round(time.time() - start, 1),
                                                 "best_val_eer": best}, indent=1))
    return out


def start_from(training, checkpoint: str, data) -> bool:
    """Load a checkpoint's weights (encoder, AAM head, teacher projection) to fine-tune them, e.g. on
    windows selected by a new speech-detector rule. ValueError unless it learned the same speakers
    with the same architecture. Returns whether that run kept its BatchNorm frozen (this one must too)."""
    from .encoder import ENCODER_CHECKPOINT_FORMAT
    from .torchutil import read_checkpoint

    ckpt = read_checkpoint(checkpoint, ENCODER_CHECKPOINT_FORMAT, "encoder checkpoint")
    if ckpt["encoder_config"] != training.encoder.cfg.to_dict():
        raise ValueError(f"{checkpoint}: another encoder configuration than this run's")
    if ckpt.get("data", {}).get("speakers") != data.meta["speakers"]:
        raise ValueError(f"{checkpoint}: trained on other speakers than {data.folder}")
    training.load_state_dict(ckpt["training_state_dict"])
    log.info("fine-tuning %s (epoch %s)", checkpoint, ckpt.get("epoch"))
    return bool(ckpt.get("train_config", {}).get("freeze_bn", False))


def _data_summary(data) -> dict:
    m = data.meta
    return {"cache": str(data.folder), "feature_contract": m.get("feature_contract"),
            "windows": m["windows"], "versions": m["versions"],
            "speakers": m["speakers"], "validation_speakers": m["validation_speakers"],
            "per_corpus": m["per_corpus"], "validation_attempts": m["validation_attempts"],
            "config": m["config"]}


def plot_curves(history: list, path: Path) -> None:
    """AAM / distillation loss, training accuracy and validation EER / FRR at FAR 1 % per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]  # epoch 0: a fine-tune's starting point (validation only)
    trained = [h for h in history if h["aam_loss"] is not None]
    te = [h["epoch"] for h in trained]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(te, [h["aam_loss"] for h in trained], marker="o", label="AAM")
    for key, label in (("distill_loss", "distillation"), ("relation_loss", "relational distillation")):
        if trained and trained[0].get(key) is not None:
            axes[0].plot(te, [h[key] for h in trained], marker="o", label=label)
    axes[0].set_title("training loss")
    axes[1].plot(te, [h["train_accuracy"] for h in trained], marker="o")
    axes[1].set_title("training speaker accuracy")
    for key, label in (("eer", "EER"), ("frr_at_far_1pct", "FRR at FAR 1%")):
        axes[2].plot(ep, [100 * h["val"]["all"][key] for h in history], marker="o", label=label)
    axes[2].set_title("validation speakers (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

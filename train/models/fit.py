"""Fitting one model (one ensemble member): augmentation, the epoch loop, evaluation.

The CLI, the configs and the run layout live in voicegate.train.models.trainer; this module is the torch
side it imports when a run starts.

Model selection uses VALIDATION BALANCED ACCURACY (mean of the per-class recalls), ties broken by
the lower validation loss. The data is imbalanced (a few allowed people against many other
voices), so raw accuracy rewards a model that denies everybody, and weighted F1 is dominated by
the majority class too; balanced accuracy weighs a false reject of an allowed person and a false
accept of an impostor equally, which is what a gate needs before its threshold is tuned.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from voicegate.train.data.dataset import SplitData, WindowDataset
from voicegate.train.eval.metrics import classification_metrics, split_report
from voicegate.train.models.classifier import ModelConfig, build_model, count_parameters, save_checkpoint
from voicegate.train.data.cache import inverse_frequency_weights
from voicegate.train.data.splits import TRAIN, VAL

log = logging.getLogger(__name__)

EVAL_BATCH = 64


def spec_augment(x: torch.Tensor, aug, gen: torch.Generator) -> torch.Tensor:
    """Random circular time roll plus SpecAugment-style time and frequency masks (set to 0, the
    image's silence floor), drawn per sample from ``gen``. ``x``: (B, 1, F, T)."""
    b, _, f, t = x.shape
    if aug.time_roll:
        shift = torch.randint(0, t, (b,), generator=gen)
        idx = (torch.arange(t)[None, :] - shift[:, None]) % t
        x = torch.gather(x, 3, idx.to(x.device)[:, None, None, :].expand(b, 1, f, t))
    keep = torch.ones(b, 1, f, t, dtype=torch.bool)
    for size, count, max_width, view in (
        (t, aug.time_masks, aug.time_mask_max, (b, 1, 1, t)),
        (f, aug.freq_masks, aug.freq_mask_max, (b, 1, f, 1)),
    ):
        pos = torch.arange(size)[None, :]
        for _ in range(count):
            width = torch.randint(0, max_width + 1, (b, 1), generator=gen)
            start = (torch.rand(b, 1, generator=gen) * (size - width + 1)).long()
            keep &= ~((pos >= start) & (pos < start + width)).view(view)
    return x * keep.to(x.device, x.dtype)


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Inverse class frequency, normalised so a balanced set gets weight 1 per class."""
    counts = np.bincount(labels, minlength=2)
    if (counts == 0).any():
        raise ValueError(f"the train split needs both classes; counts (not_allowed, allowed) = {counts.tolist()}")
    return torch.from_numpy(inverse_frequency_weights(counts))


def make_loader(images, data: SplitData, batch_size: int, shuffle: bool, num_workers: int = 0, gen=None) -> DataLoader:
    return DataLoader(
        WindowDataset(images, data),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=gen,
        num_workers=num_workers,
        drop_last=False,
    )


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device) -> torch.Tensor:
    """Logits for every window of ``loader``, in EVAL mode (dropout off, BatchNorm frozen) and
    without gradients. The caller's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        out = [model(x.to(device)).float().cpu() for x, _ in loader]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 2)


def p_allow(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits, dim=1)[:, 1].numpy()


def epoch_stats(loss: float, labels: np.ndarray, probs: np.ndarray) -> dict:
    m = classification_metrics(labels, probs)
    return {
        "loss": float(loss),
        "accuracy": m["accuracy"],
        "f1_weighted": m["f1_weighted"],
        "balanced_accuracy": m["balanced_accuracy"],
    }


def evaluate_split(model, images, data: SplitData, device, loss_fn) -> tuple:
    """(epoch stats dict, p_allow) of one split in eval mode."""
    logits = predict_logits(model, make_loader(images, data, EVAL_BATCH, shuffle=False), device)
    labels = torch.as_tensor(data.labels)
    loss = float(loss_fn(logits, labels)) if len(data) else float("nan")
    probs = p_allow(logits)
    return epoch_stats(loss, data.labels, probs), probs


def train_one_epoch(model, loader, optimizer, loss_fn, device, aug, aug_gen, desc: str) -> dict:
    model.train()
    total, n, all_probs, all_labels = 0.0, 0, [], []
    bar = tqdm(loader, desc=desc, leave=False, unit="batch", dynamic_ncols=True)
    for x, y in bar:
        x, y = x.to(device), y.to(device)
        if aug is not None and aug.enabled:
            x = spec_augment(x, aug, aug_gen)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        optimizer.step()
        total += loss.item() * y.size(0)
        n += y.size(0)
        all_probs.append(torch.softmax(logits.detach(), 1)[:, 1].float().cpu())
        all_labels.append(y.cpu())
        bar.set_postfix(loss=f"{total / n:.4f}")
    return epoch_stats(total / max(n, 1), torch.cat(all_labels).numpy(), torch.cat(all_probs).numpy())


def fit_member(
    images,
    splits: dict,
    model_cfg: ModelConfig,
    tcfg,
    seed: int,
    out_dir: Path,
    device: torch.device,
    ckpt_extra: dict,
) -> dict:
    """Train one model on ``splits["train"]``, select on ``splits["val"]``; write best.pt, last.pt,
    history.json, curves.png and metrics.json into ``out_dir``. Returns
    ``{"metrics": ..., "probs": {split: p_allow}, "best_epoch": ...}`` (probs from the best model,
    for the ensemble summary)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    model = build_model(model_cfg).to(device)
    train, val = splits[TRAIN], splits[VAL]
    weights = class_weights(train.labels)
    loss_fn = nn.CrossEntropyLoss(weight=weights.to(device))
    eval_loss = nn.CrossEntropyLoss(weight=weights)
    optimizer = torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    loader = make_loader(
        images, train, tcfg.batch_size, shuffle=True, num_workers=tcfg.num_workers,
        gen=torch.Generator().manual_seed(seed),
    )
    aug_gen = torch.Generator().manual_seed(seed + 7919)
    extra = {**ckpt_extra, "seed": seed}

    def checkpoint(name: str, epoch: int, **more) -> None:
        save_checkpoint(out_dir / name, model, model_cfg, {**extra, "epoch": epoch, **more})

    if tcfg.save_every_epoch:
        checkpoint("epochs/epoch000.pt", 0)
    log.info(
        "member seed %d: %s, %d parameters, train %d windows (%d allowed), val %d",
        seed, model_cfg.arch, count_parameters(model), len(train), int(train.labels.sum()), len(val),
    )
    history, best_score, best_state, best_epoch, bad_epochs = [], None, None, 0, 0
    for epoch in range(1, tcfg.epochs + 1):
        t0, cpu0 = time.perf_counter(), time.process_time()
        tr = train_one_epoch(model, loader, optimizer, loss_fn, device, tcfg.augment, aug_gen, f"seed {seed} epoch {epoch}")
        va, _ = evaluate_split(model, images, val, device, eval_loss)
        row = {
            "epoch": epoch,
            "seconds": time.perf_counter() - t0,  # wall clock, train + val evaluation
            "cpu_seconds": time.process_time() - cpu0,  # this process's CPU time (all threads)
            "train": tr,  # from the training passes themselves: dropout and augmentation on
            "val": va,  # eval mode, clean windows
        }
        history.append(row)
        score = (va["balanced_accuracy"], -va["loss"])
        improved = best_score is None or score > best_score
        if improved:
            best_score, best_epoch, bad_epochs = score, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            checkpoint("best.pt", epoch)
        else:
            bad_epochs += 1
        if tcfg.save_every_epoch:
            checkpoint(f"epochs/epoch{epoch:03d}.pt", epoch)
        log.info(
            "epoch %3d  %5.1fs  train loss %.4f bal_acc %.3f | val loss %.4f acc %.3f f1w %.3f bal_acc %.3f%s",
            epoch, row["seconds"], tr["loss"], tr["balanced_accuracy"], va["loss"], va["accuracy"],
            va["f1_weighted"], va["balanced_accuracy"], "  *best" if improved else "",
        )
        if tcfg.patience and bad_epochs >= tcfg.patience:
            log.info("early stop: no val improvement for %d epochs (best epoch %d)", bad_epochs, best_epoch)
            break
    last_epoch = history[-1]["epoch"] if history else 0
    checkpoint("last.pt", last_epoch)
    if best_state is not None:
        model.load_state_dict(best_state)

    probs, metrics = {}, {"best_epoch": best_epoch, "last_epoch": last_epoch, "selection": "val balanced_accuracy"}
    for name, data in splits.items():
        if name == TRAIN or not len(data):
            continue
        _, probs[name] = evaluate_split(model, images, data, device, eval_loss)
        metrics[name] = split_report(data.labels, probs[name], data.speakers, data.recordings)
    checkpoint("best.pt", best_epoch, metrics=metrics)
    (out_dir / "history.json").write_text(json.dumps({"best_epoch": best_epoch, "epochs": history}, indent=1))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plot_curves(history, out_dir / "curves.png", best_epoch)
    return {"metrics": metrics, "probs": probs, "best_epoch": best_epoch}


def plot_curves(history: list, path: Path, best_epoch: int = 0) -> None:
    """Loss, accuracy, weighted F1 and balanced accuracy per epoch, train and val."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    keys = [("loss", "loss"), ("accuracy", "accuracy"), ("f1_weighted", "weighted F1"), ("balanced_accuracy", "balanced accuracy")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (key, title) in zip(axes, keys):
        for part in ("train", "val"):
            ax.plot(epochs, [h[part][key] for h in history], marker="o", ms=3, label=part)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", ls=":", lw=1)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

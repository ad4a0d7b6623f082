"""`voicegate report interpret`: what the trained CNN looks at.

* the learned conv1 filters;
* the feature maps of every conv layer (after its activation) for one allowed and one
  not-allowed window;
* Grad-CAM (torch hooks on the activation of the last conv layer) over the spectrogram: which
  time and frequency regions carry the evidence for each window's true class (the log-odds of
  "allowed" for allowed windows, of "not allowed" for the others);
* the average saliency per frequency (Grad-CAM averaged over time, and the plain input-gradient
  magnitude) per class, next to the average intensity per frequency of the same windows, which is
  the EDA report's intensity plot restricted to this split.

Everything runs in eval mode (dropout off, BatchNorm frozen) on one member of the run.
"""

from __future__ import annotations

import argparse
import logging

from voicegate.device.options import NON_NEGATIVE_INT
from voicegate.train.reports.report import FREQUENCY_BANDS

log = logging.getLogger(__name__)

NEEDS_RUN = True
CLASS_NAMES = ("not_allowed", "allowed")
N_CHANNELS_SHOWN = 8
N_EXAMPLES = 4  # Grad-CAM examples per class


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="test", choices=("val", "test"), help="split to explain (default %(default)s)")
    p.add_argument("--member", type=int, default=0, help="ensemble member to explain (default %(default)s)")
    p.add_argument("--max-windows", type=NON_NEGATIVE_INT, default=400, help="seeded subset of at most this many windows for the averages (default %(default)s; 0 = all)")


# --- hooks -------------------------------------------------------------------------------------
def conv_activations(model) -> list:
    """[(conv name, module whose output is that conv's activation map)]: the first ReLU after each
    Conv2d (before the next conv), else the conv itself."""
    from torch import nn

    from voicegate.train.reports.params import stage_list

    stages = stage_list(model)
    out, n = [], 0
    for i, m in enumerate(stages):
        if not isinstance(m, nn.Conv2d):
            continue
        n += 1
        act = m
        for nxt in stages[i + 1 :]:
            if isinstance(nxt, (nn.Conv2d, nn.Linear)):
                break
            if isinstance(nxt, nn.ReLU):
                act = nxt
                break
        out.append((f"conv{n}", act))
    return out


def capture(model, modules: list, x, grad: bool = False):
    """Run ``model(x)`` and return (logits, {name: activation}); with ``grad`` the activations
    keep their gradients (call backward on the logits, then read ``.grad``)."""
    store = {}
    handles = []
    for name, mod in modules:
        def hook(_m, _inp, out, name=name):
            if grad:
                out.retain_grad()
            store[name] = out
        handles.append(mod.register_forward_hook(hook))
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, store


def log_odds(logits, labels):
    """Evidence for each window's class: logit[label] - logit[other]."""
    sign = labels.float() * 2 - 1  # +1 allowed, -1 not allowed
    return sign * (logits[:, 1] - logits[:, 0])


def explain(model, x, labels):
    """Grad-CAM maps (B, 224, 224) in [0, 1] (per-window max-normalised), input-gradient
    saliency (B, 224, 224) and p(allowed) for a batch, for each window's own class."""
    import torch
    import torch.nn.functional as F

    model.eval()
    target = conv_activations(model)[-1]
    x = x.clone().requires_grad_(True)
    logits, acts = capture(model, [target], x, grad=True)
    log_odds(logits, labels).sum().backward()
    a = acts[target[0]]
    weights = a.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * a).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam / cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    saliency = x.grad.abs()[:, 0]
    p = torch.softmax(logits.detach(), dim=1)[:, 1]
    return cam.detach().numpy(), saliency.numpy(), p.numpy()


# --- figures -----------------------------------------------------------------------------------
def freq_ticks(ax, n_rows: int = 224) -> None:
    """Label an image's rows (row 0 = highest frequency) in kHz."""
    from voicegate.train.reports.report import frequency_axis

    freqs = frequency_axis(n_rows)
    ticks = [int(abs(freqs - f).argmin()) for f in (0, 2000, 4000, 6000, 8000) if f <= freqs.max() + 1]
    ax.set_yticks(ticks, [f"{freqs[t] / 1000:.0f}" for t in ticks])
    ax.set_ylabel("kHz")


def plot_filters(report, model) -> None:
    import matplotlib.pyplot as plt
    import numpy as np
    from torch import nn

    conv1 = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    w = conv1.weight.detach().numpy()[:, 0]  # (C, k, k)
    n = w.shape[0]
    cols = min(8, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows + 0.6), squeeze=False)
    lim = float(np.abs(w).max()) or 1.0
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(w[i], cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(str(i), fontsize=7)
    fig.suptitle(report.fig_title(f"Learned conv1 filters ({n} x {w.shape[1]}x{w.shape[2]}; red +, blue −)", "trained on train"), fontsize=9)
    fig.tight_layout()
    report.save(fig, "conv1_filters.png", "The learned conv1 filters (rows = frequency, columns = time).")


def plot_feature_maps(report, model, image, label: int, p: float, split: str, filename: str) -> None:
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    mods = conv_activations(model)
    with torch.no_grad():
        _, acts = capture(model, mods, torch.from_numpy(image[None, None].astype(np.float32)))
    fig, axes = plt.subplots(len(mods) + 1, N_CHANNELS_SHOWN, figsize=(1.5 * N_CHANNELS_SHOWN, 1.6 * (len(mods) + 1)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(image, cmap="gray", aspect="auto")
    axes[0, 0].set_title("input", fontsize=7)
    for r, (name, _) in enumerate(mods, 1):
        a = acts[name][0].numpy()
        strongest = np.argsort(a.reshape(a.shape[0], -1).mean(axis=1))[::-1][:N_CHANNELS_SHOWN]
        for c, ch in enumerate(strongest):
            axes[r, c].imshow(a[ch], cmap="magma", aspect="auto")
            axes[r, c].set_title(f"{name} ch{ch} {a.shape[1]}x{a.shape[2]}", fontsize=6)
    fig.suptitle(report.fig_title(f"Feature maps (strongest channels per conv layer), a true {CLASS_NAMES[label]} window, p(allowed) = {p:.2f}", split), fontsize=9)
    fig.tight_layout()
    report.save(fig, filename, f"Feature maps of every conv layer for one {CLASS_NAMES[label]} window.")


def plot_gradcam(report, images, cams, labels, probs, split: str) -> None:
    import matplotlib.pyplot as plt

    n = len(images)
    cols = min(N_EXAMPLES, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (img, cam, y, p) in enumerate(zip(images, cams, labels, probs)):
        ax = axes.flat[i]
        ax.axis("on")
        ax.imshow(img, cmap="gray", aspect="auto")
        ax.imshow(cam, cmap="jet", alpha=0.4, aspect="auto", vmin=0, vmax=1)
        ax.set_title(f"true {CLASS_NAMES[y]}, p(allowed) {p:.2f}", fontsize=8)
        ax.set_xticks([0, 112, 223], ["0", "1", "2 s"])
        freq_ticks(ax)
    fig.suptitle(report.fig_title("Grad-CAM: evidence for each window's true class (last conv layer)", split), fontsize=9)
    fig.tight_layout()
    report.save(fig, "gradcam.png", "Grad-CAM heat maps over the spectrogram (red = regions that push towards the true class).")


def plot_band_saliency(report, freqs, profiles: dict, split: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    keep = freqs > 0
    titles = {"gradcam": "Grad-CAM (true-class evidence) averaged over time",
              "gradient": "|input gradient| averaged over time",
              "intensity": "mean intensity (the EDA plot, these windows)"}
    for ax, kind in zip(axes, ("gradcam", "gradient", "intensity")):
        for y, name in enumerate(CLASS_NAMES):
            ax.plot(freqs[keep], profiles[kind][y][keep], label=name, color=("tab:orange", "tab:green")[y])
        ax.set_xscale("log")
        ax.set_xlabel("frequency (Hz, log)")
        ax.set_title(report.fig_title(titles[kind], split), fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    report.save(fig, "saliency_per_frequency.png",
                "Average saliency per frequency per class (left, middle) beside the average intensity per frequency (right).")


# --- the report --------------------------------------------------------------------------------
def make_report(args: argparse.Namespace):
    import numpy as np
    import torch
    from tqdm import tqdm

    from voicegate.train.reports.report import band_density, band_shares, frequency_axis, open_prepared, open_run, select_split, start_report
    from voicegate.train.reports.report import window_batches

    report = start_report(args, "interpret", "What the CNN looks at")
    run_info, members = open_run(args)
    model = members[args.member][0].eval()
    corpus = open_prepared(args, run_info)
    data = select_split(corpus, args.split, args.max_windows, args.seed)
    if not len(data):
        raise ValueError(f"no {args.split} windows in the prepared corpus")
    split = args.split

    cam_sum = np.zeros((2, 224))
    grad_sum = np.zeros((2, 224))
    int_sum = np.zeros((2, 224))
    counts = np.zeros(2)
    probs = []
    offset = 0
    for x in window_batches(corpus.images, data.rows, batch_size=32, desc="report interpret"):
        labels = torch.as_tensor(data.labels[offset : offset + x.shape[0]])
        offset += x.shape[0]
        cam, sal, p = explain(model, x, labels)
        probs.append(p)
        img = x[:, 0].numpy()
        for y in (0, 1):
            m = labels.numpy() == y
            if m.any():
                cam_sum[y] += cam[m].mean(axis=2).sum(axis=0)
                grad_sum[y] += sal[m].mean(axis=2).sum(axis=0)
                int_sum[y] += img[m].mean(axis=2).sum(axis=0)
                counts[y] += m.sum()
    probs = np.concatenate(probs)
    y_all = data.labels
    safe = np.maximum(counts, 1)[:, None]
    profiles = {"gradcam": cam_sum / safe, "gradient": grad_sum / safe, "intensity": int_sum / safe}
    freqs = frequency_axis()

    steps = tqdm(total=4, desc="figures", unit="fig")
    plot_filters(report, model)
    steps.update()
    examples = {}
    for y in (0, 1):
        idx = np.flatnonzero(y_all == y)
        if idx.size:  # the most confidently correct window of the class
            score = probs[idx] if y == 1 else 1 - probs[idx]
            examples[y] = int(idx[np.argmax(score)])
    for y, i in examples.items():
        img = np.asarray(corpus.images[data.rows[i]], dtype=np.float32)
        plot_feature_maps(report, model, img, y, float(probs[i]), split, f"feature_maps_{CLASS_NAMES[y]}.png")
    steps.update()
    rng = np.random.default_rng(args.seed)
    picks = []
    for y in (0, 1):
        idx = np.flatnonzero(y_all == y)
        picks += sorted(rng.choice(idx, size=min(N_EXAMPLES, idx.size), replace=False).tolist()) if idx.size else []
    imgs = np.asarray(corpus.images[np.sort(data.rows[picks])], dtype=np.float32) if picks else np.zeros((0, 224, 224))
    order = np.argsort(np.argsort(data.rows[picks])) if picks else []
    imgs = imgs[order] if picks else imgs
    if picks:
        cams, _, ps = explain(model, torch.from_numpy(imgs[:, None]), torch.as_tensor(y_all[picks]))
        plot_gradcam(report, imgs, cams, y_all[picks], ps, split)
    steps.update()
    plot_band_saliency(report, freqs, profiles, split)
    steps.update()
    steps.close()

    density = {kind: {CLASS_NAMES[y]: band_density(profiles[kind][y], freqs) for y in (0, 1) if counts[y]}
               for kind in profiles}
    bands = {kind: {CLASS_NAMES[y]: band_shares(profiles[kind][y], freqs) for y in (0, 1) if counts[y]}
             for kind in profiles}
    # how the saliency profile relates to the intensity profile, per class and to the class difference
    relation = {}
    diff = np.abs(profiles["intensity"][1] - profiles["intensity"][0])
    for kind in ("gradcam", "gradient"):
        relation[kind] = {
            CLASS_NAMES[y]: {
                "corr_with_intensity": _corr(profiles[kind][y], profiles["intensity"][y]),
                "corr_with_class_intensity_difference": _corr(profiles[kind][y], diff),
            }
            for y in (0, 1) if counts[y]
        }
    # a profile that is zero everywhere (an untrained model's Grad-CAM) has no peak: None, not row 0
    peaks = {kind: {CLASS_NAMES[y]: (float(freqs[int(np.argmax(profiles[kind][y]))])
                                     if np.any(profiles[kind][y] > 0) else None) for y in (0, 1) if counts[y]}
             for kind in profiles}
    cam_rows = acts_rows(model)
    write_summary(report, args, run_info, data, probs, density, relation, peaks, cam_rows)
    report.data.update({
        "run": str(args.run),
        "member": args.member,
        "arch": run_info.get("arch"),
        "split": split,
        "n_windows": {CLASS_NAMES[y]: int(counts[y]) for y in (0, 1)},
        "accuracy": float(np.mean((probs >= 0.5) == (y_all == 1))),
        "band_shares": bands,
        "band_density": density,
        "gradcam_rows": cam_rows,
        "relation_to_intensity": relation,
        "peak_frequency_hz": peaks,
        "profiles": {k: v.round(6) for k, v in profiles.items()},
        "frequencies_hz": freqs.round(2),
    })
    return report


def _corr(a, b):
    import numpy as np

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def acts_rows(model) -> int:
    """Rows (frequency cells) of the last conv layer's activation map: Grad-CAM's resolution."""
    import torch

    with torch.no_grad():
        _, acts = capture(model.eval(), conv_activations(model)[-1:], torch.zeros(1, 1, 224, 224))
    return int(next(iter(acts.values())).shape[2])


def write_summary(report, args, run_info, data, probs, density, relation, peaks, cam_rows) -> None:
    n_allowed = int((data.labels == 1).sum())
    report.section(
        "Setup",
        f"Run `{args.run}` ({run_info.get('arch')}), member {args.member}, eval mode. {len(data)} clean windows "
        f"of the **{args.split}** split ({n_allowed} allowed, {len(data) - n_allowed} not allowed); window "
        f"accuracy at 0.5: {float(((probs >= 0.5) == (data.labels == 1)).mean()):.3f}. Grad-CAM on the "
        "activation of the last conv layer, for each window's own class (log-odds of allowed for allowed "
        "windows, of not allowed for the rest), max-normalised per window; that layer has "
        f"{cam_rows} frequency rows, so Grad-CAM resolves about {8000 / max(cam_rows, 1):.0f} Hz. Gradient "
        "saliency = |d log-odds / d input|, at full resolution. Per-frequency profiles are averages over "
        "time and over the windows of a class.",
    )
    report.section(
        "Saliency per frequency band",
        "Mean of each profile within the band relative to its mean over all 224 rows (1 = what a flat profile "
        "gives; the bands are octaves, so the linear 4-8 kHz band holds half of the rows).",
    )
    kinds = ("gradcam", "gradient", "intensity")
    names = {"gradcam": "Grad-CAM", "gradient": "gradient magnitude", "intensity": "intensity"}
    band_names = [f"{lo}-{min(hi, 8000)} Hz" for lo, hi in FREQUENCY_BANDS]
    rows = []
    for kind in kinds:
        for cls, d in density[kind].items():
            rows.append([f"{names[kind]} ({cls})", *[d[b] for b in band_names]])
    report.table(["profile (class)", *band_names], rows)
    lines = []
    for kind in ("gradcam", "gradient"):
        for cls, r in relation[kind].items():
            lines.append(
                f"- {names[kind]}, {cls}: "
                + (f"peak at {peaks[kind][cls]:.0f} Hz" if peaks[kind][cls] is not None else "no peak (zero everywhere)")
                + "; correlation with the class's "
                f"intensity profile {_fmt(r['corr_with_intensity'])}, with |intensity(allowed) − intensity(not allowed)| "
                f"{_fmt(r['corr_with_class_intensity_difference'])}"
            )
    report.section(
        "Relation to the EDA intensity plots",
        "\n".join(lines),
        "A positive correlation with the intensity profile means the model looks where the energy is "
        "(formant and harmonic regions); a correlation with the class difference means it looks where "
        "allowed and not-allowed voices differ on average.",
    )


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:+.2f}"

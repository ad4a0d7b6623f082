"""`voicegate report params`: the parameter-space analysis of Zhang, Bengio & Singer (2019),
"Are All Layers Created Equal?", on one member of a run trained with ``--save-every-epoch``.

* **Distance from initialisation**: for each layer l and epoch t,
  ``||theta_l(t) - theta_l(0)||_2 / ||theta_l(0)||_2`` over the layer's parameters.
* **Re-initialisation robustness**: take the trained model (the member's ``best.pt``), reset one
  layer to its weights at epoch tau (tau = 0 is the initialisation, tau = 1 after one epoch, ...)
  and measure the test accuracy that remains; every other layer keeps its trained weights.
* **Re-randomisation robustness**: reset the layer to fresh random weights from the same
  initialiser instead.

A "layer" is a convolution or linear layer together with the BatchNorm that directly follows it
(its normaliser: weights and running statistics are reset together). A layer is *robust*
("ambient" in the paper) when resetting it to its initial weights keeps balanced accuracy within
``--tolerance`` of the trained model, and *critical* otherwise. Balanced accuracy is the main
number because the test split is imbalanced (plain accuracy is reported too).
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from voicegate.device.options import NON_NEGATIVE_INT

log = logging.getLogger(__name__)

NEEDS_RUN = True
RANDOM = "random"  # the re-randomisation column
# Re-randomisation seeds start far from the small seeds training uses (member i = seed + i): with
# seed 0 the first layer drawn after torch.manual_seed(0) would be the run's own initialisation.
RERANDOM_SEED = 1_000_003
EPOCH_FILE = re.compile(r"epoch(\d+)\.pt$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="test", choices=("val", "test"), help="split to measure accuracy on (default %(default)s)")
    p.add_argument("--member", type=int, default=0, help="ensemble member to analyse (default %(default)s)")
    p.add_argument("--max-windows", type=NON_NEGATIVE_INT, default=1000, help="seeded subset of at most this many windows (default %(default)s; 0 = all)")
    p.add_argument("--max-epochs", type=NON_NEGATIVE_INT, default=12, help="at most this many reset epochs in the heat map; 0, 1 and the trained epoch are always in (default %(default)s)")
    p.add_argument("--tolerance", type=float, default=0.02, help="balanced-accuracy drop a robust layer may show (default %(default)s)")


# --- layers and checkpoints --------------------------------------------------------------------
def layer_groups(model) -> list:
    """[(name, [module paths])]: each Conv2d/Linear with the BatchNorm right after it, in forward
    order (names conv1.., fc1.., head)."""
    from torch import nn

    stages = [(f"trunk.{n}", m) for n, m in model.trunk.named_children()]
    stages += [(f"head.{n}", m) for n, m in model.head.named_children()]
    groups, n_conv, n_fc = [], 0, 0
    for i, (path, m) in enumerate(stages):
        if isinstance(m, nn.Conv2d):
            n_conv += 1
            name = f"conv{n_conv}"
        elif isinstance(m, nn.Linear):
            n_fc += 1
            name = "head" if path.startswith("head.") else f"fc{n_fc}"
        else:
            continue
        paths = [path]
        if i + 1 < len(stages) and isinstance(stages[i + 1][1], (nn.BatchNorm1d, nn.BatchNorm2d)):
            paths.append(stages[i + 1][0])
        groups.append((name, paths))
    return groups


def stage_list(model) -> list:
    """The model as one flat list of modules: trunk children then head children."""
    return [*model.trunk.children(), *model.head.children()]


def stage_index(model, path: str) -> int:
    part, idx = path.split(".")
    return int(idx) + (len(list(model.trunk.children())) if part == "head" else 0)


def keys_of(state: dict, paths: list, params_only_of=None) -> list:
    """state_dict keys under any of ``paths``; with ``params_only_of`` (a model) only parameters."""
    keys = [k for k in state if any(k.startswith(p + ".") for p in paths)]
    if params_only_of is not None:
        names = {n for n, _ in params_only_of.named_parameters()}
        keys = [k for k in keys if k in names]
    return keys


def epoch_checkpoints(member_dir: Path) -> dict:
    """{epoch: path} of ``member_dir/epochs/epochNNN.pt``."""
    found = {}
    for p in sorted((member_dir / "epochs").glob("epoch*.pt")):
        m = EPOCH_FILE.search(p.name)
        if m:
            found[int(m.group(1))] = p
    return found


def load_state(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def relative_distances(states: dict, model, groups) -> dict:
    """{layer: [relative distance from epoch 0 at each epoch in sorted(states)]}."""
    import torch

    epochs = sorted(states)
    out = {}
    for name, paths in groups:
        keys = keys_of(states[epochs[0]], paths, params_only_of=model)
        init = torch.cat([states[epochs[0]][k].flatten().float() for k in keys])
        norm = float(init.norm()) or 1.0
        out[name] = [
            float((torch.cat([states[e][k].flatten().float() for k in keys]) - init).norm()) / norm for e in epochs
        ]
    return out


def pick_epochs(available: list, trained_epoch: int, max_epochs: int) -> list:
    """Reset epochs: 0, 1 and the trained epoch always; the rest evenly spread, <= trained."""
    import numpy as np

    usable = [e for e in available if e <= trained_epoch]
    keep = {e for e in (0, 1, trained_epoch) if e in usable}
    if max_epochs and len(usable) > max_epochs:
        spread = np.linspace(0, len(usable) - 1, max(max_epochs - len(keep), 2)).round().astype(int)
        keep |= {usable[i] for i in spread}
    else:
        keep |= set(usable)
    return sorted(keep)


CHANCE_MARGIN = 0.05  # a trained model with balanced accuracy below 0.5 + this is called "at chance"


# --- robustness --------------------------------------------------------------------------------
def variant(trained, paths: list, state: dict | None, seed: int):
    """A copy of ``trained`` with the modules at ``paths`` set from ``state`` (a state dict), or
    re-randomised with their own initialiser when ``state`` is None."""
    import copy

    import torch

    model = copy.deepcopy(trained)
    if state is None:
        torch.manual_seed(seed)
        for path in paths:
            model.get_submodule(path).reset_parameters()
    else:
        own = model.state_dict()
        own.update({k: state[k] for k in keys_of(state, paths)})
        model.load_state_dict(own)
    return model.eval()


def robustness(trained, groups, states: dict, reset_epochs: list, images, rows, labels, seed: int, desc: str) -> dict:
    """{layer: {column: p_allow array}} for columns RANDOM and each reset epoch.

    The layers before the reset one are unchanged, so their output is computed once per batch
    and only the rest of the network runs for each variant.
    """
    import numpy as np
    import torch
    from tqdm import tqdm

    from voicegate.train.reports.report import window_batches

    columns = [RANDOM, *reset_epochs]
    out = {}
    trained.eval()
    stages_trained = stage_list(trained)
    bar = tqdm(total=len(groups) * len(columns), desc=desc, unit="variant")
    for li, (name, paths) in enumerate(groups):
        start = stage_index(trained, paths[0])
        variants = {c: variant(trained, paths, None if c == RANDOM else states[c], RERANDOM_SEED + 1000 * seed + li)
                    for c in columns}
        stages = {c: stage_list(m) for c, m in variants.items()}
        probs = {c: [] for c in columns}
        with torch.no_grad():
            for x in window_batches(images, rows):
                h = x
                for m in stages_trained[:start]:
                    h = m(h)
                for c in columns:
                    z = h
                    for m in stages[c][start:]:  # eval mode: the head's dropout is the identity
                        z = m(z)
                    probs[c].append(torch.softmax(z, dim=1)[:, 1].numpy())
        for c in columns:
            out.setdefault(name, {})[c] = np.concatenate(probs[c]) if probs[c] else np.zeros(0)
        bar.update(len(columns))
    bar.close()
    return out


def scores(labels, p) -> dict:
    from voicegate.train.eval.metrics import classification_metrics

    m = classification_metrics(labels, p)
    return {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"]}


# --- figures -----------------------------------------------------------------------------------
def plot_distances(report, epochs, dist: dict, member: int, trained_epoch: int) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, d in dist.items():
        ax.plot(epochs, d, marker="o", ms=3, label=name)
    ax.axvline(trained_epoch, color="grey", ls=":", lw=1, label=f"best epoch {trained_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("||θ(t) − θ(0)|| / ||θ(0)||")
    ax.set_title(report.fig_title(f"Relative distance from initialisation per layer (member {member})", "train"), fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    report.save(fig, "distance_from_init.png", "Each layer's relative distance from its initialisation over the epochs.")


def plot_heatmaps(report, table: dict, columns: list, baseline: dict, split: str) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    layers = list(table)
    labels = ["re-rand" if c == RANDOM else f"ep {c}" for c in columns]
    fig, axes = plt.subplots(2, 1, figsize=(3 + 0.8 * len(columns), 2 * (1.5 + 0.45 * len(layers))), squeeze=False)
    for ax, metric in zip(axes[:, 0], ("balanced_accuracy", "accuracy")):
        grid = np.array([[table[l][c][metric] for c in columns] for l in layers], dtype=float)
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if grid[i, j] < 0.6 else "black")
        ax.set_xticks(range(len(columns)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(layers)), layers, fontsize=8)
        ax.set_xlabel("layer reset to (re-randomised, or its weights at epoch)")
        ax.set_title(report.fig_title(f"{metric.replace('_', ' ')} after resetting one layer "
                                      f"(trained: {baseline[metric]:.3f})", split), fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    report.save(fig, "reinit_robustness.png",
                "Re-initialisation and re-randomisation robustness: accuracy left after resetting one layer (rows) "
                "to its weights at an epoch (columns) or to fresh random weights.")


# --- the report --------------------------------------------------------------------------------
def make_report(args: argparse.Namespace):
    from voicegate.train.models.classifier import load_checkpoint
    from voicegate.train.reports.report import open_prepared, read_run_info, select_split, start_report

    report = start_report(args, "params", "Parameter space (Zhang, Bengio & Singer 2019)")
    run_info = read_run_info(args.run)
    members = run_info.get("members", [])
    if not 0 <= args.member < len(members):
        raise ValueError(f"--member {args.member}: the run has {len(members)} member(s)")
    member_dir = Path(args.run) / members[args.member]
    trained, ckpt = load_checkpoint(member_dir / run_info.get("checkpoint", "best.pt"))
    found = epoch_checkpoints(member_dir)
    if 0 not in found:
        raise ValueError(f"{member_dir}/epochs has no epoch000.pt: train with --save-every-epoch")
    trained_epoch = int(ckpt.get("epoch") or max(found))

    corpus = open_prepared(args, run_info)
    data = select_split(corpus, args.split, args.max_windows, args.seed)
    if not len(data):
        raise ValueError(f"no {args.split} windows in the prepared corpus")

    groups = layer_groups(trained)
    states = {e: load_state(p) for e, p in found.items()}
    epochs = sorted(states)
    dist = relative_distances(states, trained, groups)
    reset_epochs = pick_epochs(epochs, trained_epoch, args.max_epochs)
    probs = robustness(trained, groups, states, reset_epochs, corpus.images, data.rows, data.labels, args.seed, "report params")

    import numpy as np
    import torch

    from voicegate.train.reports.report import window_batches

    trained.eval()
    with torch.no_grad():
        base_p = np.concatenate([torch.softmax(trained(x), 1)[:, 1].numpy() for x in window_batches(corpus.images, data.rows)])
    baseline = scores(data.labels, base_p)
    if baseline["balanced_accuracy"] < 0.5 + CHANCE_MARGIN:
        log.warning("the trained model is at chance (balanced accuracy %.3f): the layer verdicts mean nothing",
                    baseline["balanced_accuracy"])
    columns = [RANDOM, *reset_epochs]
    table = {name: {c: scores(data.labels, probs[name][c]) for c in columns} for name, _ in groups}

    plot_distances(report, epochs, dist, args.member, trained_epoch)
    plot_heatmaps(report, table, columns, baseline, args.split)

    tol = args.tolerance
    verdict = {}
    for name, _ in groups:
        row = table[name]
        ok = [c for c in reset_epochs if row[c]["balanced_accuracy"] >= baseline["balanced_accuracy"] - tol]
        verdict[name] = {
            "robust_to_reinit": 0 in ok,
            "robust_to_rerandomisation": row[RANDOM]["balanced_accuracy"] >= baseline["balanced_accuracy"] - tol,
            "first_recovering_epoch": min(ok) if ok else None,
            "final_distance": dist[name][epochs.index(trained_epoch)] if trained_epoch in epochs else dist[name][-1],
        }
    write_summary(report, args, run_info, members[args.member], trained_epoch, data, baseline, table, columns, verdict, epochs)
    report.data.update({
        "run": str(args.run),
        "member": args.member,
        "arch": run_info.get("arch"),
        "split": args.split,
        "n_windows": len(data),
        "trained_epoch": trained_epoch,
        "epochs": epochs,
        "reset_epochs": reset_epochs,
        "layers": {name: paths for name, paths in groups},
        "relative_distance": dist,
        "baseline": baseline,
        "robustness": {name: {str(c): v for c, v in row.items()} for name, row in table.items()},
        "verdict": verdict,
        "tolerance": tol,
    })
    return report


def write_summary(report, args, run_info, member_name, trained_epoch, data, baseline, table, columns, verdict, epochs) -> None:
    from voicegate.train.reports.report import fmt

    n_allowed = int((data.labels == 1).sum())
    report.section(
        "Setup",
        f"Run `{args.run}` ({run_info.get('arch')}), {member_name}: trained model = its best checkpoint "
        f"(epoch {trained_epoch}); per-epoch checkpoints {epochs[0]}..{epochs[-1]}. Accuracy on {len(data)} "
        f"clean windows of the **{args.split}** split ({n_allowed} allowed, {len(data) - n_allowed} not allowed). "
        f"Trained model: accuracy {baseline['accuracy']:.3f}, balanced accuracy {baseline['balanced_accuracy']:.3f}."
        + (f" **The trained model is at chance (balanced accuracy within {CHANCE_MARGIN} of 0.5): no reset can "
           "lower it, so every layer reads as robust and none of the verdicts below means anything; train "
           "longer first.**" if baseline["balanced_accuracy"] < 0.5 + CHANCE_MARGIN else ""),
        "A layer = a conv/linear layer with the BatchNorm right after it. Re-init to epoch tau = set that "
        "layer's weights (and BatchNorm statistics) to their values after tau epochs (0 = initialisation); "
        "re-rand = fresh random weights from the same initialiser. Robust = balanced accuracy within "
        f"{args.tolerance} of the trained model.",
    )
    headers = ["layer", "distance from init", "re-rand bal-acc", "ep 0 bal-acc", "ep 0 acc", "ep 1 bal-acc", "robust to re-init", "first epoch that recovers"]
    rows = []
    for name, v in verdict.items():
        row = table[name]
        rows.append([
            name, v["final_distance"], row[RANDOM]["balanced_accuracy"], row[0]["balanced_accuracy"], row[0]["accuracy"],
            row[1]["balanced_accuracy"] if 1 in row else None, "yes" if v["robust_to_reinit"] else "no",
            fmt(v["first_recovering_epoch"]),
        ])
    report.section("Results")
    report.table(headers, rows)
    critical = [n for n, v in verdict.items() if not v["robust_to_reinit"]]
    robust = [n for n, v in verdict.items() if v["robust_to_reinit"]]
    report.text(
        f"Critical layers (resetting them to their initial weights costs more than {args.tolerance} balanced "
        f"accuracy): {', '.join(critical) or 'none'}. Robust ('ambient') layers: {', '.join(robust) or 'none'}.",
        "Balanced accuracy 0.5 is chance; plain accuracy can stay high when a reset model calls every window "
        "'not allowed', because most test windows are not allowed.",
    )

"""DET curves (probit axes) of every model and both policies, per impostor set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voicegate.train.eval.attempts import Attempts
from voicegate.train.eval.verification import REJECTED_SCORE, rejecting_scores

DET_TICKS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95, 0.99)
DET_FLOOR = 5e-4  # rates of 0 and 1 are drawn at this distance from the edge of the probit axis


def det_figure(curves: list, title: str, path: Path) -> Path:
    """Plot DET curves on probit axes.

    ``curves``: dicts with ``label``, ``pos``, ``neg`` (scores) and optionally ``point`` (far, frr)
    for a marked operating point and ``style`` (matplotlib line style).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.special import ndtri

    from voicegate.train.eval.openset import det_curve

    def probit(x):
        return ndtri(np.clip(np.asarray(x, np.float64), DET_FLOOR, 1 - DET_FLOOR))

    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    for i, c in enumerate(curves):
        far, frr, thr = det_curve(c["pos"], c["neg"])
        real = thr > REJECTED_SCORE  # "grant even what the policy never grants" is no operating point
        far, frr = far[real], frr[real]
        color = f"C{c.get('color', i)}"
        (line,) = ax.plot(probit(far), probit(frr), c.get("style", "-"), color=color, label=c["label"])
        if c.get("point") is not None:
            ax.plot(*probit(c["point"]), "o", color=color, markersize=6)
    ticks = probit(DET_TICKS)
    labels = [f"{100 * t:g}" for t in DET_TICKS]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    lim = probit([DET_FLOOR / 2, 1 - DET_FLOOR / 2])  # rates of 0 / 1 sit just inside the frame
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.plot(lim, lim, ":", color="0.6", linewidth=0.8)  # FAR = FRR (the EER line)
    ax.set_xlabel("false-accept rate (%)")
    ax.set_ylabel("false-reject rate (%)")
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=10)  # a long title wraps, never clipped
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def det_curves_for(key: str, gates: dict, attempts: Attempts, scores: dict) -> list:
    """Curves (plain solid, rejecting dashed) of every model against the impostor set ``key``."""
    role = np.asarray(attempts.role)
    pos = role == "allowed"
    neg = role == ("heldout_impostors" if key == "heldout_impostors" else "not_allowed_train")
    curves = []
    for i, (name, gate) in enumerate(gates.items()):
        p = np.asarray(scores[name].p_allow, np.float64)
        t = gate.thresholds
        rej = rejecting_scores(p, scores[name].uncertainty, t.uncertainty_limit)
        if not pos.any() or not neg.any():
            continue
        curves.append({"label": f"{name} plain", "pos": p[pos], "neg": p[neg], "color": i,
                       "point": (np.mean(p[neg] >= t.accept), np.mean(p[pos] < t.accept))})
        curves.append({"label": f"{name} rejecting", "pos": rej[pos], "neg": rej[neg], "color": i,
                       "style": "--",
                       "point": (np.mean(rej[neg] >= t.accept), np.mean(rej[pos] < t.accept))})
    return curves

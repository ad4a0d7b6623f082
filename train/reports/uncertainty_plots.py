"""The figures of `voicegate report uncertainty` (see :mod:`voicegate.train.reports.uncertainty`)."""

from __future__ import annotations

from voicegate.train.reports.uncertainty import CLASS_NAMES, SINGLE


def plot_triangles(report, panels: dict, split: str, filename: str, caption: str) -> None:
    """One row per method; columns: closed-set windows per true class, then held-out impostors.
    x = mean predicted probability of the panel's class, y = its std over samples."""
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(panels)
    fig, axes = plt.subplots(len(methods), 3, figsize=(13, 3.4 * len(methods)), squeeze=False)
    grid = np.linspace(0, 1, 201)
    for r, method in enumerate(methods):
        d = panels[method]
        cols = [
            (f"true {CLASS_NAMES[0]} ({split})", 1.0 - d["mean"][d["y"] == 0], d["std"][d["y"] == 0], d["wrong"][d["y"] == 0], "p(not_allowed)"),
            (f"true {CLASS_NAMES[1]} ({split})", d["mean"][d["y"] == 1], d["std"][d["y"] == 1], d["wrong"][d["y"] == 1], "p(allowed)"),
            ("held-out impostors (heldout)", 1.0 - d["open_mean"], d["open_std"], d["open_mean"] >= 0.5, "p(not_allowed)"),
        ]
        for c, (name, x, y, wrong, xlabel) in enumerate(cols):
            ax = axes[r, c]
            ax.plot(grid, np.sqrt(grid * (1 - grid)), color="grey", lw=0.8, ls="--", label="max std")
            ax.scatter(x[~wrong], y[~wrong], s=5, alpha=0.4, color="tab:blue", label="correct")
            ax.scatter(x[wrong], y[wrong], s=8, alpha=0.7, color="tab:red", label="wrong")
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.01, 0.52)
            ax.set_xlabel(f"mean {xlabel}")
            ax.set_ylabel("std over samples")
            ax.set_title(report.fig_title(f"{method}: {name}", split if c < 2 else "heldout"), fontsize=9)
            if r == 0 and c == 0:
                ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    report.save(fig, filename, caption)


def plot_histograms(report, panels: dict, split: str, filename: str) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(panels)
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.2), squeeze=False)
    bins = np.linspace(0, 1, 26)
    for ax, method in zip(axes[0], methods):
        d = panels[method]
        ax.hist(d["mean"][d["y"] == 0], bins=bins, alpha=0.6, label=f"{CLASS_NAMES[0]} ({split})", color="tab:orange")
        ax.hist(d["mean"][d["y"] == 1], bins=bins, alpha=0.6, label=f"{CLASS_NAMES[1]} ({split})", color="tab:green")
        ax.hist(d["open_mean"], bins=bins, histtype="step", lw=1.5, label="held-out impostors", color="tab:purple")
        ax.set_yscale("log")
        ax.set_xlabel("mean p(allowed)")
        ax.set_title(report.fig_title(method, f"{split} + heldout"), fontsize=9)
    axes[0, 0].set_ylabel("windows (log)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    report.save(fig, filename, "Histograms of the mean p(allowed) per true class and for held-out impostors.")


def plot_reliability(report, y, means: dict, split: str, bins: int, filename: str = "reliability.png") -> None:
    import matplotlib.pyplot as plt

    from voicegate.train.eval.calibration import reliability_bins

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0.5, 1], [0.5, 1], color="grey", ls="--", lw=0.8)
    for method, p in means.items():
        b = reliability_bins(y, p, bins)
        ok = b["count"] > 0
        ax.plot(b["confidence"][ok], b["accuracy"][ok], marker="o", ms=3, label=method)
    ax.set_xlabel("confidence (probability of the predicted class)")
    ax.set_ylabel("accuracy")
    ax.set_title(report.fig_title("Reliability diagram", split), fontsize=9)
    ax.legend(fontsize=7)
    report.save(fig, filename, f"Reliability on {split}: accuracy against confidence per bin (diagonal = calibrated).")


def plot_risk_coverage(report, y, samples: dict, split: str, filename: str = "risk_coverage.png") -> None:
    import matplotlib.pyplot as plt

    from voicegate.train.eval.calibration import risk_coverage, sample_uncertainty

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, measure in zip(axes, ("std", "entropy")):
        for i, (method, s) in enumerate(samples.items()):
            if measure == "std" and method == SINGLE:
                continue
            u = sample_uncertainty(s)
            rc = risk_coverage(y, u["mean"], u[measure])
            ax.plot(rc["coverage"], rc["accuracy"], label=method, color=f"C{i}")
        ax.set_xlabel("coverage (share of windows kept, least uncertain first)")
        ax.set_ylabel("accuracy of the kept windows")
        ax.set_title(report.fig_title(f"Risk-coverage, rejecting by {measure}", split), fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    report.save(fig, filename, f"Accuracy on {split} as the most uncertain windows are rejected.")

"""Calibration and uncertainty-quality metrics for the gate (pure numpy + scikit-learn).

Class 1 = allowed, 0 = not_allowed. Predictions are p(allowed) per window (for a sampling method:
the mean over its T dropout samples or K ensemble members). Sampled predictions are arrays of
shape (S, N): S samples (dropout masks or members) of p(allowed) for N windows.

Definitions (binary, top-label where it matters):

- **ECE**: windows binned by confidence ``max(p, 1 - p)`` into ``n_bins`` equal-width bins over
  [0.5, 1]; the weighted mean over bins of ``|accuracy - mean confidence|``.
- **NLL**: mean ``-log p(true class)``, with p clipped to [eps, 1 - eps].
- **Brier**: mean ``(p(allowed) - y)^2`` (scikit-learn's binary convention; the two-class sum
  convention is exactly twice this).
- **Uncertainty AUROC**: how well an uncertainty score ranks misclassified windows above correct
  ones (0.5 = no better than chance, 1 = every error is more uncertain than every correct window).
- **Risk-coverage**: keep the ``c`` most certain windows and report their accuracy, for every c.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

EPS = 1e-12


def _probs(p_allow) -> np.ndarray:
    p = np.asarray(p_allow, dtype=np.float64).ravel()
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise ValueError("probabilities must be finite and in [0, 1]")
    return p


def _labels(y_true, n: int) -> np.ndarray:
    y = np.asarray(y_true).astype(int).ravel()
    if y.size != n:
        raise ValueError(f"labels and probabilities differ in length: {y.size} vs {n}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (not_allowed) or 1 (allowed)")
    return y


def predictions(p_allow, threshold: float = 0.5) -> np.ndarray:
    """Predicted class: 1 (allowed) where p(allowed) >= threshold."""
    return (_probs(p_allow) >= threshold).astype(int)


def confidence(p_allow) -> np.ndarray:
    """Top-label confidence: the probability of the predicted class."""
    p = _probs(p_allow)
    return np.maximum(p, 1.0 - p)


def reliability_bins(y_true, p_allow, n_bins: int = 10) -> dict:
    """Per confidence bin over [0.5, 1]: edges, window count, accuracy and mean confidence
    (NaN for empty bins)."""
    p = _probs(p_allow)
    y = _labels(y_true, p.size)
    conf = confidence(p)
    correct = (predictions(p) == y).astype(float)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
    return {"edges": edges, "count": count.astype(int), "accuracy": acc, "confidence": mean_conf}


def expected_calibration_error(y_true, p_allow, n_bins: int = 10) -> float:
    """ECE over top-label confidence bins (see the module docstring)."""
    b = reliability_bins(y_true, p_allow, n_bins)
    n = b["count"].sum()
    if n == 0:
        return float("nan")
    full = b["count"] > 0
    gap = np.abs(b["accuracy"][full] - b["confidence"][full])
    return float(np.sum(b["count"][full] * gap) / n)


def negative_log_likelihood(y_true, p_allow, eps: float = 1e-7) -> float:
    """Mean -log p(true class), with probabilities clipped to [eps, 1 - eps]."""
    p = _probs(p_allow)
    y = _labels(y_true, p.size)
    p_true = np.clip(np.where(y == 1, p, 1.0 - p), eps, 1.0 - eps)
    return float(-np.mean(np.log(p_true))) if p.size else float("nan")


def brier_score(y_true, p_allow) -> float:
    """Mean squared error of p(allowed) against the 0/1 label."""
    p = _probs(p_allow)
    y = _labels(y_true, p.size)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")


def auroc(positive, score) -> float | None:
    """ROC AUC of ``score`` for finding ``positive`` (boolean) windows; None when one class is absent."""
    pos = np.asarray(positive, dtype=bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if pos.size != s.size:
        raise ValueError(f"positive and score differ in length: {pos.size} vs {s.size}")
    if pos.all() or not pos.any():
        return None
    return float(roc_auc_score(pos, s))


def misclassification_auroc(y_true, p_allow, uncertainty, threshold: float = 0.5) -> float | None:
    """AUROC of the uncertainty for spotting misclassified windows (None without errors or without
    correct windows)."""
    p = _probs(p_allow)
    y = _labels(y_true, p.size)
    return auroc(predictions(p, threshold) != y, uncertainty)


def risk_coverage(y_true, p_allow, uncertainty, threshold: float = 0.5) -> dict:
    """Accuracy of the ``c`` least uncertain windows for c = 1..N.

    Returns ``coverage`` (c / N), ``accuracy`` (of the kept windows), ``aurc`` (area under the
    risk = 1 - accuracy curve, lower is better) and ``accuracy_at`` for coverages 1.0, 0.9, 0.8,
    0.5. Ties in uncertainty are broken by keeping the more confident window first.
    """
    p = _probs(p_allow)
    y = _labels(y_true, p.size)
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    if u.size != p.size:
        raise ValueError(f"uncertainty and probabilities differ in length: {u.size} vs {p.size}")
    if p.size == 0:
        return {"coverage": np.zeros(0), "accuracy": np.zeros(0), "aurc": float("nan"), "accuracy_at": {}}
    order = np.lexsort((-confidence(p), u))  # primary key: uncertainty ascending
    correct = (predictions(p, threshold) == y)[order].astype(float)
    kept = np.arange(1, p.size + 1)
    acc = np.cumsum(correct) / kept
    coverage = kept / p.size
    at = {}
    for c in (1.0, 0.9, 0.8, 0.5):
        k = max(1, int(np.ceil(c * p.size)))
        at[f"{c:.1f}"] = float(acc[k - 1])
    return {"coverage": coverage, "accuracy": acc, "aurc": float(np.mean(1.0 - acc)), "accuracy_at": at}


# --- uncertainty from samples ----------------------------------------------------------------
def _samples(samples) -> np.ndarray:
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim == 1:
        s = s[None]
    if s.ndim != 2:
        raise ValueError(f"samples must be (S, N) p(allowed), got shape {s.shape}")
    _probs(s)
    return s


def binary_entropy(p) -> np.ndarray:
    """Entropy in nats of a Bernoulli(p) (0 at p = 0 or 1, log 2 at p = 0.5)."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return -(p * np.log(p) + (1.0 - p) * np.log(1.0 - p))


def sample_uncertainty(samples) -> dict:
    """From (S, N) sampled p(allowed): ``mean``, ``std`` (population std over samples),
    ``entropy`` (predictive entropy of the mean) and ``mutual_info`` (entropy of the mean minus
    the mean entropy of the samples: the epistemic part). One sample gives std = MI = 0."""
    s = _samples(samples)
    mean = s.mean(axis=0)
    entropy = binary_entropy(mean)
    mi = np.maximum(entropy - binary_entropy(s).mean(axis=0), 0.0)
    return {"mean": mean, "std": s.std(axis=0), "entropy": entropy, "mutual_info": mi}


UNCERTAINTY_MEASURES = ("std", "entropy", "mutual_info")


def uncertainty_report(
    y_true,
    samples,
    n_bins: int = 10,
    threshold: float = 0.5,
    open_samples=None,
) -> dict:
    """Every calibration and uncertainty figure for one method on one split (JSON-ready).

    ``samples``: (S, N) p(allowed) on closed-set windows with labels ``y_true``. ``open_samples``:
    optional (S, M) p(allowed) on held-out impostor windows; then the report adds the open-set
    AUROCs: of p(allowed) separating allowed closed-set windows (positives) from impostors, and of
    each uncertainty measure for flagging impostors among all closed-set windows.
    """
    from voicegate.train.eval.metrics import classification_metrics
    from voicegate.train.eval.openset import eer

    u = sample_uncertainty(samples)
    p = u["mean"]
    y = _labels(y_true, p.size)
    cls = classification_metrics(y, p, threshold)
    out = {
        "n": int(p.size),
        "samples": int(_samples(samples).shape[0]),
        "accuracy": cls.get("accuracy"),
        "f1_weighted": cls.get("f1_weighted"),
        "balanced_accuracy": cls.get("balanced_accuracy"),
        "roc_auc": cls.get("roc_auc"),
        "ece": expected_calibration_error(y, p, n_bins),
        "nll": negative_log_likelihood(y, p),
        "brier": brier_score(y, p),
        "misclassified": int((predictions(p, threshold) != y).sum()),
        "error_auroc": {m: misclassification_auroc(y, p, u[m], threshold) for m in UNCERTAINTY_MEASURES},
        "aurc": {m: risk_coverage(y, p, u[m], threshold)["aurc"] for m in UNCERTAINTY_MEASURES},
        "accuracy_at_coverage": {
            m: risk_coverage(y, p, u[m], threshold)["accuracy_at"] for m in UNCERTAINTY_MEASURES
        },
    }
    if open_samples is not None:
        uo = sample_uncertainty(open_samples)
        allowed = p[y == 1]
        out["open_set"] = {
            "n_impostor": int(uo["mean"].size),
            "n_allowed": int(allowed.size),
            "auroc_p_allow": auroc(
                np.r_[np.ones(allowed.size), np.zeros(uo["mean"].size)], np.r_[allowed, uo["mean"]]
            ),
            "impostor_accept_rate": float(np.mean(uo["mean"] >= threshold)) if uo["mean"].size else None,
            "eer": eer(allowed, uo["mean"])[0] if allowed.size and uo["mean"].size else None,
            # the accepted impostors, and how uncertain the least uncertain of them is: an accepted
            # impostor with low uncertainty is a false accept no rejection threshold can catch
            "n_accepted": int((uo["mean"] >= threshold).sum()),
            "accepted_min_uncertainty": {
                m: float(uo[m][uo["mean"] >= threshold].min()) if (uo["mean"] >= threshold).any() else None
                for m in UNCERTAINTY_MEASURES
            },
            "auroc_uncertainty": {
                m: auroc(np.r_[np.zeros(p.size), np.ones(uo[m].size)], np.r_[u[m], uo[m]])
                for m in UNCERTAINTY_MEASURES
            },
        }
    return out


# --- paired bootstrap over groups ------------------------------------------------------------
BOOTSTRAP_METRICS = ("accuracy", "ece", "nll", "brier", "error_auroc")


def core_metrics(y_true, p_allow, uncertainty, n_bins: int = 10, threshold: float = 0.5) -> dict:
    """Accuracy, ECE, NLL, Brier and the error AUROC of ``uncertainty`` (None without errors)."""
    p = _probs(p_allow)
    y = _labels(y_true, p.size)
    return {
        "accuracy": float(np.mean(predictions(p, threshold) == y)) if p.size else float("nan"),
        "ece": expected_calibration_error(y, p, n_bins),
        "nll": negative_log_likelihood(y, p),
        "brier": brier_score(y, p),
        "error_auroc": misclassification_auroc(y, p, uncertainty, threshold),
    }


def paired_bootstrap(
    y_true, groups, a: tuple, b: tuple, n_boot: int = 500, seed: int = 0, n_bins: int = 10, level: float = 0.95
) -> dict:
    """Confidence intervals of ``metric(b) - metric(a)`` for BOOTSTRAP_METRICS.

    ``a`` and ``b`` are (p_allow, uncertainty) of two methods on the same windows. Whole groups
    (recordings) are resampled with replacement, because windows of one recording are correlated;
    both methods see the same resample. Returns per metric the point difference, the percentile
    interval and the number of resamples where the metric was defined.
    """
    y = _labels(y_true, _probs(a[0]).size)
    g = np.asarray(groups).astype(str).ravel()
    if g.size != y.size:
        raise ValueError(f"groups and labels differ in length: {g.size} vs {y.size}")
    ids, inverse = np.unique(g, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(ids.size)]
    rng = np.random.default_rng(seed)
    point_a, point_b = core_metrics(y, *a, n_bins=n_bins), core_metrics(y, *b, n_bins=n_bins)
    diffs = {m: [] for m in BOOTSTRAP_METRICS}
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, ids.size, ids.size)])
        ma = core_metrics(y[idx], a[0][idx], a[1][idx], n_bins=n_bins)
        mb = core_metrics(y[idx], b[0][idx], b[1][idx], n_bins=n_bins)
        for m in BOOTSTRAP_METRICS:
            if ma[m] is not None and mb[m] is not None:
                diffs[m].append(mb[m] - ma[m])
    tail = (1.0 - level) / 2 * 100
    out = {}
    for m in BOOTSTRAP_METRICS:
        d = np.asarray(diffs[m])
        point = None if point_a[m] is None or point_b[m] is None else point_b[m] - point_a[m]
        lo, hi = (np.percentile(d, [tail, 100 - tail]) if d.size else (np.nan, np.nan))
        out[m] = {"difference": point, "low": float(lo), "high": float(hi), "resamples": int(d.size)}
    return out

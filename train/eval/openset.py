"""Verification metrics for a gate: FAR, FRR, EER, DET curves and threshold selection.

Scores are p(allowed) (higher = more likely an allowed person). "Positive" attempts come from
allowed people, "negative" ones from everybody else. A gate accepts when score >= threshold.
Pure numpy.
"""

from __future__ import annotations

import numpy as np


def _as_scores(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("need at least one score")
    if not np.all(np.isfinite(a)):
        raise ValueError("scores must be finite")
    return a


def far_frr(scores_pos, scores_neg, threshold: float) -> tuple[float, float]:
    """(false-accept rate, false-reject rate) when accepting score >= threshold."""
    pos, neg = _as_scores(scores_pos), _as_scores(scores_neg)
    return float(np.mean(neg >= threshold)), float(np.mean(pos < threshold))


def threshold_at_far(scores_neg, target_far: float) -> float:
    """The lowest threshold whose FAR on ``scores_neg`` is at most ``target_far``.

    With n negatives at most floor(target_far * n) of them may be accepted; the threshold sits
    just above the next-highest negative score.
    """
    if not 0.0 <= target_far <= 1.0:
        raise ValueError(f"target_far must be in [0, 1], got {target_far}")
    neg = np.sort(_as_scores(scores_neg))[::-1]
    k = int(np.floor(target_far * neg.size + 1e-9))  # negatives we may accept
    if k >= neg.size:
        return float(neg[-1])
    return float(np.nextafter(neg[k], np.inf))


def det_curve(scores_pos, scores_neg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FAR and FRR at every distinct threshold (ascending thresholds; FAR falls, FRR rises)."""
    pos, neg = _as_scores(scores_pos), _as_scores(scores_neg)
    thresholds = np.unique(np.concatenate([pos, neg, [np.inf]]))
    pos_s, neg_s = np.sort(pos), np.sort(neg)
    # accept = score >= t: FAR = share of neg >= t, FRR = share of pos < t
    far = 1.0 - np.searchsorted(neg_s, thresholds, side="left") / neg.size
    frr = np.searchsorted(pos_s, thresholds, side="left") / pos.size
    return far, frr, thresholds


def eer(scores_pos, scores_neg) -> tuple[float, float]:
    """Equal error rate and the threshold where it occurs.

    Where FAR and FRR cross between two thresholds, the EER is taken at the crossing of the
    straight lines joining them (the usual convex interpolation).
    """
    far, frr, thr = det_curve(scores_pos, scores_neg)
    diff = far - frr  # decreasing from >= 0 to <= 0
    i = int(np.argmax(diff <= 0))  # first threshold where FRR >= FAR
    if i == 0 or diff[i] == 0:
        return float((far[i] + frr[i]) / 2), float(thr[i])
    d0, d1 = diff[i - 1], diff[i]
    w = d0 / (d0 - d1)
    rate = far[i - 1] + w * (far[i] - far[i - 1])
    return float(rate), float(thr[i])


def operating_point(scores_pos, scores_neg, threshold: float) -> dict:
    """FAR, FRR and counts at one threshold, as a JSON-ready dict."""
    far, frr = far_frr(scores_pos, scores_neg, threshold)
    return {
        "threshold": float(threshold),
        "far": far,
        "frr": frr,
        "n_genuine": int(np.size(scores_pos)),
        "n_impostor": int(np.size(scores_neg)),
    }

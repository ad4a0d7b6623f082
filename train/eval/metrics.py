"""Classification metrics for the gate (numpy + scikit-learn, no torch).

Class 1 = allowed, 0 = not_allowed. Inputs are per-window (or per-utterance) true labels and
p(allowed). Everything returned is plain Python (JSON-ready).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)


def classification_metrics(y_true, p_allow, threshold: float = 0.5) -> dict:
    """Accuracy, weighted F1 (the study's metric), macro F1, balanced accuracy, the confusion
    matrix (rows = true [not_allowed, allowed], columns = predicted), ROC AUC (None when only
    one class is present), the false accept / false reject rates, and the counts."""
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(p_allow, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true and p_allow differ in length: {y.shape} vs {p.shape}")
    if y.size == 0:
        return {"n": 0}
    pred = (p >= threshold).astype(int)
    cm = confusion_matrix(y, pred, labels=[0, 1])
    (tn, fp), (fn, tp) = cm
    both = len(np.unique(y)) == 2
    return {
        "n": int(y.size),
        "n_allowed": int((y == 1).sum()),
        "n_not_allowed": int((y == 0).sum()),
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(y, pred)),
        "f1_weighted": float(f1_score(y, pred, average="weighted", labels=[0, 1], zero_division=0)),
        "f1_macro": float(f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if both else float(accuracy_score(y, pred)),
        "roc_auc": float(roc_auc_score(y, p)) if both else None,
        "false_accept_rate": float(fp / (tn + fp)) if tn + fp else None,
        "false_reject_rate": float(fn / (fn + tp)) if fn + tp else None,
        "confusion_matrix": cm.astype(int).tolist(),
    }


def per_group_accept(groups, p_allow, y_true=None, threshold: float = 0.5) -> dict:
    """Per group (speaker or recording): windows, share classified allowed, mean p(allowed), and
    the group's true label when ``y_true`` is given."""
    g = np.asarray(groups).astype(str).ravel()
    p = np.asarray(p_allow, dtype=float).ravel()
    y = None if y_true is None else np.asarray(y_true).astype(int).ravel()
    out = {}
    for name in sorted(np.unique(g), key=_natural_key):
        m = g == name
        row = {
            "n": int(m.sum()),
            "accept_share": float((p[m] >= threshold).mean()),
            "mean_p_allow": float(p[m].mean()),
        }
        if y is not None:
            row["label"] = int(y[m][0])
        out[str(name)] = row
    return out


def utterance_scores(recordings, p_allow, y_true) -> tuple:
    """Mean p(allowed) over each recording's windows -> (recording ids, labels, mean p)."""
    r = np.asarray(recordings).astype(str).ravel()
    p = np.asarray(p_allow, dtype=float).ravel()
    y = np.asarray(y_true).astype(int).ravel()
    ids, inverse = np.unique(r, return_inverse=True)
    mean_p = np.bincount(inverse, weights=p, minlength=ids.size) / np.bincount(inverse, minlength=ids.size)
    labels = np.zeros(ids.size, dtype=int)
    labels[inverse] = y
    return ids, labels, mean_p


def split_report(y_true, p_allow, speakers, recordings, threshold: float = 0.5) -> dict:
    """Window-level and utterance-level metrics plus the per-speaker accept share for one split."""
    _, u_labels, u_p = utterance_scores(recordings, p_allow, y_true)
    return {
        "windows": classification_metrics(y_true, p_allow, threshold),
        "utterances": classification_metrics(u_labels, u_p, threshold),
        "per_speaker": per_group_accept(speakers, p_allow, y_true, threshold),
    }


def _natural_key(s: str):
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def summary_line(report: dict) -> str:
    """One compact line: window bal-acc / F1w / AUC and utterance bal-acc of a split_report."""
    w, u = report["windows"], report["utterances"]
    if not w.get("n"):
        return "no windows"
    auc = "n/a" if w["roc_auc"] is None else f"{w['roc_auc']:.3f}"
    return (
        f"windows n={w['n']} acc={w['accuracy']:.3f} bal_acc={w['balanced_accuracy']:.3f} "
        f"f1w={w['f1_weighted']:.3f} auc={auc} | utterances n={u['n']} bal_acc={u['balanced_accuracy']:.3f}"
    )

"""Security figures of one model over the attempts: plain decision, rejecting policy, retry,
Wilson intervals, and the closed-set classification figures (see :mod:`voicegate.train.eval.evaluate`).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from voicegate.device.policy import GRANTED, UNCERTAIN

from voicegate.train.eval.attempts import OUTCOMES, Attempts, ModelScores

log = logging.getLogger(__name__)

STUDY_THRESHOLD = 0.5  # the study's argmax decision
REJECTED_SCORE = -1.0  # the rejecting policy's score for an attempt it will never grant


def outcome_shares(decisions: Sequence[str]) -> dict:
    """Share of each outcome (GRANTED / DENIED / UNCERTAIN / FAILED) and the count."""
    d = np.asarray(decisions, dtype=object)
    n = int(d.size)
    out = {k: (float(np.mean(d == k)) if n else 0.0) for k in OUTCOMES}
    out["n"] = n
    return out


def after_one_retry(decisions: Sequence[str], groups: Sequence[str]) -> tuple[np.ndarray, int]:
    """Final outcome of each attempt when an UNCERTAIN answer ("please repeat") gets one retry.

    The retry of attempt i is the next attempt of the same group (speaker) in the given order,
    wrapping around to the group's first; its outcome is final (UNCERTAIN again stays UNCERTAIN,
    i.e. not granted). A group with a single attempt has nobody to retry with: its UNCERTAIN
    stays. Returns (final outcomes, number of UNCERTAIN attempts that had no retry).
    """
    d = np.asarray(decisions, dtype=object)
    g = np.asarray(groups).astype(str)
    if d.shape != g.shape:
        raise ValueError(f"decisions and groups differ in length: {d.shape} vs {g.shape}")
    final = d.copy()
    no_retry = 0
    for name in np.unique(g):
        rows = np.flatnonzero(g == name)
        for k, i in enumerate(rows):
            if d[i] != UNCERTAIN:
                continue
            if rows.size < 2:
                no_retry += 1
                continue
            final[i] = d[rows[(k + 1) % rows.size]]
    return final, no_retry


def rejecting_scores(p_allow, uncertainty, limit: float) -> np.ndarray:
    """Scores of the rejecting policy for threshold sweeps: p_allow where the uncertainty is
    within the limit, else REJECTED_SCORE (never granted at any threshold in [0, 1])."""
    p = np.asarray(p_allow, dtype=np.float64)
    u = np.asarray(uncertainty, dtype=np.float64)
    return np.where(u <= limit, p, REJECTED_SCORE)


def wilson_interval(k: int, n: int, z: float = 1.96) -> list:
    """95 % Wilson score interval [low, high] of a rate of k out of n (n > 0)."""
    if n <= 0:
        return [0.0, 1.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def add_intervals(report: dict, n_genuine: int, n_impostor: int, keys=("far", "frr")) -> dict:
    """Add ``<key>_ci95`` (Wilson) for FAR (over impostors) and FRR-like keys (over genuine)."""
    for key in keys:
        n = n_impostor if key.startswith("far") else n_genuine
        report[f"{key}_ci95"] = wilson_interval(int(round(report[key] * n)), n)
    return report


def plain_report(pos, neg, threshold: float) -> dict:
    """Accept iff score >= threshold: FAR, FRR (with 95 % intervals), counts, and the EER."""
    from voicegate.train.eval.openset import eer, operating_point

    out = add_intervals(operating_point(pos, neg, threshold), np.size(pos), np.size(neg))
    rate, at = eer(pos, neg)
    out["eer"], out["eer_threshold"] = rate, at
    return out


def policy_report(pos_decisions, neg_decisions, pos_groups, neg_groups) -> dict:
    """The rejecting policy's accounting: GRANTED is the only access.

    FAR = impostor attempts GRANTED; FRR = genuine attempts not GRANTED (DENIED, UNCERTAIN or
    FAILED); the UNCERTAIN shares; and FAR/FRR after one retry (:func:`after_one_retry`).
    """
    pos_d = np.asarray(pos_decisions, dtype=object)
    neg_d = np.asarray(neg_decisions, dtype=object)
    if pos_d.size == 0 or neg_d.size == 0:
        raise ValueError("need genuine and impostor attempts")
    pos_final, pos_nr = after_one_retry(pos_d, pos_groups)
    neg_final, neg_nr = after_one_retry(neg_d, neg_groups)
    n_all = pos_d.size + neg_d.size
    report = {
        "far": float(np.mean(neg_d == GRANTED)),
        "frr": float(np.mean(pos_d != GRANTED)),
        "uncertain_share": {
            "genuine": float(np.mean(pos_d == UNCERTAIN)),
            "impostor": float(np.mean(neg_d == UNCERTAIN)),
            "all": float((np.sum(pos_d == UNCERTAIN) + np.sum(neg_d == UNCERTAIN)) / n_all),
        },
        "far_after_retry": float(np.mean(neg_final == GRANTED)),
        "frr_after_retry": float(np.mean(pos_final != GRANTED)),
        "uncertain_without_retry": {"genuine": int(pos_nr), "impostor": int(neg_nr)},
        "genuine": outcome_shares(pos_d),
        "impostor": outcome_shares(neg_d),
    }
    return add_intervals(report, pos_d.size, neg_d.size, ("far", "frr", "far_after_retry", "frr_after_retry"))


def verification_report(s: dict, pos: np.ndarray, neg: np.ndarray, thresholds) -> dict:
    """Plain and rejecting-policy figures for genuine rows ``pos`` against impostor rows ``neg``.

    ``s`` holds per-attempt arrays (p_allow, uncertainty, decision, speaker) and per-window
    arrays (window_p, window_attempt).
    """
    p, u = s["p_allow"], s["uncertainty"]
    rej = rejecting_scores(p, u, thresholds.uncertainty_limit)
    w_pos = s["window_p"][np.isin(s["window_attempt"], pos)]
    w_neg = s["window_p"][np.isin(s["window_attempt"], neg)]
    report = {
        "n_genuine": int(pos.size),
        "n_impostor": int(neg.size),
        "plain": {
            "attempts": plain_report(p[pos], p[neg], thresholds.accept),
            "windows": plain_report(w_pos, w_neg, thresholds.accept) if w_pos.size and w_neg.size else None,
        },
        "rejecting": policy_report(s["decision"][pos], s["decision"][neg], s["speaker"][pos], s["speaker"][neg]),
    }
    from voicegate.train.eval.openset import eer

    rate, at = eer(rej[pos], rej[neg])
    report["rejecting"]["eer"], report["rejecting"]["eer_threshold"] = rate, at
    return report


def closed_set_report(a: dict, s: dict, rows: np.ndarray, threshold: float) -> dict:
    """Classification figures on the closed-set attempts ``rows``: per window, attempt, recording."""
    from voicegate.train.eval.metrics import classification_metrics, split_report

    win = np.isin(s["window_attempt"], rows)
    w_rows = s["window_attempt"][win]
    report = split_report(a["label"][w_rows], s["window_p"][win], a["speaker"][w_rows],
                          a["recording"][w_rows], threshold)
    report = {
        "threshold": float(threshold),
        "windows": report["windows"],
        "attempts": classification_metrics(a["label"][rows], s["p_allow"][rows], threshold),
        "recordings": report["utterances"],
        "per_speaker": report["per_speaker"],
    }
    return report


def decision_table(a: dict, s: dict, rows: np.ndarray) -> dict:
    """Outcome shares per role (allowed / not_allowed_train / heldout_impostors)."""
    return {role: outcome_shares(s["decision"][rows][a["role"][rows] == role])
            for role in dict.fromkeys(a["role"][rows].tolist())}


def model_report(name: str, gate, attempts: Attempts, scores: ModelScores) -> dict:
    """Every figure for one model (see the module docstring)."""
    a = attempts.arrays()
    s = {
        "p_allow": np.asarray(scores.p_allow, np.float64),
        "uncertainty": np.asarray(scores.uncertainty, np.float64),
        "decision": np.asarray(scores.decision, dtype=object),
        "window_p": np.asarray(scores.window_p, np.float64),
        "window_attempt": np.asarray(scores.window_attempt, np.int64),
        "speaker": a["speaker"],
    }
    role = a["role"]
    closed = np.flatnonzero(role != "heldout_impostors")
    genuine = np.flatnonzero(role == "allowed")
    impostor_rows = {
        "heldout_impostors": np.flatnonzero(role == "heldout_impostors"),
        "not_allowed_split": np.flatnonzero(role == "not_allowed_train"),
    }
    t = gate.thresholds
    lat = np.asarray(scores.latency_ms, np.float64)
    out = {
        "path": str(gate.path),
        "sha256": gate.sha256,
        "method": gate.method,
        "samples": gate.samples,
        "architecture": gate.contract.architecture,
        "thresholds": t.to_dict(),
        "uncertainty_measure": gate.measure,
        "latency_ms": {"median": float(np.median(lat)), "p95": float(np.percentile(lat, 95)),
                       "n": int(lat.size)} if lat.size else None,
        "decisions": decision_table(a, s, np.arange(len(attempts))),
    }
    if closed.size and genuine.size:
        out["closed_set"] = closed_set_report(a, s, closed, t.accept)
        study = closed_set_report(a, s, closed, STUDY_THRESHOLD)
        out["closed_set_at_0.5"] = {k: study[k] for k in ("threshold", "windows", "attempts", "recordings")}
    out["verification"] = {}
    for key, rows in impostor_rows.items():
        if genuine.size and rows.size:
            out["verification"][key] = verification_report(s, genuine, rows, t)
        else:
            log.warning("%s: no %s attempts (or no genuine ones); skipped", name, key)
    return out

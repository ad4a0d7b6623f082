"""Figures of the enrolment protocol (:mod:`.enrolment`): EER, FRR at a FAR, minDCF, the shipped
operating point, intervals, a Markdown table and a DET plot.

Score-based figures (EER, FRR at FAR 1 % / 0.1 %, minDCF) use the per-trial cosine score (the
mean over the MC samples / ensemble members of each sample's cosine with the profile), so a peer
without a calibration (the GE2E teacher) is scored the same way. The operating point uses the
device's rule (TEAM.md, :mod:`voicegate.device.scoring`): per sample p_s = calibration(cos_s),
p_allow = mean, uncertainty = std (or the contract's measure), then the device policy (GRANTED /
DENIED / UNCERTAIN); a failed attempt is FAILED (no access).

Intervals: 95 % Wilson for every rate (:func:`~voicegate.train.eval.verification.wilson_interval`),
and a bootstrap over enrolled speakers for the EER (whole profiles are resampled: a profile's
genuine trials and the impostor trials against it move together).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from voicegate.device.policy import Thresholds, summarize

FAR_TARGETS = (0.01, 0.001)
P_TARGET = 0.01  # minDCF prior (C_miss = C_fa = 1)
BOOTSTRAP = 200  # resamples of the enrolled speakers for the EER interval


# --- score figures ----------------------------------------------------------------------------
def min_dcf(pos, neg, p_target: float = P_TARGET, c_miss: float = 1.0, c_fa: float = 1.0) -> tuple[float, float]:
    """Normalised minimum detection cost (NIST SRE): min over thresholds of
    (c_miss * P_t * FRR + c_fa * (1 - P_t) * FAR) / min(c_miss * P_t, c_fa * (1 - P_t)),
    and the threshold where it occurs."""
    from voicegate.train.eval.openset import det_curve

    far, frr, thr = det_curve(pos, neg)
    cost = c_miss * p_target * frr + c_fa * (1 - p_target) * far
    i = int(np.argmin(cost))
    return float(cost[i] / min(c_miss * p_target, c_fa * (1 - p_target))), float(thr[i])


def frr_at_far(pos, neg, target: float) -> dict:
    """FRR at the lowest threshold whose FAR is <= ``target``, with its Wilson interval.
    ``resolved`` is False when there are too few impostor trials for the target to mean anything
    (fewer than 1 / target)."""
    from voicegate.train.eval.verification import wilson_interval
    from voicegate.train.eval.openset import far_frr, threshold_at_far

    t = threshold_at_far(neg, target)
    far, frr = far_frr(pos, neg, t)
    n_pos, n_neg = int(np.size(pos)), int(np.size(neg))
    return {"target_far": target, "threshold": t, "far": far, "frr": frr,
            "frr_ci95": wilson_interval(int(round(frr * n_pos)), n_pos),
            "resolved": bool(n_neg * target >= 1.0)}


def bootstrap_eer(score, genuine, profile, n_boot: int = BOOTSTRAP, seed: int = 0) -> Optional[list]:
    """95 % percentile interval of the EER when the enrolled speakers (profiles) are resampled."""
    from voicegate.train.eval.openset import eer

    ids = np.unique(profile)
    if ids.size < 2:
        return None
    rng = np.random.default_rng(seed)
    rates = []
    for _ in range(n_boot):
        weight = np.bincount(rng.choice(ids, ids.size), minlength=int(profile.max()) + 1)[profile]
        pos = np.repeat(score[genuine], weight[genuine])
        neg = np.repeat(score[~genuine], weight[~genuine])
        if pos.size and neg.size:
            rates.append(eer(pos, neg)[0])
    return [float(v) for v in np.percentile(rates, [2.5, 97.5])] if rates else None


def score_figures(score, genuine, profile, n_boot: int = BOOTSTRAP, seed: int = 0) -> dict:
    from voicegate.train.eval.openset import eer

    pos, neg = score[genuine], score[~genuine]
    rate, at = eer(pos, neg)
    dcf, dcf_at = min_dcf(pos, neg)
    return {
        "eer": rate, "eer_threshold": at, "eer_ci95_speaker_bootstrap": bootstrap_eer(score, genuine, profile, n_boot, seed),
        "frr_at_far": {f"{100 * t:g}%": frr_at_far(pos, neg, t) for t in FAR_TARGETS},
        "min_dcf": {"p_target": P_TARGET, "value": dcf, "threshold": dcf_at},
    }


# --- the shipped operating point ----------------------------------------------------------------
def decisions(cos, failed, calibration: dict, thresholds: Thresholds, measure: str = "std") -> tuple:
    """(p_allow, decision) per trial from its (trials, S) cosine samples, by the device's rule
    (:func:`voicegate.device.scoring.calibrate` and ``decide_by_name`` with the trial's profile as
    the only one enrolled); FAILED where the attempt failed."""
    from voicegate.device.encoder import check_calibration
    from voicegate.device.scoring import ProfileScore, calibrate, decide_by_name
    from voicegate.train.eval.attempts import FAILED

    p_s = calibrate(cos, check_calibration(calibration))
    n = p_s.shape[0]
    p, d = np.zeros(n), np.full(n, FAILED, dtype=object)
    for i in np.flatnonzero(~np.asarray(failed, bool)):
        stats = summarize(p_s[i][None, :])
        score = ProfileScore("profile", stats.p_allow, stats.uncertainty(measure), float(cos[i].mean()), p_s[i])
        p[i], d[i] = stats.p_allow, decide_by_name([score], thresholds, measure)[0]
    return p, d


def operating_point(cos, failed, genuine, groups, calibration: dict, thresholds: Thresholds,
                    measure: str = "std") -> dict:
    """FAR, FRR, UNCERTAIN shares and FRR after one retry at the contract's thresholds."""
    from voicegate.train.eval.verification import plain_report, policy_report

    p, d = decisions(cos, failed, calibration, thresholds, measure)
    g = np.asarray(groups, dtype=object)
    return {
        "thresholds": thresholds.to_dict(), "uncertainty_measure": measure,
        "calibration": {k: v for k, v in calibration.items() if k != "cohort"},  # not 90 kB of AS-norm cohort
        "plain": plain_report(p[genuine], p[~genuine], thresholds.accept),
        "policy": policy_report(d[genuine], d[~genuine], g[genuine], g[~genuine]),
    }


# --- one channel's report ------------------------------------------------------------------------
def trials_digest(emb) -> str:
    """sha256 of who enrolled from which recordings and which recording gave each attempt, in
    order: two runs (a model and a peer) with the same digest scored the very same trials."""
    import hashlib
    import json

    key = {"profiles": [[p["speaker"], list(p["recordings"])] for p in emb.profiles],
           "attempts": [[a["speaker"], a["recording"]] for a in emb.attempts]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def attempts_digest(emb) -> str:
    """sha256 of the attempt table alone (speaker, recording, failed) and the profiles' speakers."""
    import hashlib
    import json

    key = {"profiles": [p["speaker"] for p in emb.profiles],
           "attempts": [[a["speaker"], a["recording"], bool(a["failed"])] for a in emb.attempts]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def compare_with_peer(result: dict, peer: dict) -> dict:
    """Per channel present in both: the peer's EER and FRR at FAR 1 % beside the model's, and
    whether both scored the same trials (equal :func:`trials_digest`)."""
    out = {}
    for name, r in result["channels"].items():
        q = peer.get("channels", {}).get(name)
        if q is None:
            continue
        out[name] = {"same_trials": q.get("trials_sha256") == r["trials_sha256"],
                     "same_attempts": q.get("attempts_sha256") == r.get("attempts_sha256"),
                     "peer_eer": q["eer"], "peer_eer_ci95": q.get("eer_ci95_speaker_bootstrap"),
                     "peer_frr_at_far_1": q["frr_at_far"]["1%"]["frr"], "eer": r["eer"],
                     "eer_below_peer": r["eer"] < q["eer"]}
    return {"peer": peer.get("model", {}).get("name"), "channels": out}

def channel_report(emb, contract=None, n_boot: int = BOOTSTRAP, seed: int = 0) -> dict:
    """Every figure for one :class:`~.enrolment.Embedded` (one corpus, one channel)."""
    t = emb.trials
    score = emb.score()
    failed = np.asarray([a["failed"] for a in emb.attempts], bool)[t.attempt]
    attempt_spk = np.asarray([a["speaker"] for a in emb.attempts], dtype=object)
    profile_spk = np.asarray([p["speaker"] for p in emb.profiles], dtype=object)
    roles = [p["role"] for p in emb.profiles]
    seconds = [p["seconds"] for p in emb.profiles]
    counts = {
        "profiles": len(emb.profiles),
        "profiles_by_role": {r: roles.count(r) for r in dict.fromkeys(roles)},
        "enrolment_seconds": {"min": min(seconds), "median": float(np.median(seconds)), "max": max(seconds)},
        "impostor_only_speakers": len({a["speaker"] for a in emb.attempts if not a["enrolled"]}),
        "attempts": len(emb.attempts),
        "failed_attempts": int(sum(a["failed"] for a in emb.attempts)),
        "genuine_trials": int(t.genuine.sum()),
        "impostor_trials": int((~t.genuine).sum()),
        "genuine_speakers": len(set(attempt_spk[t.attempt[t.genuine]])),
    }
    out = {"channel": emb.info["channel"], "counts": counts, "trials_sha256": trials_digest(emb),
           "attempts_sha256": attempts_digest(emb), **score_figures(score, t.genuine, t.profile, n_boot, seed),
           "data": {k: v for k, v in emb.info.items() if k != "channel"}}
    decided = ~failed  # the attempts the speech detector let through: the embedder's own share
    if failed.any() and (t.genuine & decided).any() and (~t.genuine & decided).any():
        out["decided_attempts_only"] = {
            "genuine_trials": int((t.genuine & decided).sum()), "impostor_trials": int((~t.genuine & decided).sum()),
            **score_figures(score[decided], t.genuine[decided], t.profile[decided], n_boot, seed)}
    if contract is not None and (contract.calibration or {}).get("type"):
        groups = [f"{s}|{p}" for s, p in zip(attempt_spk[t.attempt], profile_spk[t.profile])]
        out["operating_point"] = operating_point(emb.cos, failed, t.genuine, groups, contract.calibration,
                                                 contract.thresholds, contract.uncertainty_measure)
    out["_curve"] = (score[t.genuine], score[~t.genuine])  # for the DET plot; dropped from JSON
    return out


# --- Markdown and DET -------------------------------------------------------------------------------
def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _ci(iv) -> str:
    return "" if not iv else f" [{100 * iv[0]:.2f}, {100 * iv[1]:.2f}]"


def markdown(result: dict) -> str:
    """One table of score figures and one of operating-point figures, a row per channel."""
    proto = result["protocol"]
    lines = [f"# Enrolment protocol: {proto['corpus_name']} ({result['model']['name']})", "",
             proto["description"], "",
             "| channel | profiles | impostor-only spk | genuine / impostor trials | failed attempts | EER % | "
             "FRR @ FAR 1 % | FRR @ FAR 0.1 % | minDCF (P_t 0.01) |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for name, r in result["channels"].items():
        c, f = r["counts"], r["frr_at_far"]
        f01 = _pct(f["0.1%"]["frr"]) + _ci(f["0.1%"]["frr_ci95"]) + ("" if f["0.1%"]["resolved"] else " (too few impostor trials)")
        lines.append(f"| {name} | {c['profiles']} | {c['impostor_only_speakers']} | {c['genuine_trials']} / "
                     f"{c['impostor_trials']} | {c['failed_attempts']} | {_pct(r['eer'])}{_ci(r['eer_ci95_speaker_bootstrap'])} | "
                     f"{_pct(f['1%']['frr'])}{_ci(f['1%']['frr_ci95'])} | {f01} | {r['min_dcf']['value']:.3f} |")
    dec = {k: r["decided_attempts_only"] for k, r in result["channels"].items() if "decided_attempts_only" in r}
    if dec:
        lines += ["", "Failed attempts (the device's speech detector found too little speech) count as misses "
                  "at every threshold. Without them, on the attempts the detector decided (%):", "",
                  "| channel | genuine / impostor trials | EER | FRR @ FAR 1 % |", "|---|---|---:|---:|"]
        for name, d in dec.items():
            lines.append(f"| {name} | {d['genuine_trials']} / {d['impostor_trials']} | "
                         f"{_pct(d['eer'])}{_ci(d['eer_ci95_speaker_bootstrap'])} | {_pct(d['frr_at_far']['1%']['frr'])} |")
    ops = {k: r["operating_point"] for k, r in result["channels"].items() if "operating_point" in r}
    if ops:
        t = next(iter(ops.values()))["thresholds"]
        lines += ["", f"## At the shipped operating point (accept {t['accept']:.3f}, deny {t['deny']:.3f}, "
                      f"uncertainty limit {t['uncertainty_limit']:.3f}; %)", "",
                  "| channel | FAR | FRR | UNCERTAIN (genuine) | UNCERTAIN (impostor) | FRR after one retry | "
                  "FAR after one retry |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, op in ops.items():
            p = op["policy"]
            lines.append(f"| {name} | {_pct(p['far'])}{_ci(p['far_ci95'])} | {_pct(p['frr'])}{_ci(p['frr_ci95'])} | "
                         f"{_pct(p['uncertain_share']['genuine'])} | {_pct(p['uncertain_share']['impostor'])} | "
                         f"{_pct(p['frr_after_retry'])}{_ci(p['frr_after_retry_ci95'])} | "
                         f"{_pct(p['far_after_retry'])}{_ci(p['far_after_retry_ci95'])} |")
    cmp = result.get("peer_comparison")
    if cmp and cmp["channels"]:
        lines += ["", f"## Against the peer ({cmp['peer']}) on the same trials (%)", "",
                  "| channel | same trials | EER | peer EER | FRR @ FAR 1 % | peer FRR @ FAR 1 % |",
                  "|---|---|---:|---:|---:|---:|"]
        for name, c in cmp["channels"].items():
            r = result["channels"][name]
            same = "yes" if c["same_trials"] else "attempts only" if c.get("same_attempts") else "NO"
            lines.append(f"| {name} | {same} | {_pct(c['eer'])} | "
                         f"{_pct(c['peer_eer'])}{_ci(c['peer_eer_ci95'])} | {_pct(r['frr_at_far']['1%']['frr'])} | "
                         f"{_pct(c['peer_frr_at_far_1'])} |")
    cal = result["model"].get("calibration") or {}
    score = ("the cosine with the profile" if cal.get("type") != "as-norm-logistic" else
             f"the AS-normalised cosine with the profile (top {cal.get('top')} of the model's cohort of "
             f"{(cal.get('cohort_shape') or ['?'])[0]} training voices)")
    lines += ["", "EER interval: 95 % bootstrap over enrolled speakers; other intervals: 95 % Wilson. "
              f"Score: mean over samples of {score}. Operating point: only GRANTED "
              "opens (UNCERTAIN and FAILED count as rejects); a retry is the same speaker's next attempt "
              "against the same profile.", ""]
    return "\n".join(lines)


def det_plot(result: dict, path: Path) -> Path:
    """DET curves of every channel (the evaluation's own probit plot)."""
    from voicegate.train.eval.plots import det_figure

    curves = [{"label": f"{name} (EER {100 * r['eer']:.1f} %)", "pos": r["_curve"][0], "neg": r["_curve"][1]}
              for name, r in result["channels"].items()]
    title = (f"DET, {result['protocol']['corpus_name']}: enrolled unseen speakers, "
             f"{result['protocol']['attempt_seconds']:g} s attempts\n({result['model']['name']})")
    return det_figure(curves, title, path)

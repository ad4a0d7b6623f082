"""Step 3 of an encoder export: calibration and thresholds on the VALIDATION speakers.

Training speakers held out of encoder training (never an allowed or held-out speaker of any
corpus) are each enrolled from <= 30 s; every 3 s attempt is scored against every profile of its
own corpus (a door's impostors share its microphone; cross-corpus pairs are easy) with the
device's scoring rule (``voicegate.device.scoring``) and MC samples, one attempt per onnxruntime
run. A logistic map score -> probability is fitted on those trials (class-balanced, so p = 0.5
sits near the equal-error point), then accept / uncertainty limit / deny are chosen on the
calibrated probabilities exactly as for the classifier (``thresholds.choose_thresholds``: FAR <=
target on impostor trials). The score is the cosine, or, for a model with a cohort
(``--score-norm as-norm``, :mod:`.score_norm`), the AS-normalised cosine the device computes.
"""

from __future__ import annotations

import numpy as np


def _run(session, images: np.ndarray) -> np.ndarray:
    from voicegate.device.runtime import as_model_input

    return session.run(None, {session.get_inputs()[0].name: as_model_input(images)})[0]


def _session(proto, threads: int = 1):
    from voicegate.device.runtime import make_session

    return make_session(proto.SerializeToString(), threads=threads)



def validation_trials(session, data, norm=None) -> dict:
    """Every validation attempt against every validation profile, MC samples: see encoder.trials.
    ``norm`` (a ``device.scoring.ScoreNorm``): the cosines are AS-normalised as the device does."""
    from voicegate.device.scoring import centroid, sample_embeddings, window_embeddings
    from voicegate.train.models.encoder import trials

    rows, imgs = data.val_rows, data.val_images
    enrol, attempts = [], []
    for k in np.unique(rows[:, 0]):
        mine = rows[:, 0] == k
        e = np.flatnonzero(mine & (rows[:, 1] < 0))
        enrol.append(_run(session, imgs[e].astype(np.float32) / 255.0))
        for j in np.unique(rows[mine & (rows[:, 1] >= 0), 1]):
            a = np.flatnonzero(mine & (rows[:, 1] == j))
            attempts.append((int(k), _run(session, imgs[a].astype(np.float32) / 255.0)))
    t = trials(enrol, attempts)
    if norm is not None:  # trials are attempt-major, profile-minor: (A * P, S)
        n_a, n_p = len(attempts), len(enrol)
        cos = t["cos"].reshape(n_a, n_p, -1).transpose(0, 2, 1)  # (A, S, P)
        means = np.stack([sample_embeddings(emb).mean(axis=0) for _, emb in attempts])
        centroids = np.stack([centroid(window_embeddings(e)) for e in enrol])
        t["cos"] = norm.apply_many(cos, means, centroids).transpose(0, 2, 1).reshape(n_a * n_p, -1)
    return t


def same_corpus(trial: dict, speakers: list) -> dict:
    """Only the trials whose profile and attempt come from the same corpus: a door's impostors
    speak into the same microphone, and cross-corpus pairs (other language, other recording
    chain) are easy, so they would loosen a threshold chosen for FAR <= 1 %."""
    corpus = np.array([s.split("/")[0] for s in speakers])
    keep = corpus[trial["profile"]] == corpus[trial["speaker"]]
    return {k: v[keep] for k, v in trial.items()}


def fit_calibration(cos_genuine: np.ndarray, cos_impostor: np.ndarray) -> dict:
    """Class-balanced logistic regression of "same speaker" on the (trial-mean) cosine (or the
    AS-normalised score, for a model with a cohort)."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([cos_genuine, cos_impostor]).reshape(-1, 1)
    y = np.concatenate([np.ones(cos_genuine.size), np.zeros(cos_impostor.size)])
    lr = LogisticRegression(C=1e4, class_weight="balanced", max_iter=1000).fit(x, y)
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if not a > 0:
        raise ValueError(f"calibration is not increasing in the cosine (a = {a:.3f}): the encoder does not separate voices")
    return {"type": "logistic", "a": round(a, 6), "b": round(b, 6),
            "fitted_on": "validation speakers' trial-mean cosines, class-balanced"}


def choose(trial: dict, calibration: dict, target_far: float, measure: str, placement: str) -> tuple:
    from voicegate.device.policy import summarize
    from voicegate.device.scoring import calibrate

    from .thresholds import choose_thresholds

    p = calibrate(trial["cos"], (calibration["a"], calibration["b"]))  # (n, S)
    stats = [summarize(row[None, :]) for row in p]
    gen = trial["genuine"]
    pos = [s for s, g in zip(stats, gen) if g]
    neg = [s for s, g in zip(stats, gen) if not g]
    thresholds, report = choose_thresholds(pos, neg, target_far, measure, placement=placement)
    report["data"] = ("validation speakers (held out of encoder training; no allowed or held-out "
                      "speaker of any corpus): genuine = own attempts, impostor = every other profile "
                      "of the same corpus")
    return thresholds, report


# --- the export ------------------------------------------------------------------------------
def calibrate_encoder(session, data, cfg, norm=None, norm_info: dict | None = None) -> tuple:
    """Calibration, thresholds, validation report and validation EER of an encoder graph (step 3
    of the module docstring); with ``norm`` on AS-normalised scores, and the calibration then
    carries the cohort (type ``as-norm-logistic``: ``device.scoring.ScoreNorm``)."""
    from voicegate.train.models.encoder import eer, frr_at_far

    from .writing import ExportError

    everything = validation_trials(session, data, norm)
    trial = same_corpus(everything, data.meta["validation_speakers"])
    mean_cos = trial["cos"].mean(axis=1)
    gen = trial["genuine"]
    try:
        calibration = fit_calibration(mean_cos[gen], mean_cos[~gen])
        thresholds, val_report = choose(trial, calibration, cfg.target_far, cfg.measure, cfg.placement)
    except ValueError as err:
        raise ExportError(f"calibration/threshold selection failed: {err}") from None
    if norm is not None:
        calibration = {**calibration, **norm_info, "type": "as-norm-logistic",
                       "fitted_on": "validation speakers' trial-mean AS-normalised scores, class-balanced"}
    e, _ = eer(mean_cos[gen], mean_cos[~gen])
    frr1, _ = frr_at_far(mean_cos[gen], mean_cos[~gen], 0.01)
    val_report["cosine" if norm is None else "as_norm_score"] = {
        "eer": round(e, 4), "frr_at_far_1pct": round(frr1, 4),
        "genuine_trials": int(gen.sum()), "impostor_trials": int((~gen).sum()),
        "speakers": len(data.meta["validation_speakers"]),
        "trials": "same-corpus pairs only (profile and attempt from one corpus)",
        "all_pairs_impostor_trials": int((~everything["genuine"]).sum())}
    return calibration, thresholds, val_report, e

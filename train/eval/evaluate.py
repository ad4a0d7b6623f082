"""``voicegate eval``: closed-set and open-set security figures, through the device runtime.

Every figure comes from the gate the device runs (:class:`voicegate.device.runtime.Gate`) on
audio, not from cached training windows:

1. **Which audio.** The corpus, its roles and its split are rebuilt from the model's contract
   (the preparation config training used: corpus path, seed, split fractions, role overrides)
   with the training side's own loader and split (:func:`~voicegate.train.data.corpus.load_corpus`,
   :func:`~voicegate.train.data.splits.split_recordings`), so the split is the training split.
   *Closed set*: the ``--split`` (default test) recordings of the allowed and the not-allowed
   training speakers (the study's protocol: known speakers, unseen recordings). *Open set*: every
   recording of the held-out impostors, voices the model has never heard.
2. **Attempts.** Each recording is loaded and trimmed of silence, and the trimmed speech is cut
   into consecutive, non-overlapping attempts of ``--attempt-seconds`` (default 3 s, about what a
   person says at a door: "it's me, open please"). A shorter tail is dropped; a recording with
   less speech than one attempt (but at least ``min_attempt_seconds``) is one shorter attempt.
3. **Decisions.** Each attempt goes through the device featurizer
   (:func:`~voicegate.device.features.featurize`: trim, 2 s windows every 1 s, spectrograms)
   and then every model's gate (``Gate.predict`` + ``Gate.decide_samples``, which is what
   ``Gate.decide_audio`` does). The spectrograms of an attempt are rendered once and shared by
   all models (MC and ensemble). An attempt the featurizer rejects (no speech) is a failed
   attempt: no access, scored p = 0 (fail closed), and counted.

Figures, per model:

- closed set: accuracy, weighted F1, macro F1, balanced accuracy, ROC AUC and the confusion
  matrix, per window (mean of the T/K samples of one window), per attempt (= per utterance as
  the device sees it: the gate's p_allow) and per recording (mean over its windows), at the
  model's accept threshold and at 0.5 (the study's argmax);
- verification, with the allowed speakers' attempts as genuine and, separately, two impostor
  sets: the held-out impostors (open set) and the not-allowed training speakers' ``--split``
  recordings (closed set):
  * **plain decision** (accept iff p_allow >= accept threshold, no rejection): FAR and FRR at
    the shipped threshold, EER, per attempt and per window;
  * **rejecting policy** (the gate's GRANTED / DENIED / UNCERTAIN): FAR = impostor attempts
    GRANTED; FRR = genuine attempts not GRANTED (UNCERTAIN counts as a reject); the UNCERTAIN
    share; FAR and FRR **after one retry** (see :func:`after_one_retry`); and the EER of the
    policy swept over the accept threshold with the uncertainty limit fixed;
  * a DET curve (probit axes) per impostor set with every model and both policies.

Nothing heavy is imported at module level (the CLI builds ``--help`` from this module).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from voicegate.device.audio import SAMPLE_RATE, AudioError, trim_silence
from voicegate.device.features import INFER_HOP_SECONDS, featurize
from voicegate.device.policy import DENIED, GRANTED, UNCERTAIN

log = logging.getLogger(__name__)

ATTEMPT_SECONDS = 3.0  # one door attempt: about what a person says to be let in
MIN_ATTEMPT_SECONDS = 1.0  # a recording with less trimmed speech than this gives no attempt
FAILED = "FAILED"  # the gate could not use the attempt's audio: no access (fail closed)
OUTCOMES = (GRANTED, DENIED, UNCERTAIN, FAILED)
STUDY_THRESHOLD = 0.5  # the study's argmax decision
REJECTED_SCORE = -1.0  # the rejecting policy's score for an attempt it will never grant
IMPOSTOR_SETS = {
    "heldout_impostors": "open set: held-out impostors (never seen in training)",
    "not_allowed_split": "closed set: the not-allowed training speakers' unseen recordings",
}
RETRY_RULE = (
    "an UNCERTAIN attempt is followed by the same speaker's next attempt (the next stretch of "
    "speech in the recording, else in the speaker's next recording, cyclically); its decision is "
    "final, UNCERTAIN again = not granted. Speakers with a single attempt get no retry."
)


class EvalError(RuntimeError):
    """The evaluation cannot run (no corpus, no speakers of a role, mismatched models)."""


@dataclass
class EvalConfig:
    models: list = field(default_factory=list)  # exported .onnx paths; empty = the shipped ones
    method: str = "both"  # with no model paths: which shipped models (mc | ensemble | both)
    corpus: Optional[str] = None  # corpus folder; None = the one in the first model's contract
    split: str = "test"  # closed-set split of the known speakers (test or val)
    attempt_seconds: float = ATTEMPT_SECONDS  # length of one door attempt (trimmed speech)
    min_attempt_seconds: float = MIN_ATTEMPT_SECONDS  # shorter recordings give no attempt
    threads: int = 1  # onnxruntime threads per model
    seed: Optional[int] = 0  # onnxruntime seed for the MC masks (None: unseeded)
    out: Optional[str] = None  # folder for eval.json, eval.md and the DET PNGs
    progress: bool = True  # tqdm bar over recordings

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EvalConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# --- attempts ----------------------------------------------------------------------------------
def cut_attempts(
    speech: np.ndarray,
    attempt_seconds: float = ATTEMPT_SECONDS,
    min_seconds: float = MIN_ATTEMPT_SECONDS,
    sample_rate: int = SAMPLE_RATE,
) -> list[np.ndarray]:
    """Consecutive, non-overlapping attempts of ``attempt_seconds`` of (trimmed) speech.

    The tail shorter than one attempt is dropped; audio shorter than one attempt but at least
    ``min_seconds`` long is a single (shorter) attempt.
    """
    if attempt_seconds <= 0:
        raise ValueError(f"attempt_seconds must be > 0, got {attempt_seconds}")
    n = int(round(attempt_seconds * sample_rate))
    full = speech.size // n
    if full == 0:
        return [speech] if speech.size >= min_seconds * sample_rate else []
    return [speech[i * n : (i + 1) * n] for i in range(full)]


@dataclass
class Attempts:
    """One row per attempt (and the windows of each attempt), shared by every model."""

    speaker: list = field(default_factory=list)
    recording: list = field(default_factory=list)
    role: list = field(default_factory=list)  # allowed / not_allowed_train / heldout_impostors
    label: list = field(default_factory=list)  # 1 = allowed
    windows: list = field(default_factory=list)  # windows per attempt (0 = failed)

    def add(self, speaker: str, recording: str, role: str, label: int, windows: int) -> None:
        self.speaker.append(speaker)
        self.recording.append(recording)
        self.role.append(role)
        self.label.append(int(label))
        self.windows.append(int(windows))

    def __len__(self) -> int:
        return len(self.label)

    def arrays(self) -> dict:
        return {k: np.asarray(getattr(self, k)) for k in ("speaker", "recording", "role", "label", "windows")}


@dataclass
class ModelScores:
    """What one model said about every attempt (and every window) of an evaluation."""

    name: str
    p_allow: list = field(default_factory=list)  # per attempt (0.0 for a failed attempt)
    uncertainty: list = field(default_factory=list)  # the deciding measure (inf when failed)
    decision: list = field(default_factory=list)  # GRANTED / DENIED / UNCERTAIN / FAILED
    window_p: list = field(default_factory=list)  # per window: mean p over the samples
    window_attempt: list = field(default_factory=list)  # attempt row of each window
    latency_ms: list = field(default_factory=list)  # featurize + predict + decide, per attempt

    def add_failed(self) -> None:
        self.p_allow.append(0.0)
        self.uncertainty.append(float("inf"))
        self.decision.append(FAILED)


# --- corpus -------------------------------------------------------------------------------------
def prepare_config_of(contract, corpus: Optional[str] = None):
    """The preparation config training used (from the contract), with ``corpus`` overriding its path."""
    from voicegate.train.data.prepare import PrepareConfig

    data_config = dict((contract.corpus or {}).get("data_config") or {})
    cache = data_config.get("cache") or data_config.get("cache_dir")
    if not data_config.get("corpus") and cache:  # trained from a cache: its meta.json has the config
        try:
            data_config = {**json.loads((Path(cache) / "meta.json").read_text())["config"], **data_config}
        except (OSError, ValueError, KeyError):
            log.warning("cannot read the preparation config of the cache %s", cache)
    if corpus:
        data_config["corpus"] = str(corpus)
    if not data_config.get("corpus"):
        raise EvalError("the model's contract names no training corpus; pass --corpus")
    known = PrepareConfig.__dataclass_fields__
    return PrepareConfig.from_dict({k: v for k, v in data_config.items() if k in known})


def contract_roles(contract) -> dict:
    roles = (contract.corpus or {}).get("roles") or {}
    return {k: list(v) for k, v in roles.items() if v}


def evaluation_recordings(prep_cfg, roles: dict, split: str = "test"):
    """(corpus, [(Recording, role, split)]): the closed-set ``split`` recordings of the known
    speakers and every recording of the held-out impostors, in (speaker, recording) order.

    ``roles`` (the model's training roles) override the corpus's default allowed and held-out
    lists, as they did in training, so labels mean what the model learned.
    """
    from voicegate.train.data.corpus import ROLE_HELDOUT, load_corpus
    from voicegate.train.data.build import limit_recordings
    from voicegate.train.data.splits import HELDOUT, split_recordings

    root = Path(prep_cfg.corpus).expanduser()
    if not root.exists():
        raise EvalError(f"corpus {root} (from the model's contract) not found; pass --corpus")
    allowed = roles.get("allowed") or prep_cfg.allowed
    impostors = roles.get("heldout_impostors") if "heldout_impostors" in roles else prep_cfg.impostors
    corpus = load_corpus(root, prep_cfg.layout, prep_cfg.versions, allowed, impostors)
    recordings = sorted(
        limit_recordings(corpus.recordings, prep_cfg.max_recordings_per_speaker),
        key=lambda r: (r.speaker, r.recording, r.item),
    )
    assignment = split_recordings(recordings, corpus.roles, prep_cfg.seed, prep_cfg.split_fractions)
    chosen = []
    for rec in recordings:
        role = corpus.roles.role_of(rec.speaker)
        where = assignment[rec.recording]
        if (role == ROLE_HELDOUT and where == HELDOUT) or (role != ROLE_HELDOUT and where == split):
            chosen.append((rec, role, where))
    return corpus, chosen


# --- scoring ------------------------------------------------------------------------------------
def load_gates(cfg: EvalConfig) -> dict:
    """{name: Gate} for the configured models (names: file stems, made unique)."""
    from voicegate.device.runtime import Gate

    if cfg.models:
        specs = [(str(m), None) for m in cfg.models]
    else:
        methods = ["mc", "ensemble"] if cfg.method == "both" else [cfg.method]
        specs = [(None, m) for m in methods]
    gates = {}
    for i, (path, method) in enumerate(specs):
        gate = Gate.load(path, method=method if path is None else None, threads=cfg.threads,
                         seed=cfg.seed if i == 0 else None)
        name = gate.path.stem
        while name in gates:
            name += "'"
        gates[name] = gate
    return gates


def score_attempts(gates: dict, items, cfg: EvalConfig, prep_cfg, root: Path) -> tuple[Attempts, dict, dict]:
    """Decide every attempt of every recording with every gate -> (attempts, {name: scores}, info).

    ``prep_cfg`` (the preparation config) decides how much of a file is read, as in training;
    ``root`` is the corpus folder (skipped files are named relative to it).
    """
    from tqdm import tqdm

    from voicegate.train.data.build import load_recording

    attempts = Attempts()
    scores = {name: ModelScores(name) for name in gates}
    skipped: list = []
    info = {"recordings": 0, "recordings_without_attempt": [], "failed_attempts": 0,
            "speech_seconds": 0.0, "featurize_ms": []}
    for rec, role, _ in tqdm(items, desc="eval", unit="rec", disable=not cfg.progress):
        audio = load_recording(rec, prep_cfg, root, skipped)
        try:
            speech = trim_silence(audio) if audio is not None else None
        except AudioError:
            speech = None
        chunks = [] if speech is None else cut_attempts(speech, cfg.attempt_seconds, cfg.min_attempt_seconds)
        if not chunks:
            info["recordings_without_attempt"].append(rec.item)
            continue
        info["recordings"] += 1
        info["speech_seconds"] += sum(c.size for c in chunks) / SAMPLE_RATE
        label = 1 if role == "allowed" else 0
        for chunk in chunks:
            t0 = time.perf_counter()
            try:
                images = featurize(chunk, sample_rate=SAMPLE_RATE, hop_seconds=INFER_HOP_SECONDS)
            except AudioError:
                images = None
            feat_ms = (time.perf_counter() - t0) * 1000.0
            attempts.add(rec.speaker, rec.recording, role, label, 0 if images is None else len(images))
            if images is None:
                info["failed_attempts"] += 1
                for s in scores.values():
                    s.add_failed()
                continue
            info["featurize_ms"].append(feat_ms)
            row = len(attempts) - 1
            for name, gate in gates.items():
                t1 = time.perf_counter()
                samples = gate.predict(images)
                d = gate.decide_samples(samples, started=t1)
                s = scores[name]
                s.p_allow.append(d.p_allow)
                s.uncertainty.append(d.uncertainty)
                s.decision.append(d.decision)
                s.window_p.extend(np.asarray(samples, np.float64).mean(axis=1).tolist())
                s.window_attempt.extend([row] * len(images))
                s.latency_ms.append(feat_ms + d.latency_ms)
    info["skipped_files"] = skipped
    return attempts, scores, info


# --- metrics ------------------------------------------------------------------------------------
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


def model_report(name: str, gate, attempts: Attempts, scores: ModelScores, split: str) -> dict:
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


# --- DET curves ---------------------------------------------------------------------------------
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
    ax.set_title(title, fontsize=10)
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


# --- the whole evaluation -----------------------------------------------------------------------
def evaluate(cfg: EvalConfig) -> dict:
    """Run the evaluation; write eval.json, eval.md and the DET PNGs to ``cfg.out`` if given."""
    if cfg.split not in ("test", "val"):
        raise EvalError(f"--split must be test or val, got {cfg.split!r}")
    if cfg.attempt_seconds <= 0:
        raise EvalError("--attempt-seconds must be > 0")
    t0 = time.perf_counter()
    gates = load_gates(cfg)
    first = next(iter(gates.values()))
    prep_cfg = prepare_config_of(first.contract, cfg.corpus)
    roles = contract_roles(first.contract)
    for name, gate in gates.items():
        other = prepare_config_of(gate.contract, cfg.corpus)
        if (other.seed, tuple(other.split_fractions), contract_roles(gate.contract).get("allowed")) != (
            prep_cfg.seed, tuple(prep_cfg.split_fractions), roles.get("allowed")
        ):
            raise EvalError(f"{name}: trained with another split seed, fractions or allowed list "
                            "than the first model; evaluate them separately")
    corpus, items = evaluation_recordings(prep_cfg, roles, cfg.split)
    if not any(r == "allowed" for _, r, _ in items):
        raise EvalError(f"no allowed speaker's {cfg.split} recordings in {corpus.root}")
    attempts, scores, info = score_attempts(gates, items, cfg, prep_cfg, corpus.root)
    if not len(attempts):
        raise EvalError("no attempt could be cut from the evaluation recordings")

    per_role = {}
    for role in ("allowed", "not_allowed_train", "heldout_impostors"):
        rows = [i for i, r in enumerate(attempts.role) if r == role]
        per_role[role] = {
            "speakers": len({attempts.speaker[i] for i in rows}),
            "recordings": len({attempts.recording[i] for i in rows}),
            "attempts": len(rows),
            "windows": int(sum(attempts.windows[i] for i in rows)),
        }
    feat = np.asarray(info.pop("featurize_ms"), np.float64)
    result = {
        "config": cfg.to_dict(),
        "protocol": {
            "corpus": str(corpus.root),
            "layout": corpus.layout,
            "split_seed": prep_cfg.seed,
            "split_fractions": list(prep_cfg.split_fractions),
            "closed_set_split": cfg.split,
            "roles": {k: len(v) for k, v in corpus.roles.to_dict().items()},
            "allowed": list(corpus.roles.allowed),
            "attempt_seconds": cfg.attempt_seconds,
            "attempt": (f"trimmed speech cut into consecutive {cfg.attempt_seconds:g} s attempts; the "
                        f"shorter tail is dropped; a recording with {cfg.min_attempt_seconds:g} s to one "
                        "attempt of speech is one shorter attempt"),
            "retry": RETRY_RULE,
            "note": ("splits are by recording; recordings of one speaker may share a session "
                     "(a LibriSpeech chapter), so closed-set figures can be optimistic; the open "
                     "set is the security figure"),
        },
        "counts": per_role,
        "data": {**info, "speech_seconds": round(info["speech_seconds"], 1),
                 "featurize_ms_median": float(np.median(feat)) if feat.size else None},
        "models": {name: model_report(name, gates[name], attempts, scores[name], cfg.split) for name in gates},
        "files": {},
        "seconds": None,
    }
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        for key, what in IMPOSTOR_SETS.items():
            curves = det_curves_for(key, gates, attempts, scores)
            if curves:
                title = (f"DET, {corpus.root.name}: allowed vs {what}\n(attempts of {cfg.attempt_seconds:g} s; "
                         f"dots: shipped threshold; a rate of 0 is drawn at {100 * DET_FLOOR:g} %)")
                result["files"][f"det_{key}"] = str(det_figure(curves, title, out / f"det_{key}.png"))
        result["files"]["json"] = str(out / "eval.json")
        result["files"]["markdown"] = str(out / "eval.md")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if cfg.out:
        (out / "eval.md").write_text(markdown(result))
        (out / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


# --- Markdown ------------------------------------------------------------------------------------
def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _ci(interval) -> str:
    return f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def markdown(result: dict) -> str:
    """Tables: closed set (windows / attempts / recordings) and verification per impostor set."""
    proto = result["protocol"]
    lines = [
        f"# voicegate eval: {Path(proto['corpus']).name}",
        "",
        f"Closed set: the {proto['closed_set_split']} recordings of the allowed and not-allowed training "
        f"speakers (split seed {proto['split_seed']}); open set: every recording of the held-out impostors. "
        f"Attempts: {proto['attempt']}.",
        "",
        "| role | speakers | recordings | attempts | windows |",
        "|---|---:|---:|---:|---:|",
    ]
    for role, c in result["counts"].items():
        lines.append(f"| {role} | {c['speakers']} | {c['recordings']} | {c['attempts']} | {c['windows']} |")
    lines += ["", "## Closed set (at the shipped accept threshold, %)", "",
              "| model | level | n | accuracy | F1 weighted | F1 macro | balanced acc. | confusion [[TN, FP], [FN, TP]] |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, m in result["models"].items():
        cs = m.get("closed_set")
        if not cs:
            continue
        for level in ("windows", "attempts", "recordings"):
            r = cs[level]
            lines.append(f"| {name} | {level} | {r['n']} | {_pct(r['accuracy'])} | {_pct(r['f1_weighted'])} | "
                         f"{_pct(r['f1_macro'])} | {_pct(r['balanced_accuracy'])} | {r['confusion_matrix']} |")
    for key, what in IMPOSTOR_SETS.items():
        lines += ["", f"## Verification: allowed vs {what} (per attempt, %)", "",
                  "| model | genuine / impostor attempts | accept | plain FAR | plain FRR | EER | window EER | "
                  "policy FAR | policy FRR | UNCERTAIN (genuine / impostor) | FAR after retry | FRR after retry | "
                  "policy EER |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
        for name, m in result["models"].items():
            v = m["verification"].get(key)
            if not v:
                continue
            pa, pw, r = v["plain"]["attempts"], v["plain"]["windows"], v["rejecting"]
            lines.append(
                f"| {name} | {v['n_genuine']} / {v['n_impostor']} | {m['thresholds']['accept']:.3f} | "
                f"{_pct(pa['far'])} {_ci(pa['far_ci95'])} | {_pct(pa['frr'])} {_ci(pa['frr_ci95'])} | "
                f"{_pct(pa['eer'])} | {_pct(pw['eer'] if pw else None)} | {_pct(r['far'])} {_ci(r['far_ci95'])} | "
                f"{_pct(r['frr'])} {_ci(r['frr_ci95'])} | "
                f"{_pct(r['uncertain_share']['genuine'])} / {_pct(r['uncertain_share']['impostor'])} | "
                f"{_pct(r['far_after_retry'])} | {_pct(r['frr_after_retry'])} | {_pct(r['eer'])} |"
            )
    lines += ["", "plain: accept iff p(allowed) >= accept. policy: only GRANTED opens (UNCERTAIN counts as a "
              "reject). [low, high]: 95 % Wilson intervals. Retry: " + proto["retry"], ""]
    return "\n".join(lines)


# --- CLI ---------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    d = EvalConfig()
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="exported .onnx model(s), e.g. an MC model and an ensemble "
                        "(default: the shipped models picked by --method)")
    p.add_argument("--method", choices=("mc", "ensemble", "both"), default=d.method,
                   help="with no MODEL: which shipped models to evaluate (default %(default)s)")
    p.add_argument("--corpus", help="corpus folder (default: the training corpus named in the model's contract)")
    p.add_argument("--split", choices=("test", "val"), default=d.split,
                   help="closed-set split of the known speakers (default %(default)s)")
    p.add_argument("--attempt-seconds", type=float, default=d.attempt_seconds,
                   help="seconds of trimmed speech per door attempt (default %(default)s)")
    p.add_argument("--threads", type=int, default=d.threads, help="onnxruntime threads (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="onnxruntime seed for the MC masks (default %(default)s)")
    p.add_argument("--out", help="write eval.json, eval.md and DET curve PNGs to this folder")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the Markdown tables")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from voicegate.device.contract import ModelError

    from voicegate.train.data.corpus import CorpusError

    cfg = EvalConfig(
        models=list(args.models), method=args.method, corpus=args.corpus, split=args.split,
        attempt_seconds=args.attempt_seconds, threads=args.threads, seed=args.seed, out=args.out,
        progress=not args.no_progress,
    )
    try:
        result = evaluate(cfg)
    except (EvalError, ModelError, CorpusError, FileNotFoundError, ValueError) as e:
        print(f"voicegate eval: {e}", file=sys.stderr)
        log.debug("eval failed", exc_info=True)
        return 1
    print(json.dumps(result, indent=1) if args.json else markdown(result))
    return 0

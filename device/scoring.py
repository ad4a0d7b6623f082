"""Scores against the enrolled profiles, and the decision by name.

The rule (the encoder contract in TEAM.md; ``voicegate eval`` uses the same functions):

1. The encoder gives the utterance's W windows S embeddings each, (W, S, D): S MC-dropout
   samples (masks shared by all windows) or S ensemble members.
2. Per sample s: ``e_s = normalise(mean over windows of emb[:, s, :])``.
3. Per profile: ``c = normalise(mean of its enrolment embeddings)`` (the centroid).
4. ``cos_s = e_s . c``; ``p_s = 1 / (1 + exp(-(a * cos_s + b)))`` with the calibration stored in
   the model; ``p_allow = mean_s p_s``; ``uncertainty = std_s p_s`` (or the contract's measure:
   ``policy.summarize`` of the S probabilities).
5. The best-scoring profile is the candidate, decided by today's policy (``policy.decide``):
   GRANTED as NAME / DENIED / UNCERTAIN. If a second profile also reaches the accept threshold
   the voice matches two people: UNCERTAIN, granted to neither.

**Score normalisation (AS-norm), when the model carries a cohort** (calibration type
``as-norm-logistic``, :class:`ScoreNorm`): before step 4's calibration each ``cos_s`` becomes
``0.5 * ((cos_s - mu_a) / sd_a + (cos_s - mu_p) / sd_p)``, with mu and sd the mean and spread of
the ``top`` highest cosines of the attempt's mean embedding (a) and of the profile centroid (p)
with the cohort: centroids of the encoder's TRAINING speakers, stored in the model. A voice that
resembles many people (a common timbre, a shared channel) is judged against those look-alikes
rather than against one fixed cosine. The calibration and thresholds of such a model were fitted
on normalised scores of the validation speakers, and an older runtime refuses the model (unknown
calibration type) rather than misreading it. The shipped encoders carry no cohort: AS-norm
inflates voice-like sounds far from every real voice (``export/score_norm.py`` has the figures).

:class:`ProfileGate` joins an :class:`~voicegate.device.encoder.Encoder` and a
:class:`~voicegate.device.profiles.ProfileStore` into a gate with the classifier gate's
interface (``decide_audio``, ``decide_file``, ``warmup``, ``method``, ``sha256``); it reloads the
profiles when the store changes, and every failure is an exception (fail closed).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .audio import SAMPLE_RATE, AudioError, PathLike
from .contract import ModelError
from .features import INFER_HOP_SECONDS, featurize
from .policy import GRANTED, UNCERTAIN, UNCERTAINTY_MEASURES, Thresholds, binary_entropy, decide, summarize
from .runtime import Decision

log = logging.getLogger(__name__)


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def sample_embeddings(emb: np.ndarray) -> np.ndarray:
    """(W, S, D) window embeddings -> (S, D): e_s = normalise(mean over windows)."""
    e = np.asarray(emb, dtype=np.float64)
    if e.ndim != 3 or 0 in e.shape:
        raise ValueError(f"embeddings must be a non-empty (windows, S, D) array, got {e.shape}")
    return normalise(e.mean(axis=0))


def window_embeddings(emb: np.ndarray) -> np.ndarray:
    """(W, S, D) -> (W, D): each window's mean over the S samples, normalised (enrolment)."""
    return normalise(np.asarray(emb, dtype=np.float64).mean(axis=1)).astype(np.float32)


def centroid(embeddings: np.ndarray) -> np.ndarray:
    """(n, D) enrolment embeddings -> (D,) normalised mean."""
    return normalise(np.asarray(embeddings, dtype=np.float64).mean(axis=0))


def calibrate(cos, calibration: tuple[float, float]) -> np.ndarray:
    """Cosine -> probability with the model's logistic calibration (a, b)."""
    a, b = calibration
    z = a * np.asarray(cos, dtype=np.float64) + b
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


STD_FLOOR = 1e-6  # AS-norm: the cohort spread never divides by (nearly) zero


@dataclass(frozen=True)
class ScoreNorm:
    """Adaptive symmetric normalisation against a cohort of (N, D) unit-norm voice centroids."""

    cohort: np.ndarray
    top: int

    def stats(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, D) unit embeddings -> mean and spread of each one's ``top`` best cohort cosines."""
        c = np.einsum("nd,kd->nk", np.asarray(emb, np.float64), self.cohort)
        k = max(1, min(self.top, c.shape[1]))
        best = np.partition(c, c.shape[1] - k, axis=1)[:, c.shape[1] - k:]
        return best.mean(axis=1), np.maximum(best.std(axis=1), STD_FLOOR)

    def apply(self, cos: np.ndarray, attempt: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        """(S, P) cosines of one attempt (its mean embedding ``attempt``, (D,)) with P centroids."""
        return self.apply_many(cos[None], attempt[None], centroids)[0]

    def apply_many(self, cos: np.ndarray, attempts: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        """(A, S, P) cosines of A attempts (mean embeddings (A, D)) with P centroids -> normalised."""
        mu_a, sd_a = self.stats(normalise(attempts))
        mu_p, sd_p = self.stats(centroids)
        return 0.5 * ((cos - mu_a[:, None, None]) / sd_a[:, None, None] + (cos - mu_p) / sd_p)


@dataclass
class ProfileScore:
    name: str
    p_allow: float
    uncertainty: float
    cosine: float  # mean over samples of cos_s
    samples: np.ndarray  # (S,) p_s


def score_profiles(emb: np.ndarray, names: Sequence[str], centroids: np.ndarray,
                   calibration: tuple[float, float], measure: str = "std",
                   norm: Optional[ScoreNorm] = None) -> list[ProfileScore]:
    """Score an utterance's (W, S, D) embeddings against (P, D) centroids, best first.

    Vectorised over profiles: p_allow, std, entropy and mutual information of every profile's
    S probabilities at once (the same formulas as ``policy.summarize``). ``norm``: the model's
    AS-norm (``Encoder.score_norm``), applied to the cosines before the calibration; use
    ``Encoder.score`` rather than passing the pieces by hand.
    """
    if len(names) == 0:
        return []
    if measure not in UNCERTAINTY_MEASURES:
        raise ValueError(f"unknown uncertainty measure {measure!r}")
    e = sample_embeddings(emb)  # (S, D)
    # einsum, not @: a (S, D) x (D, P) product is tiny, and a multithreaded BLAS on a busy CPU
    # can take 70 ms for it (measured here: 74 ms with @, 0.2 ms with one BLAS thread)
    cos = np.einsum("sd,pd->sp", e, np.asarray(centroids, dtype=np.float64))  # (S, P)
    p = calibrate(cos if norm is None else norm.apply(cos, e.mean(axis=0), centroids), calibration)
    p_allow = p.mean(axis=0)
    if measure == "std":
        unc = p.std(axis=0)
    else:
        entropy = binary_entropy(p_allow)
        unc = entropy if measure == "entropy" else np.maximum(0.0, entropy - binary_entropy(p).mean(axis=0))
    cos_mean = cos.mean(axis=0)
    order = np.argsort(-p_allow, kind="stable")
    return [ProfileScore(names[j], float(p_allow[j]), float(unc[j]), float(cos_mean[j]), p[:, j])
            for j in order]


def decide_by_name(scores: Sequence[ProfileScore], thresholds: Thresholds,
                   measure: str = "std") -> tuple[str, Optional[str], str]:
    """(GRANTED | DENIED | UNCERTAIN, the granted name or None, a one-line reason)."""
    if not scores:
        raise ModelError("no enrolled profiles to score against")
    best = scores[0]
    verdict, reason = decide(summarize(best.samples[None, :]), thresholds, measure)
    if verdict == GRANTED:
        rivals = [s for s in scores[1:] if s.p_allow >= thresholds.accept]
        if rivals:
            return UNCERTAIN, None, (
                f"the voice matches {best.name} (p {best.p_allow:.3f}) and {rivals[0].name} "
                f"(p {rivals[0].p_allow:.3f}), both >= accept {thresholds.accept:.3f}: please repeat"
            )
        return GRANTED, best.name, f"{best.name}: {reason}"
    return verdict, None, f"best match {best.name}: {reason}"


@dataclass
class NamedDecision(Decision):
    """A gate decision against enrolled profiles: who (``speaker``) and every profile's score."""

    speaker: Optional[str] = None  # the granted person; None unless GRANTED
    candidate: Optional[str] = None  # the best-scoring profile, whatever the decision
    scores: dict = field(default_factory=dict)  # name -> p_allow, every enrolled name
    profiles: int = 0


class ProfileGate:
    """Encoder + profile store -> decisions by name; reloads the store when it changes."""

    kind = "encoder"

    def __init__(self, encoder, store, reload: bool = True, detector=None):
        self.encoder = encoder
        self.store = store
        self.reload = reload
        self.detector = detector  # the speech detector (None: the device's)
        self._signature = None
        self._names: list[str] = []
        self._centroids = np.zeros((0, max(1, encoder.dim)))
        self.refresh(force=True)

    method = property(lambda self: self.encoder.method)
    sha256 = property(lambda self: self.encoder.sha256)
    thresholds = property(lambda self: self.encoder.thresholds)
    path = property(lambda self: self.encoder.path)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def refresh(self, force: bool = False) -> bool:
        """Reload the profiles if the store changed; True if it did. Raises ProfileError."""
        sig = self.store.signature()
        if not force and sig == self._signature:
            return False
        self._signature = None  # until the load succeeds, every decision retries it (fail closed)
        profiles = self.store.load_all(self.encoder.sha256, self.encoder.dim)
        self._names = [p.name for p in profiles]
        self._centroids = np.stack([p.centroid() for p in profiles])
        self._signature = sig
        log.info("profiles loaded from %s: %s", self.store.root, ", ".join(self._names))
        return True

    def decide_images(self, images: np.ndarray, started: float | None = None) -> NamedDecision:
        t0 = time.perf_counter() if started is None else started
        if self.reload:
            self.refresh()
        emb = self.encoder.embed(images)
        scores = self.encoder.score(emb, self._names, self._centroids)
        verdict, speaker, reason = decide_by_name(scores, self.encoder.thresholds, self.encoder.measure)
        best = summarize(scores[0].samples[None, :])
        return NamedDecision(
            decision=verdict, p_allow=best.p_allow, uncertainty=best.uncertainty(self.encoder.measure),
            uncertainty_measure=self.encoder.measure, std=best.std, entropy=best.entropy,
            mutual_info=best.mutual_info, windows=int(emb.shape[0]), samples=int(emb.shape[1]),
            method=self.method, model_sha256=self.sha256,
            latency_ms=(time.perf_counter() - t0) * 1000.0, reason=reason,
            thresholds=self.encoder.thresholds.to_dict(),
            model_thresholds=self.encoder.contract.thresholds.to_dict(),
            thresholds_loosened=list(self.encoder.thresholds_loosened), speaker=speaker,
            candidate=scores[0].name, scores={s.name: round(s.p_allow, 4) for s in scores},
            profiles=len(scores),
        )

    def decide_audio(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE, speech_probs=None) -> NamedDecision:
        """``speech_probs``: the detector's frame probabilities of ``audio``, if already computed."""
        t0 = time.perf_counter()
        if not isinstance(audio, np.ndarray):
            raise AudioError(f"audio must be a numpy array, got {type(audio).__name__}")
        images = featurize(audio, sample_rate=sample_rate, hop_seconds=INFER_HOP_SECONDS,
                           detector=self.detector, speech_probs=speech_probs)
        return self.decide_images(images, started=t0)

    def decide_file(self, path: PathLike) -> NamedDecision:
        t0 = time.perf_counter()
        images = featurize(Path(path), hop_seconds=INFER_HOP_SECONDS, detector=self.detector)
        return self.decide_images(images, started=t0)

    def warmup(self) -> None:
        self.encoder.warmup()

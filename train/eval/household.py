"""An encoder as a household gate, so the study's closed-set protocol scores old and new alike.

``voicegate eval CLASSIFIER.onnx ENCODER.onnx`` runs the classifier evaluation
(:mod:`.evaluate`: the test-split attempts of the allowed and not-allowed training speakers, every
attempt of the held-out impostors) with the encoder beside the classifier on the **same
attempts**. The encoder needs a household: the corpus's allowed speakers are enrolled from their
train-split recordings (at most ``enrol_seconds`` of speech each, the enrolment protocol's rule,
:func:`~.enrolment.plan_speakers`), and each attempt is decided against all of them by the
device's rule (:mod:`voicegate.device.scoring`: the best profile decides, a second profile that
also passes accept makes it UNCERTAIN). Any GRANTED opens the door, whoever's name it carries.

:class:`HouseholdGate` has the part of the classifier gate's interface the evaluation loop uses
(``predict`` + ``decide_samples``, ``thresholds``, ``contract``, ...). Its "samples" are the best
profile's per-sample probabilities p_s, repeated for every window of the attempt, so the policy's
summary of them is exactly the device's (the window-level figures of an encoder are therefore
per attempt, weighted by windows). Caveat: the not-allowed training speakers may be voices the
encoder trained on (closed set for both models); the held-out impostors are unseen by both.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .enrolment import ENROL_SECONDS, OnnxEmbedder, ProtocolConfig, enrol_speaker, plan_speakers

log = logging.getLogger(__name__)


class HouseholdGate:
    """An encoder plus enrolled profiles, deciding like the device's ProfileGate."""

    def __init__(self, embedder: OnnxEmbedder, names: list, centroids: np.ndarray, enrolment: dict):
        self.embedder = embedder
        self.encoder = embedder.encoder
        self.names = list(names)
        self.centroids = np.asarray(centroids, np.float64)
        self.enrolment = enrolment
        self.contract = self.encoder.contract
        self.thresholds = self.encoder.thresholds
        self.measure = self.encoder.measure
        self.path = Path(self.encoder.path)
        self.sha256 = self.encoder.sha256
        self._scores = None

    method = property(lambda self: self.encoder.method)
    samples = property(lambda self: self.encoder.samples)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(W, S): the best profile's p_s for every window (the scores are kept for the decision)."""
        emb = self.encoder.embed(images)
        self._scores = self.encoder.score(emb, self.names, self.centroids)
        return np.repeat(self._scores[0].samples[None, :], emb.shape[0], axis=0)

    def decide_samples(self, samples: np.ndarray, started: Optional[float] = None):
        from voicegate.device.policy import summarize
        from voicegate.device.runtime import Decision
        from voicegate.device.scoring import decide_by_name

        t0 = time.perf_counter() if started is None else started
        verdict, _, reason = decide_by_name(self._scores, self.thresholds, self.measure)
        stats = summarize(samples)
        return Decision(decision=verdict, p_allow=stats.p_allow, uncertainty=stats.uncertainty(self.measure),
                        uncertainty_measure=self.measure, std=stats.std, entropy=stats.entropy,
                        mutual_info=stats.mutual_info, windows=stats.windows, samples=stats.samples,
                        method=self.method, model_sha256=self.sha256,
                        latency_ms=(time.perf_counter() - t0) * 1000.0, reason=reason,
                        thresholds=self.thresholds.to_dict())


def household_gate(path, corpus, split_seed: int = 0, split_fractions=(0.6, 0.2, 0.2), threads: int = 1,
                   seed: Optional[int] = None, enrol_seconds: float = ENROL_SECONDS, detector=None) -> HouseholdGate:
    """Load the encoder at ``path`` and enrol ``corpus``'s allowed speakers (a Corpus) from their
    train-split recordings."""
    embedder = OnnxEmbedder(path, threads=threads, seed=seed, detector=detector)
    cfg = ProtocolConfig(corpus=str(corpus.root), enrol_seconds=enrol_seconds, split_seed=split_seed,
                         split_fractions=tuple(split_fractions), progress=False)
    names, centroids, enrolment = [], [], {}
    for plan in plan_speakers(corpus.recordings, corpus.roles, split_seed, split_fractions):
        if plan.role != "allowed" or not plan.enrolled:
            continue
        profile = enrol_speaker(plan, embedder, cfg, detector=detector)
        if profile is None:
            log.warning("household: %s could not be enrolled (no usable speech)", plan.speaker)
            continue
        names.append(plan.speaker)
        centroids.append(profile.pop("centroid"))
        enrolment[plan.speaker] = profile
    if not names:
        from .enrolment import ProtocolError

        raise ProtocolError(f"{corpus.root}: no allowed speaker could be enrolled")
    log.info("household of %s enrolled: %s", embedder.name, ", ".join(names))
    return HouseholdGate(embedder, names, np.stack(centroids), enrolment)


def household_gates(paths, corpus, prep_cfg, threads: int = 1, enrol_seconds: float = ENROL_SECONDS) -> dict:
    """{name: HouseholdGate} for the encoder models ``paths``, each with the corpus's allowed
    speakers enrolled (the classifier evaluation's split: ``prep_cfg.seed`` and fractions)."""
    gates = {}
    for path in paths:
        gate = household_gate(path, corpus, prep_cfg.seed, prep_cfg.split_fractions, threads,
                              enrol_seconds=enrol_seconds)
        name = f"{gate.path.stem} (household of {len(gate.names)})"
        gates[name] = gate
    return gates

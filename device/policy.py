"""The decision policy: per-window p(allowed) samples -> GRANTED / DENIED / UNCERTAIN.

Input: an array ``samples`` of shape (windows, S), the model's p(allowed) for every window of
one utterance and every sample s (an MC-dropout mask, shared by all windows of the utterance, or
an ensemble member). Column s is therefore one sampled network's view of the whole utterance.

Per utterance:

- ``u[s] = mean over windows of samples[:, s]``: sample s's p(allowed) for the utterance.
- ``p_allow = mean over s of u[s]`` (= the mean over windows of the per-window sample means).
- ``std = std over s of u[s]``: the spread of the sampled networks' verdicts. **This is the
  uncertainty that decides by default** (``uncertainty_measure="std"``): it is in the same units
  as p(allowed), easy to threshold and to explain.
- ``entropy = H(p_allow)``: predictive entropy in bits (binary; 0 = certain, 1 = a coin flip).
  It mixes data noise and model doubt.
- ``mutual_info = H(p_allow) - mean over s of H(u[s])``: the BALD mutual information in bits,
  the part of the entropy that comes from the samples disagreeing (epistemic uncertainty).

All three are always reported; a model's contract may name ``entropy`` or ``mutual_info`` as
the deciding measure instead of ``std``, and the limit then applies to that measure.

Decision, with thresholds accept >= deny and an uncertainty limit:

- GRANTED   if p_allow >= accept and uncertainty <= limit;
- DENIED    if p_allow <  deny, or if p_allow < accept and uncertainty <= limit (confidently low);
- UNCERTAIN otherwise ("please repeat"): high p_allow but too uncertain, or between deny and
  accept and too uncertain.

Pure numpy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

GRANTED, DENIED, UNCERTAIN = "GRANTED", "DENIED", "UNCERTAIN"
UNCERTAINTY_MEASURES = ("std", "entropy", "mutual_info")
DEFAULT_MEASURE = "std"

# How far a threshold override may loosen a model's validated operating point (the thresholds
# stored in it) before it is refused unless the operator says --unsafe-thresholds. Tightening
# (a higher accept or deny, a lower uncertainty limit) is always allowed.
MAX_ACCEPT_LOWERING = 0.05  # accept may be lowered by at most this much p(allowed)
MAX_DENY_LOWERING = 0.05  # deny likewise (it lets more confidently-low voices retry)
MAX_LIMIT_RAISE = 0.25  # the uncertainty limit may be raised by at most 25 % of its value


class ThresholdError(ValueError):
    """Thresholds that make no sense (out of range, deny above accept): a usage error."""


@dataclass
class Thresholds:
    """Decision thresholds: accept p, the uncertainty limit, and the deny p (deny <= accept)."""

    accept: float
    uncertainty_limit: float
    deny: float

    def __post_init__(self) -> None:
        self.accept, self.deny = float(self.accept), float(self.deny)
        self.uncertainty_limit = float(self.uncertainty_limit)
        if not 0.0 <= self.accept <= 1.0:
            raise ThresholdError(f"accept threshold must be in [0, 1], got {self.accept}")
        if not 0.0 <= self.deny <= self.accept:
            raise ThresholdError(f"deny threshold must be in [0, accept={self.accept}], got {self.deny}")
        if not (self.uncertainty_limit >= 0.0 and math.isfinite(self.uncertainty_limit)):
            raise ThresholdError(f"uncertainty limit must be finite and >= 0, got {self.uncertainty_limit}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Thresholds":
        return cls(
            accept=d["accept"], uncertainty_limit=d["uncertainty_limit"], deny=d.get("deny", d["accept"])
        )

    def override(
        self,
        accept: float | None = None,
        uncertainty_limit: float | None = None,
        deny: float | None = None,
    ) -> "Thresholds":
        """A copy with some thresholds replaced (a lowered accept pulls deny down with it)."""
        acc = self.accept if accept is None else float(accept)
        den = min(self.deny, acc) if deny is None else float(deny)
        lim = self.uncertainty_limit if uncertainty_limit is None else float(uncertainty_limit)
        return Thresholds(accept=acc, uncertainty_limit=lim, deny=den)


def loosening(validated: Thresholds, used: Thresholds) -> list[tuple[str, bool]]:
    """Each way ``used`` loosens ``validated``: (description, beyond the bounds?); [] if none."""
    out = []
    for name, looser, beyond in (
        ("accept", used.accept < validated.accept, used.accept < validated.accept - MAX_ACCEPT_LOWERING),
        ("deny", used.deny < validated.deny, used.deny < validated.deny - MAX_DENY_LOWERING),
        ("uncertainty_limit", used.uncertainty_limit > validated.uncertainty_limit,
         used.uncertainty_limit > validated.uncertainty_limit * (1.0 + MAX_LIMIT_RAISE)),
    ):
        if looser:
            was, now = getattr(validated, name), getattr(used, name)
            out.append((f"{name} {was:.4g} -> {now:.4g}", bool(beyond)))
    return out


def check_loosening(validated: Thresholds, used: Thresholds, unsafe: bool = False) -> list[str]:
    """The descriptions of how ``used`` loosens ``validated`` (see :func:`loosening`).

    Raises ThresholdError when one goes beyond the bounds (MAX_ACCEPT_LOWERING,
    MAX_DENY_LOWERING, MAX_LIMIT_RAISE) and ``unsafe`` is not set.
    """
    found = loosening(validated, used)
    beyond = [d for d, b in found if b]
    if beyond and not unsafe:
        raise ThresholdError(
            "refusing thresholds that loosen the model's validated operating point beyond the "
            f"allowed bounds ({'; '.join(beyond)}; bounds: accept and deny -{MAX_ACCEPT_LOWERING:g}, "
            f"uncertainty limit +{MAX_LIMIT_RAISE:.0%}); pass --unsafe-thresholds to force them"
        )
    return [f"{d} (beyond the bounds, --unsafe-thresholds)" if b else d for d, b in found]


@dataclass
class UtteranceStats:
    """What the samples of one utterance say: mean p(allowed) and three uncertainty measures."""

    p_allow: float
    std: float
    entropy: float
    mutual_info: float
    windows: int
    samples: int

    def uncertainty(self, measure: str = DEFAULT_MEASURE) -> float:
        if measure not in UNCERTAINTY_MEASURES:
            raise ValueError(f"unknown uncertainty measure {measure!r}")
        return float(getattr(self, measure))

    def to_dict(self) -> dict:
        return asdict(self)


def binary_entropy(p) -> np.ndarray:
    """H(p) in bits for Bernoulli(p), elementwise (0 at p = 0 or 1)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p))
    return np.nan_to_num(h, nan=0.0)


def summarize(samples) -> UtteranceStats:
    """Aggregate (windows, S) per-window sample probabilities into utterance statistics."""
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim == 1:
        s = s[None, :]
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"samples must be a non-empty (windows, S) array, got shape {s.shape}")
    if not np.all(np.isfinite(s)) or s.min() < 0.0 or s.max() > 1.0:
        raise ValueError("samples must be finite probabilities in [0, 1]")
    per_sample = s.mean(axis=0)  # u[s]: each sampled network's p(allowed) for the utterance
    p = float(per_sample.mean())
    entropy = float(binary_entropy(p))
    expected = float(binary_entropy(per_sample).mean())
    return UtteranceStats(
        p_allow=p,
        std=float(per_sample.std()),
        entropy=entropy,
        mutual_info=max(0.0, entropy - expected),
        windows=int(s.shape[0]),
        samples=int(s.shape[1]),
    )


def decide(
    stats: UtteranceStats, thresholds: Thresholds, measure: str = DEFAULT_MEASURE
) -> tuple[str, str]:
    """(GRANTED | DENIED | UNCERTAIN, a one-line reason) for one utterance."""
    p, u = stats.p_allow, stats.uncertainty(measure)
    if not (math.isfinite(p) and math.isfinite(u)):
        raise ValueError("non-finite p_allow or uncertainty")
    t = thresholds
    confident = u <= t.uncertainty_limit
    if p >= t.accept and confident:
        return GRANTED, (
            f"p_allow {p:.3f} >= accept {t.accept:.3f} and {measure} {u:.3f} <= {t.uncertainty_limit:.3f}"
        )
    if p < t.deny:
        return DENIED, f"p_allow {p:.3f} < deny {t.deny:.3f}"
    if p < t.accept and confident:
        return DENIED, (
            f"p_allow {p:.3f} < accept {t.accept:.3f} with {measure} {u:.3f} <= {t.uncertainty_limit:.3f}"
        )
    side = f">= accept {t.accept:.3f}" if p >= t.accept else f"between deny {t.deny:.3f} and accept {t.accept:.3f}"
    return UNCERTAIN, f"p_allow {p:.3f} {side} but {measure} {u:.3f} > {t.uncertainty_limit:.3f}: please repeat"

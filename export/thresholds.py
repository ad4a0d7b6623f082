"""Choosing a model's decision thresholds on the validation split.

Only validation utterances are used here: allowed speakers' and not-allowed *training* speakers'
validation recordings. Held-out impostors never reach threshold selection.

Rules (documented in the model card and stored in the contract):

- **accept**: at least the lowest p(allowed) threshold whose false-accept rate on the
  not-allowed validation utterances is at most ``target_far``
  (``voicegate.train.eval.openset.threshold_at_far``). That lowest threshold is the *least* secure
  choice that meets the target, and it sits right on top of the validation impostors, which
  are voices training has seen; voices it has never heard score higher. So with
  ``placement="midpoint"`` (the default) the threshold moves to the middle of the validation
  gap: halfway between that FAR-bound threshold and the ``frr_quantile`` (default 5 %) of the
  allowed speakers' p(allowed), when the latter is higher. ``placement="far"`` keeps the
  FAR-bound threshold. Either way the validation FAR stays within the target.
- **uncertainty limit**: the ``quantile`` (default 95th percentile) of the deciding uncertainty
  measure over allowed validation utterances that the accept threshold lets in, so about 5 % of
  correct accepts would be asked to repeat; never below ``UNCERTAINTY_FLOOR[measure]`` (a few
  validation utterances can make the percentile degenerately small). If no allowed utterance
  reaches the accept threshold, all allowed utterances are used (with a warning).
- **deny**: the ``deny_quantile`` (default 1 %) of p(allowed) over allowed validation utterances,
  capped at accept: below it even an uncertain utterance is DENIED, between it and accept an
  uncertain one is UNCERTAIN ("please repeat").

Pure numpy (plus the policy from the device runtime).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Sequence

import numpy as np

from voicegate.device.policy import DENIED, GRANTED, UNCERTAIN, Thresholds, UtteranceStats, decide, summarize
from voicegate.train.eval.openset import operating_point, threshold_at_far

log = logging.getLogger(__name__)

UNCERTAINTY_FLOOR = {"std": 0.02, "entropy": 0.05, "mutual_info": 0.01}
DEFAULT_QUANTILE = 0.95
DEFAULT_DENY_QUANTILE = 0.01
DEFAULT_FRR_QUANTILE = 0.05
PLACEMENTS = ("midpoint", "far")


def utterance_stats(
    predict: Callable[[np.ndarray], np.ndarray], utterances: Iterable[np.ndarray]
) -> list[UtteranceStats]:
    """Run ``predict`` ((n,224,224) -> (n,S)) on every utterance's windows, one batch each."""
    return [summarize(predict(images)) for images in utterances]


def choose_thresholds(
    pos: Sequence[UtteranceStats],
    neg: Sequence[UtteranceStats],
    target_far: float = 0.01,
    measure: str = "std",
    quantile: float = DEFAULT_QUANTILE,
    deny_quantile: float = DEFAULT_DENY_QUANTILE,
    placement: str = "midpoint",
    frr_quantile: float = DEFAULT_FRR_QUANTILE,
) -> tuple[Thresholds, dict]:
    """Thresholds from allowed (``pos``) and not-allowed (``neg``) validation utterances, and a
    JSON-ready report of what they give on those utterances."""
    if not pos or not neg:
        raise ValueError(
            f"need allowed and not-allowed validation utterances (got {len(pos)} and {len(neg)})"
        )
    p_pos = np.array([s.p_allow for s in pos])
    p_neg = np.array([s.p_allow for s in neg])
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    far_bound = min(1.0, threshold_at_far(p_neg, target_far))
    genuine_low = float(np.quantile(p_pos, frr_quantile))
    accept = far_bound
    if placement == "midpoint" and genuine_low > far_bound:
        accept = 0.5 * (far_bound + genuine_low)
    far_at_accept = float(np.mean(p_neg >= accept))
    if far_at_accept > target_far:
        log.warning("target FAR %.4f cannot be met on validation (FAR %.4f at accept = 1.0)",
                    target_far, far_at_accept)
    u_pos = np.array([s.uncertainty(measure) for s in pos])
    accepted = p_pos >= accept
    basis = "correctly accepted allowed utterances"
    if not accepted.any():
        log.warning("no allowed validation utterance reaches accept=%.4f; the uncertainty limit "
                    "comes from all allowed utterances", accept)
        accepted[:] = True
        basis = "all allowed utterances (none was accepted)"
    limit = max(float(np.quantile(u_pos[accepted], quantile)), UNCERTAINTY_FLOOR[measure])
    deny = min(accept, float(np.quantile(p_pos, deny_quantile)))
    thresholds = Thresholds(accept=accept, uncertainty_limit=limit, deny=deny)
    report = {
        "target_far": target_far,
        "measure": measure,
        "data": "validation split (allowed and not-allowed training speakers); no held-out impostors",
        "rules": {
            "accept": (
                "lowest p threshold with FAR <= target_far on not-allowed validation utterances"
                if placement == "far" or accept == far_bound else
                f"midpoint between that threshold ({far_bound:.4f}) and the {frr_quantile:g} "
                f"quantile of allowed p ({genuine_low:.4f})"
            ),
            "uncertainty_limit": f"quantile {quantile} of {measure} over {basis}, floor {UNCERTAINTY_FLOOR[measure]}",
            "deny": f"quantile {deny_quantile} of p over allowed validation utterances, capped at accept",
        },
        "accept_only": operating_point(p_pos, p_neg, accept),
        "policy": {
            "allowed": policy_rates(pos, thresholds, measure),
            "not_allowed": policy_rates(neg, thresholds, measure),
        },
    }
    report["policy"]["far"] = report["policy"]["not_allowed"][GRANTED]
    report["policy"]["frr"] = 1.0 - report["policy"]["allowed"][GRANTED]
    return thresholds, report


def policy_rates(stats: Sequence[UtteranceStats], thresholds: Thresholds, measure: str) -> dict:
    """Share of utterances GRANTED / DENIED / UNCERTAIN under the full policy, and the count."""
    verdicts = [decide(s, thresholds, measure)[0] for s in stats]
    n = max(1, len(verdicts))
    out = {v: verdicts.count(v) / n for v in (GRANTED, DENIED, UNCERTAIN)}
    out["n"] = len(verdicts)
    return out

"""Threshold selection on validation stats: FAR bound, gap midpoint, uncertainty limit."""

import numpy as np
import pytest

from voicegate.device.policy import summarize
from voicegate.export.thresholds import UNCERTAINTY_FLOOR, choose_thresholds


def _stats(ps, spread=0.0):
    # one utterance per p: 10 samples around p with the given spread
    return [summarize(np.clip(p + spread * np.linspace(-1, 1, 10), 0, 1)[None, :]) for p in ps]


def test_far_placement_is_the_lowest_threshold_meeting_the_target():
    neg = _stats(np.linspace(0.0, 0.3, 100))  # highest impostor p = 0.3
    pos = _stats([0.9, 0.95, 0.99, 1.0])
    thr, report = choose_thresholds(pos, neg, target_far=0.0, placement="far")
    assert thr.accept == pytest.approx(0.3, abs=1e-6)
    assert report["accept_only"]["far"] == 0.0


def test_midpoint_placement_sits_in_the_validation_gap():
    neg = _stats(np.linspace(0.0, 0.3, 100))
    pos = _stats([0.9, 0.9, 0.95, 0.99, 1.0])
    thr, report = choose_thresholds(pos, neg, target_far=0.0, frr_quantile=0.0)
    assert thr.accept == pytest.approx((0.3 + 0.9) / 2, abs=1e-3)
    assert report["accept_only"]["far"] == 0.0 and report["accept_only"]["frr"] == 0.0
    assert "midpoint" in report["rules"]["accept"]


def test_midpoint_never_loosens_the_far_bound():
    # allowed p below the impostors: no gap, the FAR bound stands
    neg = _stats(np.linspace(0.0, 0.8, 100))
    pos = _stats([0.5, 0.6])
    thr, _ = choose_thresholds(pos, neg, target_far=0.0)
    assert thr.accept > 0.8


def test_uncertainty_limit_comes_from_accepted_allowed_utterances():
    neg = _stats(np.linspace(0.0, 0.2, 50))
    pos = _stats([0.95] * 20, spread=0.05)
    thr, _ = choose_thresholds(pos, neg, target_far=0.0)
    spread_std = float(np.std(0.95 + 0.05 * np.linspace(-1, 1, 10)))
    assert thr.uncertainty_limit == pytest.approx(max(spread_std, UNCERTAINTY_FLOOR["std"]), rel=1e-6)
    with pytest.raises(ValueError):
        choose_thresholds(pos, neg, placement="nowhere")

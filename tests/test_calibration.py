"""Calibration and uncertainty metrics on hand-made predictions with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voicegate.train.eval import calibration as cal


def test_perfect_classifier_has_zero_ece_nll_brier_and_full_accuracy():
    y = np.array([0, 1, 1, 0, 1])
    p = y.astype(float)
    rep = cal.uncertainty_report(y, p[None])
    assert rep["accuracy"] == 1.0
    assert rep["ece"] == 0.0
    assert rep["brier"] == 0.0
    assert rep["nll"] == pytest.approx(0.0, abs=1e-6)
    assert rep["misclassified"] == 0
    assert rep["error_auroc"]["entropy"] is None  # no errors: nothing to spot


def test_brier_and_nll_by_hand():
    y = [1, 0, 1, 0]
    p = [0.8, 0.3, 0.4, 0.5]
    # (0.2^2 + 0.3^2 + 0.6^2 + 0.5^2) / 4
    assert cal.brier_score(y, p) == pytest.approx((0.04 + 0.09 + 0.36 + 0.25) / 4)
    # -(ln 0.8 + ln 0.7 + ln 0.4 + ln 0.5) / 4
    assert cal.negative_log_likelihood(y, p) == pytest.approx(
        -(math.log(0.8) + math.log(0.7) + math.log(0.4) + math.log(0.5)) / 4
    )


def test_ece_by_hand():
    # confidences 0.9, 0.9 (one right, one wrong) and 0.6, 0.6 (both right), 10 bins over [0.5, 1]
    y = [1, 0, 0, 0]
    p = [0.9, 0.9, 0.4, 0.4]
    # bin of 0.9: acc 0.5, conf 0.9 -> gap 0.4 (weight 1/2); bin of 0.6: acc 1, conf 0.6 -> gap 0.4
    assert cal.expected_calibration_error(y, p, n_bins=10) == pytest.approx(0.4)
    b = cal.reliability_bins(y, p, n_bins=10)
    assert b["count"].sum() == 4


def test_always_right_but_unsure_classifier_is_miscalibrated():
    y = np.array([1, 1, 0, 0])
    p = np.array([0.6, 0.6, 0.4, 0.4])
    assert cal.expected_calibration_error(y, p) == pytest.approx(0.4)


def test_misclassification_auroc_and_risk_coverage():
    y = np.array([1, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.1, 0.7, 0.8, 0.3])  # windows 1 and 3 are wrong
    unc = np.array([0.1, 0.9, 0.1, 0.8, 0.2, 0.3])  # and the most uncertain
    assert cal.misclassification_auroc(y, p, unc) == 1.0
    assert cal.misclassification_auroc(y, p, -unc) == 0.0
    rc = cal.risk_coverage(y, p, unc)
    assert rc["accuracy"][-1] == pytest.approx(4 / 6)  # full coverage = plain accuracy
    assert rc["accuracy"][3] == 1.0  # the 4 most certain are all right
    assert rc["accuracy_at"]["0.5"] == 1.0
    assert 0.0 <= rc["aurc"] <= 1.0


def test_sample_uncertainty():
    s = np.array([[0.2, 1.0], [0.8, 1.0]])  # window 0: samples disagree; window 1: agree
    u = cal.sample_uncertainty(s)
    assert u["mean"] == pytest.approx([0.5, 1.0])
    assert u["std"] == pytest.approx([0.3, 0.0])
    assert u["entropy"][0] == pytest.approx(math.log(2))
    assert u["entropy"][1] == pytest.approx(0.0, abs=1e-9)
    assert u["mutual_info"][0] > 0 and u["mutual_info"][1] == pytest.approx(0.0, abs=1e-9)


def test_open_set_auroc():
    y = np.array([1, 1, 0, 0])
    closed = np.array([[0.9, 0.8, 0.1, 0.2], [0.95, 0.85, 0.05, 0.1]])
    impostors = np.array([[0.3, 0.6], [0.7, 0.2]])  # lower p(allowed), more disagreement
    rep = cal.uncertainty_report(y, closed, open_samples=impostors)
    o = rep["open_set"]
    assert o["auroc_p_allow"] == 1.0
    assert o["auroc_uncertainty"]["std"] == 1.0
    assert o["n_impostor"] == 2 and o["n_allowed"] == 2
    assert 0.0 <= o["eer"] <= 1.0
    assert o["n_accepted"] == 1  # the impostor window with mean p(allowed) 0.5 (samples 0.3, 0.7)
    assert o["accepted_min_uncertainty"]["std"] == pytest.approx(0.2)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        cal.brier_score([1, 0], [0.5])
    with pytest.raises(ValueError):
        cal.brier_score([1, 0], [0.5, 1.5])
    with pytest.raises(ValueError):
        cal.brier_score([2, 0], [0.5, 0.5])


def test_paired_bootstrap_of_a_method_against_itself_is_zero():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = np.clip(y * 0.7 + rng.random(60) * 0.3, 0, 1)
    u = rng.random(60)
    groups = np.repeat(np.arange(12), 5)
    out = cal.paired_bootstrap(y, groups, (p, u), (p, u), n_boot=50)
    for m in ("accuracy", "ece", "nll", "brier"):
        assert out[m]["difference"] == 0.0 and out[m]["low"] == 0.0 and out[m]["high"] == 0.0


def test_paired_bootstrap_sees_a_clearly_better_method():
    y = np.tile([0, 1], 50)
    good = np.where(y == 1, 0.9, 0.1)
    bad = np.where(np.arange(100) % 4 == 0, 1 - good, good)  # a quarter of the windows wrong
    groups = np.repeat(np.arange(25), 4)
    out = cal.paired_bootstrap(y, groups, (bad, np.zeros(100)), (good, np.zeros(100)), n_boot=100)
    assert out["accuracy"]["difference"] == pytest.approx(0.25)
    assert out["accuracy"]["low"] > 0  # the interval excludes zero
    assert out["brier"]["high"] < 0

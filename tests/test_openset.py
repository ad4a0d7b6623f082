"""FAR, FRR, EER and threshold selection on hand-made score lists with known answers."""

import numpy as np
import pytest

from voicegate.train.eval import openset as O


def test_far_frr_known_counts():
    pos = [0.9, 0.8, 0.7, 0.2]  # one genuine below 0.5
    neg = [0.1, 0.2, 0.6, 0.3, 0.4]  # one impostor at/above 0.5
    far, frr = O.far_frr(pos, neg, 0.5)
    assert far == pytest.approx(1 / 5)
    assert frr == pytest.approx(1 / 4)


def test_perfect_separation_has_zero_eer():
    rate, thr = O.eer([0.8, 0.9, 0.95], [0.1, 0.2, 0.3])
    assert rate == 0.0
    assert 0.3 < thr <= 0.8


def test_eer_of_symmetric_overlap():
    # 10 genuine, 10 impostor; exactly 2 of each on the wrong side of 0.5
    pos = [0.9] * 8 + [0.3, 0.4]
    neg = [0.1] * 8 + [0.6, 0.7]
    rate, _ = O.eer(pos, neg)
    assert rate == pytest.approx(0.2)


def test_eer_identical_distributions_is_half():
    rng = np.random.default_rng(0)
    s = rng.uniform(size=4000)
    rate, _ = O.eer(s[:2000], s[2000:])
    assert rate == pytest.approx(0.5, abs=0.03)


def test_threshold_at_far_meets_the_target():
    neg = np.linspace(0, 1, 200)  # 200 impostor scores
    for target in (0.0, 0.01, 0.05, 0.5):
        t = O.threshold_at_far(neg, target)
        far, _ = O.far_frr([1.0], neg, t)
        assert far <= target
        assert far >= target - 1 / 200 - 1e-12  # and it is the loosest such threshold
    assert O.far_frr([1.0], neg, O.threshold_at_far(neg, 0.0))[0] == 0.0


def test_det_curve_is_monotone():
    rng = np.random.default_rng(1)
    far, frr, thr = O.det_curve(rng.normal(1, 1, 300), rng.normal(0, 1, 300))
    assert np.all(np.diff(thr) > 0)
    assert np.all(np.diff(far) <= 0) and np.all(np.diff(frr) >= 0)
    assert far[0] == 1.0 and frr[-1] == 1.0 and far[-1] == 0.0


def test_bad_scores_raise():
    with pytest.raises(ValueError):
        O.eer([], [0.1])
    with pytest.raises(ValueError):
        O.far_frr([np.nan], [0.1], 0.5)

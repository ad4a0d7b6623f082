"""Classification metrics on hand-made inputs."""

import numpy as np
import pytest

from voicegate.train.eval.metrics import classification_metrics, per_group_accept, split_report, utterance_scores


def test_perfect_classifier_scores_one():
    y = np.array([0, 0, 0, 1, 1])
    m = classification_metrics(y, np.array([0.1, 0.2, 0.4, 0.9, 0.6]))
    for key in ("accuracy", "f1_weighted", "f1_macro", "balanced_accuracy", "roc_auc"):
        assert m[key] == 1.0
    assert m["confusion_matrix"] == [[3, 0], [0, 2]]
    assert m["false_accept_rate"] == 0.0 and m["false_reject_rate"] == 0.0


def test_known_confusion_matrix():
    # 4 not_allowed (1 false accept), 2 allowed (1 false reject)
    y = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.4])
    m = classification_metrics(y, p)
    assert m["confusion_matrix"] == [[3, 1], [1, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert m["false_accept_rate"] == pytest.approx(0.25)
    assert m["false_reject_rate"] == pytest.approx(0.5)
    # F1: class 0 = 2*3/(2*3+1+1) = 0.75, class 1 = 2*1/(2+1+1) = 0.5
    assert m["f1_macro"] == pytest.approx(0.625)
    assert m["f1_weighted"] == pytest.approx((4 * 0.75 + 2 * 0.5) / 6)
    # AUC: positives 0.8, 0.4 vs negatives 0.1 0.2 0.3 0.7 -> (4 + 3) / 8
    assert m["roc_auc"] == pytest.approx(7 / 8)


def test_threshold_moves_decisions():
    y, p = np.array([0, 1]), np.array([0.6, 0.8])
    assert classification_metrics(y, p, threshold=0.5)["confusion_matrix"] == [[0, 1], [0, 1]]
    assert classification_metrics(y, p, threshold=0.7)["confusion_matrix"] == [[1, 0], [0, 1]]


def test_single_class_has_no_auc():
    m = classification_metrics(np.zeros(3), np.array([0.1, 0.9, 0.2]))
    assert m["roc_auc"] is None and m["false_reject_rate"] is None
    assert m["false_accept_rate"] == pytest.approx(1 / 3)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0.5])


def test_per_speaker_accept_share():
    out = per_group_accept(["b", "a", "b", "b"], [0.9, 0.1, 0.2, 0.6], y_true=[1, 0, 1, 1])
    assert list(out) == ["a", "b"]
    assert out["b"]["accept_share"] == pytest.approx(2 / 3)
    assert out["b"]["mean_p_allow"] == pytest.approx((0.9 + 0.2 + 0.6) / 3)
    assert out["a"] == {"n": 1, "accept_share": 0.0, "mean_p_allow": 0.1, "label": 0}


def test_utterance_scores_average_windows():
    ids, labels, mean_p = utterance_scores(["r2", "r1", "r2"], [0.2, 0.9, 0.6], [1, 0, 1])
    assert ids.tolist() == ["r1", "r2"]
    assert labels.tolist() == [0, 1]
    assert mean_p == pytest.approx([0.9, 0.4])


def test_split_report_levels():
    rep = split_report([0, 0, 1, 1], [0.2, 0.7, 0.9, 0.8], ["s0", "s0", "s1", "s1"], ["r0", "r0", "r1", "r1"])
    assert rep["windows"]["n"] == 4 and rep["utterances"]["n"] == 2
    assert rep["utterances"]["accuracy"] == 1.0  # r0 mean 0.45 -> denied, r1 -> granted
    assert rep["per_speaker"]["s0"]["accept_share"] == 0.5

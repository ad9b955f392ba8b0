"""Tests of nexperia_utils.evaluation.metrics against direct computations written independently here."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from nexperia_utils.evaluation import metrics as M


# --------------------------------------------------------------------------- direct (slow, obvious) versions
def direct_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney: P(score of a random defect > score of a random good), ties count one half."""
    pos = [float(v) for v, t in zip(s, y) if t]
    neg = [float(v) for v, t in zip(s, y) if not t]
    total = 0.0
    for a, b in itertools.product(pos, neg):
        total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(pos) * len(neg))


def direct_fpr_at_tpr(y: np.ndarray, s: np.ndarray, level: float) -> float:
    """Sweep the distinct scores from high to low; predicted positive = score >= t."""
    n_pos = int(np.sum(y))
    n_neg = len(y) - n_pos
    for t in sorted(set(float(v) for v in s), reverse=True):
        tp = sum(1 for v, lab in zip(s, y) if lab and v >= t)
        fp = sum(1 for v, lab in zip(s, y) if not lab and v >= t)
        if tp / n_pos >= level:
            return fp / n_neg
    raise AssertionError("unreachable: the lowest threshold accepts every sample")


def direct_margin(p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = []
    for row, lab in zip(p, labels):
        others = [float(v) for j, v in enumerate(row) if j != lab]
        out.append(float(row[lab]) - max(others))
    return np.array(out)


def random_probs(rng: np.random.Generator, n: int, c: int, decimals: int | None = None) -> np.ndarray:
    """Random probability rows; optionally quantised so that many rows tie."""
    raw = rng.gamma(0.5, size=(n, c))
    if decimals is not None:
        raw = np.round(raw, decimals) + 10.0 ** (-decimals)
    return raw / raw.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- keys and levels
def test_metric_keys_match_levels():
    assert M.METRIC_KEYS == ("auc",) + tuple(M.metric_key(level) for level in M.TPR_LEVELS)
    assert M.metric_key(0.991) == "fpr@99.1"
    assert M.metric_key(0.997) == "fpr@99.7"
    assert M.metric_key(1.0) == "fpr@100"
    assert M.metric_key(0.5) == "fpr@50"


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.01, float("nan"), "0.99"])
def test_metric_key_rejects_bad_levels(bad):
    with pytest.raises(ValueError, match="TPR level"):
        M.metric_key(bad)


# --------------------------------------------------------------------------- defect score
def test_defect_score_is_one_minus_good_and_sum_of_defects():
    p = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25], [0.0, 0.0, 1.0]])
    neg = 1
    expected = np.array([0.3, 0.75, 1.0])
    np.testing.assert_allclose(M.defect_score(p, neg), expected)
    np.testing.assert_allclose(M.defect_score(p, neg), p[:, [0, 2]].sum(axis=1))


def test_is_defect():
    np.testing.assert_array_equal(M.is_defect(np.array([0, 4, 4, 9, 3]), 4), [True, False, False, True, True])
    assert M.is_defect(np.array([4, 4]), 4).dtype == bool


# --------------------------------------------------------------------------- hand-worked ROC examples
def test_perfect_separation():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert M.roc_auc(y, s) == 1.0
    for level in M.TPR_LEVELS:
        assert M.fpr_at_tpr(y, s, level) == 0.0


def test_one_positive_scored_lowest_gives_fpr100_of_one():
    y = np.array([1, 0, 0, 1, 1, 0])
    s = np.array([0.05, 0.2, 0.3, 0.9, 0.8, 0.4])
    assert M.fpr_at_tpr(y, s, 1.0) == 1.0
    # the two other defects are caught with no false positive: TPR 2/3 at FPR 0
    assert M.fpr_at_tpr(y, s, 0.6) == 0.0
    # AUC: 2 defects beat all 3 goods, one beats none -> 6 / 9
    assert M.roc_auc(y, s) == pytest.approx(6 / 9)


def test_hand_worked_tie_between_defect_and_good():
    # defects 0.9, 0.8, 0.5; goods 0.5, 0.3, 0.2, 0.1: the last defect ties with a good
    y = np.array([1, 1, 1, 0, 0, 0, 0], dtype=bool)
    s = np.array([0.9, 0.8, 0.5, 0.5, 0.3, 0.2, 0.1])
    # catching all defects needs threshold 0.5, which also accepts the tied good: FPR = 1/4
    assert M.fpr_at_tpr(y, s, 1.0) == 0.25
    assert M.fpr_at_tpr(y, s, 0.991) == 0.25
    assert M.fpr_at_tpr(y, s, 2 / 3) == 0.0
    # AUC: pairs 12; 0.9 and 0.8 beat 4 each; 0.5 beats 3 and ties 1 -> 11.5 / 12
    assert M.roc_auc(y, s) == pytest.approx(11.5 / 12)


def test_level_reached_exactly_uses_that_point():
    # 1000 defects, scores 1000..1 ; 10 goods scored between defect ranks 991 and 992
    pos = np.arange(1000, 0, -1, dtype=float)  # rank r (1-based) has score 1001 - r
    neg = np.full(10, 9.5)  # below the 991st defect (score 10), above the 992nd (score 9)
    y = np.r_[np.ones(1000, bool), np.zeros(10, bool)]
    s = np.r_[pos, neg]
    assert M.fpr_at_tpr(y, s, 0.991) == 0.0  # 991/1000 reached before any good
    assert M.fpr_at_tpr(y, s, 0.993) == 1.0
    assert M.fpr_at_tpr(y, s, 1.0) == 1.0


# --------------------------------------------------------------------------- against the direct versions
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_metrics_match_direct_sweep_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.random(n) < 0.3
    # scores quantised to 1/20 so that many defects tie with goods
    s = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1) * 20) / 20
    assert len(np.unique(s)) < 25
    tied_values = set(s[y]) & set(s[~y])
    assert tied_values, "the test needs ties across classes"
    assert M.roc_auc(y, s) == pytest.approx(direct_auc(y, s), abs=1e-12)
    for level in M.TPR_LEVELS + (0.5, 0.8, 0.95):
        assert M.fpr_at_tpr(y, s, level) == pytest.approx(direct_fpr_at_tpr(y, s, level), abs=1e-12), level


def test_fpr_levels_distinguished_with_many_defects():
    rng = np.random.default_rng(7)
    y = np.r_[np.ones(1000, bool), np.zeros(400, bool)]
    s = np.r_[rng.normal(2.0, 1.0, 1000), rng.normal(0.0, 1.0, 400)]
    s = np.round(s, 1)  # ties
    got = [M.fpr_at_tpr(y, s, level) for level in M.TPR_LEVELS]
    want = [direct_fpr_at_tpr(y, s, level) for level in M.TPR_LEVELS]
    assert got == pytest.approx(want, abs=1e-12)
    assert got == sorted(got)  # FPR is non-decreasing in the TPR level
    assert got[0] < got[-1]


# --------------------------------------------------------------------------- accuracies and margins
def test_accuracies_and_margins_match_direct_loops():
    rng = np.random.default_rng(3)
    n, c, neg = 200, 5, 2
    p = random_probs(rng, n, c)
    labels = rng.integers(0, c, n)
    labels[labels == 4] = 3  # class 4 has no samples -> NaN in per-class results
    pred = [int(np.argmax(row)) for row in p]

    assert M.accuracy(p, labels) == pytest.approx(sum(a == b for a, b in zip(pred, labels)) / n)
    bin_ok = [(a == neg) == (b == neg) for a, b in zip(pred, labels)]
    assert M.binary_accuracy(p, labels, neg) == pytest.approx(sum(bin_ok) / n)

    pca = M.per_class_accuracy(p, labels, c)
    pcb = M.per_class_binary_accuracy(p, labels, neg, c)
    for k in range(c):
        members = [i for i in range(n) if labels[i] == k]
        if not members:
            assert math.isnan(pca[k]) and math.isnan(pcb[k])
            continue
        assert pca[k] == pytest.approx(sum(pred[i] == k for i in members) / len(members))
        assert pcb[k] == pytest.approx(sum(bin_ok[i] for i in members) / len(members))
    assert math.isnan(pca[4])

    np.testing.assert_allclose(M.margin(p, labels), direct_margin(p, labels))
    want_bm = [(p[i, neg] - (1 - p[i, neg])) * (1 if labels[i] == neg else -1) for i in range(n)]
    np.testing.assert_allclose(M.binary_margin(p, labels, neg), want_bm)


def test_hand_worked_accuracies_and_margins():
    # classes: 0 = defect A, 1 = good, 2 = defect B
    p = np.array(
        [
            [0.6, 0.3, 0.1],  # label 0: correct; binary correct
            [0.5, 0.2, 0.3],  # label 2: wrong class, but binary correct (defect -> defect)
            [0.2, 0.7, 0.1],  # label 2: wrong, binary wrong (defect predicted good)
            [0.1, 0.8, 0.1],  # label 1: correct
        ]
    )
    labels = np.array([0, 2, 2, 1])
    assert M.accuracy(p, labels) == 0.5
    assert M.binary_accuracy(p, labels, 1) == 0.75
    np.testing.assert_allclose(M.per_class_accuracy(p, labels, 3), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(M.per_class_binary_accuracy(p, labels, 1, 3), [1.0, 1.0, 0.5])
    np.testing.assert_allclose(M.margin(p, labels), [0.3, -0.2, -0.6, 0.7])
    np.testing.assert_allclose(M.binary_margin(p, labels, 1), [0.4, 0.6, -0.4, 0.6])


def test_summarize_keys_and_values():
    rng = np.random.default_rng(5)
    n, c, neg = 400, 4, 1
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[labels]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    p = np.round(p, 2)  # ties in the defect score
    p = p / p.sum(axis=1, keepdims=True)
    out = M.summarize(p, labels, neg)
    assert list(out) == list(M.METRIC_KEYS) + ["accuracy", "binary_accuracy"]
    y = labels != neg
    s = 1.0 - p[:, neg]
    assert out["auc"] == pytest.approx(direct_auc(y, s))
    for level in M.TPR_LEVELS:
        assert out[M.metric_key(level)] == pytest.approx(direct_fpr_at_tpr(y, s, level))
    assert out["accuracy"] == pytest.approx(np.mean(p.argmax(1) == labels))
    assert out["binary_accuracy"] == pytest.approx(np.mean((p.argmax(1) != neg) == y))
    assert all(0.0 <= v <= 1.0 for v in out.values())


# --------------------------------------------------------------------------- validation
def test_roc_needs_both_classes():
    with pytest.raises(ValueError, match="both defect and good"):
        M.roc_auc(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="both defect and good"):
        M.fpr_at_tpr(np.array([0, 0]), np.array([0.1, 0.2]), 1.0)
    p = np.array([[0.2, 0.8], [0.4, 0.6]])
    with pytest.raises(ValueError, match="both defect and good"):
        M.summarize(p, np.array([1, 1]), 1)


def test_rejects_bad_inputs():
    p = np.array([[0.2, 0.8], [0.4, 0.6]])
    with pytest.raises(ValueError, match="sum to 1"):
        M.accuracy(np.array([[0.2, 0.7], [0.4, 0.6]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="not logits"):
        M.accuracy(np.array([[2.0, -1.0], [0.4, 0.6]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        M.accuracy(np.array([0.2, 0.8]), np.array([0]))
    with pytest.raises(ValueError, match="length 2"):
        M.accuracy(p, np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.accuracy(p, np.array([0, 2]))
    with pytest.raises(ValueError, match="integer"):
        M.accuracy(p, np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="negative_index"):
        M.defect_score(p, 2)
    with pytest.raises(ValueError, match="NaN"):
        M.roc_auc(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="same length"):
        M.roc_auc(np.array([0, 1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="0/1"):
        M.roc_auc(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="num_classes"):
        M.per_class_accuracy(p, np.array([0, 1]), 3)


def test_defect_score_keeps_the_order_of_confidently_good_images():
    """Logit gaps 20 and 25 in favour of `good`: 1 - p(good) is 0.0 for both in float32; the sum is not."""
    import torch

    logits = torch.tensor([[0.0, 20.0, 0.0], [0.0, 25.0, 0.0]])
    probs = torch.softmax(logits, dim=1).numpy()
    assert 1.0 - probs[0, 1] == 0.0 and 1.0 - probs[1, 1] == 0.0
    score = M.defect_score(probs, 1)
    assert score[0] > score[1] > 0.0
    np.testing.assert_allclose(score, 2 * np.exp(-np.array([20.0, 25.0])), rtol=1e-4)

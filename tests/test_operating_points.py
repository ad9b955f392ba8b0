"""Operating points chosen on validation and bootstrap intervals, against hand computations."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from nexperia_utils.evaluation import metrics
from nexperia_utils.errors import ConfigError
from nexperia_utils.evaluation.operating_points import (BootstrapConfig, _resample_weights, bootstrap_intervals,
                                             format_interval, rates_at_threshold, review_band_curve,
                                             review_threshold, validation_operating_points)


def test_threshold_at_tpr_with_ties_and_tpr_100() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    s = np.array([0.9, 0.6, 0.6, 0.2, 0.6, 0.3, 0.1, 0.0])
    assert metrics.threshold_at_tpr(y, s, 1.0) == 0.2          # the lowest defect score
    assert metrics.threshold_at_tpr(y, s, 0.5) == 0.6          # the tie at 0.6 is one point: TPR 3/4
    assert metrics.threshold_at_tpr(y, s, 0.25) == 0.9
    assert rates_at_threshold(y, s, 0.6) == (0.75, 0.25)       # the tied good image is rejected too
    assert rates_at_threshold(y, s, 0.2) == (1.0, 0.5)
    # the same ROC walk as fpr_at_tpr
    for level in (0.25, 0.5, 0.75, 1.0):
        assert rates_at_threshold(y, s, metrics.threshold_at_tpr(y, s, level))[1] == metrics.fpr_at_tpr(y, s, level)


def test_validation_threshold_applied_to_test() -> None:
    y_val = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    s_val = np.array([0.9, 0.8, 0.7, 0.5, 0.6, 0.3, 0.2, 0.1])
    y_test = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    s_test = np.array([0.95, 0.7, 0.55, 0.45, 0.3, 0.52, 0.5, 0.4, 0.2, 0.1])
    table = validation_operating_points(y_val, s_val, y_test, s_test, levels=(0.75, 1.0),
                                        config=BootstrapConfig(n_boot=200))
    first, full = table.iloc[0], table.iloc[1]
    assert first.threshold == 0.7 and full.threshold == 0.5     # chosen on validation
    assert (first.val_tpr, first.val_fpr) == (0.75, 0.0) and (full.val_tpr, full.val_fpr) == (1.0, 0.25)
    # applied to test: at 0.5 two defects escape (0.45, 0.3) and two good images are rejected (0.52, 0.5)
    assert (full.test_tpr, full.test_fpr, full.missed_defects, full.false_alarms) == (0.6, 0.4, 2, 2)
    assert (first.test_tpr, first.test_fpr) == (0.4, 0.0)
    # the report's reading on the test ROC itself: TPR = 100 % needs the threshold 0.3 -> 3 of 5 good
    assert full.report_fpr == pytest.approx(0.6) and full.report_fpr == metrics.fpr_at_tpr(y_test, s_test, 1.0)
    assert full.test_tpr_low <= full.test_tpr <= full.test_tpr_high
    assert full.test_fpr_low <= full.test_fpr <= full.test_fpr_high
    assert list(table[["n_val_defects", "n_test_defects", "n_test_good"]].iloc[0]) == [4, 5, 5]


def test_bootstrap_auc_and_rates_equal_a_direct_computation_on_the_resamples() -> None:
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(15, bool), np.zeros(25, bool)]
    s = np.round(np.r_[rng.normal(1, 1, 15), rng.normal(0, 1, 25)], 1)  # rounded: ties occur
    config = BootstrapConfig(n_boot=20, seed=5)
    out = bootstrap_intervals(y, s, thresholds=[0.0, 0.5], config=config)
    # replay the resampling weights with the same seed and recompute each resample by brute force
    replay = np.random.default_rng(5)
    w_pos, w_neg = _resample_weights(15, 20, replay), _resample_weights(25, 20, replay)
    for b in range(20):
        pos = np.repeat(s[y], w_pos[b].astype(int))
        neg = np.repeat(s[~y], w_neg[b].astype(int))
        yy = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
        assert out["auc"][b] == pytest.approx(metrics.roc_auc(yy, np.r_[pos, neg]))
        assert out["tpr"][b, 1] == pytest.approx((pos >= 0.5).mean())
        assert out["fpr"][b, 0] == pytest.approx((neg >= 0.0).mean())


def test_bootstrap_interval_covers_the_known_auc_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(400, bool), np.zeros(400, bool)]
    s = np.r_[rng.normal(1, 1, 400), rng.normal(0, 1, 400)]
    true_auc = 0.5 * (1 + math.erf(1 / 2))  # P(N(1,1) > N(0,1)) = Phi(1 / sqrt 2)
    out = bootstrap_intervals(y, s, config=BootstrapConfig(n_boot=1000, seed=1))
    low, high = out["auc_interval"]
    assert low < true_auc < high and high - low < 0.1
    assert low < metrics.roc_auc(y, s) < high
    again = bootstrap_intervals(y, s, config=BootstrapConfig(n_boot=1000, seed=1))
    other = bootstrap_intervals(y, s, config=BootstrapConfig(n_boot=1000, seed=2))
    assert np.array_equal(again["auc"], out["auc"]) and not np.array_equal(other["auc"], out["auc"])


def test_bad_settings_and_formatting() -> None:
    y, s = np.array([1, 0], bool), np.array([0.9, 0.1])
    with pytest.raises(ConfigError, match="n_boot"):
        bootstrap_intervals(y, s, config=BootstrapConfig(n_boot=1))
    with pytest.raises(ValueError, match="both defect and good"):
        bootstrap_intervals(np.array([1, 1], bool), s)
    assert format_interval(0.1234, 0.1, 0.15) == "12.34 [10.00, 15.00]"


def test_review_band_by_hand() -> None:
    y_val = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    s_val = np.array([0.9, 0.8, 0.85, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    assert review_threshold(s_val, 0.8, 0.0) == 0.8
    assert review_threshold(s_val, 0.8, 0.2) == 0.6      # the 2 validation images just below 0.8: 0.7, 0.6
    assert review_threshold(s_val, 0.15, 0.5) == 0.1     # capped: one image is below
    y_test = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    s_test = np.array([0.95, 0.75, 0.55, 0.65, 0.3, 0.1])
    curve = review_band_curve(y_val, s_val, y_test, s_test, target_tpr=1.0, bands=(0.0, 0.2, 0.4))
    # reject at 0.8 (the lowest validation defect): test defects 0.75 and 0.55 pass
    assert list(curve["test_missed_at_threshold"]) == [2, 2, 2]
    assert list(curve["caught_in_review"]) == [0, 1, 2]  # band 0.2 -> [0.6, 0.8) holds 0.75; 0.4 -> [0.4, 0.8) both
    assert list(curve["still_missed"]) == [2, 1, 0]
    assert curve["test_review_share"].tolist() == pytest.approx([0.0, 2 / 6, 3 / 6])
    with pytest.raises(ConfigError, match="review band"):
        review_threshold(s_val, 0.8, 1.0)


def test_review_band_plot_has_integer_ticks_when_nothing_is_missed() -> None:
    from nexperia_utils.evaluation.operating_points import plot_review_band

    curve = pd.DataFrame({"band": [0.0, 0.01, 0.02], "test_review_share": [0.0, 0.01, 0.02],
                          "caught_in_review": [0, 0, 0], "still_missed": [0, 0, 0]})
    fig = plot_review_band(curve)
    ticks = fig.axes[0].get_yticks()  # a count of defects: whole numbers, even when all counts are 0
    assert len(ticks) >= 2 and np.all(ticks == np.round(ticks))

"""The pixel logistic-regression reference against a direct scikit-learn computation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.preprocessing import StandardScaler

from nexperia_utils.evaluation import metrics
from nexperia_utils.data.dataset import SplitData
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.evaluation.pixel_reference import (
    REFERENCE_NAME, fit_pixel_reference, pixel_features, pixel_reference_results, reference_note,
    with_pixel_reference,
)

NEG = 1  # class 1 is "good" here; 0 and 2 are defects


def _part(name: str, n: int, seed: int) -> SplitData:
    """Grey 12 x 14 images; defects carry a faint bright spot near the centre, good ones do not."""
    rng = np.random.default_rng(seed)
    labels = rng.choice([0, 1, 2], size=n, p=[0.2, 0.6, 0.2])
    images = rng.integers(60, 120, size=(n, 12, 14)).astype(np.uint8)
    spot = labels != NEG
    images[spot, 5:7, 6:8] += rng.integers(10, 40, size=(int(spot.sum()), 1, 1)).astype(np.uint8)
    frame = pd.DataFrame({"image_id": [f"{name}{i}" for i in range(n)], "label": labels})
    return SplitData(name, frame, labels, images)


def test_pixel_features_are_the_centre_crop_scaled_to_unit():
    part = _part("x", 4, 0)
    feats = pixel_features(part, 10)
    expected = part.images[:, 1:11, 2:12].reshape(4, -1) / 255.0
    np.testing.assert_allclose(feats, expected, rtol=0, atol=1e-7)
    with pytest.raises(ConfigError, match="larger than the decoded images"):
        pixel_features(part, 13)


def test_reference_equals_a_direct_sklearn_fit():
    train, val, test = _part("train", 300, 1), _part("val", 120, 2), _part("test", 150, 3)
    cs = (1e-3, 1e-1)
    ref = fit_pixel_reference(train, val, NEG, 10, Cs=cs)

    def direct(c: float):
        x = pixel_features(train, 10)
        scaler = StandardScaler().fit(x)
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(scaler.transform(x), train.labels != NEG)
        return lambda part: lr.predict_proba(scaler.transform(pixel_features(part, 10)))[:, 1]

    val_aucs = {c: roc_auc_score(val.labels != NEG, direct(c)(val)) for c in cs}
    best = max(cs, key=lambda c: val_aucs[c])
    assert ref.C == best
    assert ref.val_aucs == pytest.approx(val_aucs)
    row = pixel_reference_results(train, val, test, NEG, 10, Cs=cs).iloc[0]
    score = direct(best)(test)
    y = test.labels != NEG
    assert row["model"] == REFERENCE_NAME
    assert row["auc"] == pytest.approx(roc_auc_score(y, score))
    assert row["auc"] > 0.8  # the spot is learnable by a linear model
    fpr, tpr, _ = roc_curve(y, score)
    assert row["fpr@100"] == pytest.approx(fpr[np.argmax(tpr >= 1.0)])
    assert row["fpr@99.1"] == pytest.approx(metrics.fpr_at_tpr(y, score, 0.991))


def test_reference_needs_both_classes_and_positive_cs():
    train, val = _part("train", 50, 4), _part("val", 30, 5)
    only_good = SplitData("val", val.frame, np.full(len(val), NEG), val.images)
    with pytest.raises(DataError, match="both good and defect"):
        fit_pixel_reference(train, only_good, NEG, 10)
    with pytest.raises(ConfigError, match="positive numbers"):
        fit_pixel_reference(train, val, NEG, 10, Cs=(0.0,))


def test_with_pixel_reference_appends_one_named_row_and_its_caption_note():
    train, val, test = _part("train", 200, 6), _part("val", 80, 7), _part("test", 90, 8)
    results = pd.DataFrame({"model": ["ResNet18", "ResNet18"], "loss_label": ["Cross Entropy"] * 2,
                            "auc": [0.9, 0.8]})
    out = with_pixel_reference(results, train, val, test, NEG, 10, label_column="loss_label", Cs=(1e-2,))
    assert len(out) == 3 and out.iloc[:2]["auc"].tolist() == [0.9, 0.8]
    last = out.iloc[2]
    assert last["model"] == REFERENCE_NAME and last["loss_label"] == REFERENCE_NAME
    assert last["auc"] == pytest.approx(pixel_reference_results(train, val, test, NEG, 10, Cs=(1e-2,))["auc"].iloc[0])
    assert reference_note(out).startswith(f"{REFERENCE_NAME}: logistic regression") and "C=0.01 chosen" in reference_note(out)
    with pytest.raises(DataError, match="no column 'arch_label'"):
        with_pixel_reference(results, train, val, test, NEG, 10, label_column="arch_label")
    with pytest.raises(DataError, match="expected one"):
        reference_note(results)

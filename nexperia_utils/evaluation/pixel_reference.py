"""The trivial reference of every learned table: logistic regression on the raw pixels.

A deep model's number means something only beside what a linear model on the same pixels gets.
:func:`fit_pixel_reference` fits scikit-learn's ``StandardScaler -> LogisticRegression`` (defect vs
good, ``class_weight="balanced"``) on the centre crops of the training part at the model's input size,
choosing the regularisation ``C`` by validation AUC; :func:`pixel_reference_results` scores the
chosen model on a part and returns a row shaped like :func:`nexperia_utils.evaluation.predict.evaluate_run`'s,
so the tables show it as one more column (a single evaluation: mean without std);
:func:`with_pixel_reference` appends that row to a results frame under the table's column name, and
:func:`reference_note` is the sentence every caption gives it.

Nothing here looks at the test part before the model is chosen; the test part is scored once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from nexperia_utils.evaluation import metrics
from nexperia_utils.data.dataset import SplitData
from nexperia_utils.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: Name of the reference in tables (the ``model`` column).
REFERENCE_NAME = "Pixel LogReg (reference)"

#: Regularisation strengths tried; the one with the best validation AUC is kept.
DEFAULT_CS: tuple[float, ...] = (1e-4, 1e-3, 1e-2)


@dataclass
class PixelReference:
    """A fitted pixel logistic regression and how it was chosen."""

    pipeline: Pipeline
    image_size: int
    C: float
    val_auc: float
    val_aucs: dict[float, float]

    def defect_score(self, part: SplitData) -> np.ndarray:
        """Probability of a defect for every image of ``part`` (at the fitted input size)."""
        return self.pipeline.predict_proba(pixel_features(part, self.image_size))[:, 1]


def pixel_features(part: SplitData, image_size: int) -> np.ndarray:
    """Centre crops ``image_size x image_size`` of the decoded images, flattened, scaled to [0, 1].

    The crop is the one the models see at evaluation (:func:`nexperia_utils.data.transforms.eval_transform`
    with ``crop="center"``): the decoded images are resized so the shorter side is
    ``resize_size_for(image_size)``, and the crop is taken from their centre.
    """
    images = np.asarray(part.images)
    if images.ndim != 3:
        raise DataError(f"part {part.name!r}: expected decoded images of shape (N, H, W), got {images.shape}")
    n, h, w = images.shape
    if image_size > min(h, w):
        raise ConfigError(f"image_size={image_size} is larger than the decoded images ({h} x {w}) of part "
                          f"{part.name!r}; decode the part at this size first (Experiment.part(name, image_size))")
    top, left = int(round((h - image_size) / 2.0)), int(round((w - image_size) / 2.0))
    crop = images[:, top:top + image_size, left:left + image_size]
    return crop.reshape(n, -1).astype(np.float32) / np.float32(255.0)


def _binary_target(part: SplitData, negative_index: int) -> np.ndarray:
    y = metrics.is_defect(part.labels, negative_index)
    if y.all() or not y.any():
        raise DataError(f"part {part.name!r} needs both good and defect images to fit or score the pixel reference")
    return y


def fit_pixel_reference(train: SplitData, val: SplitData, negative_index: int, image_size: int,
                        Cs: Sequence[float] = DEFAULT_CS, max_iter: int = 2000) -> PixelReference:
    """Fit the reference on ``train`` for each ``C`` and keep the one with the best AUC on ``val``."""
    if not Cs or any(not (isinstance(c, (int, float)) and c > 0) for c in Cs):
        raise ConfigError(f"Cs must be a non-empty list of positive numbers, got {list(Cs)!r}")
    x_train, y_train = pixel_features(train, image_size), _binary_target(train, negative_index)
    x_val, y_val = pixel_features(val, image_size), _binary_target(val, negative_index)
    best: tuple[float, float, Pipeline] | None = None
    aucs: dict[float, float] = {}
    for c in Cs:
        pipeline = make_pipeline(StandardScaler(),
                                 LogisticRegression(C=float(c), class_weight="balanced", max_iter=max_iter))
        pipeline.fit(x_train, y_train)
        aucs[float(c)] = metrics.roc_auc(y_val, pipeline.predict_proba(x_val)[:, 1])
        if best is None or aucs[float(c)] > best[0]:
            best = (aucs[float(c)], float(c), pipeline)
    assert best is not None
    logger.info("pixel logistic regression at %d px: validation AUC %s; chose C=%g", image_size,
                {c: round(a, 4) for c, a in aucs.items()}, best[1])
    return PixelReference(best[2], image_size, best[1], best[0], aucs)


def reference_row(reference: PixelReference, part: SplitData, negative_index: int) -> dict:
    """The reference's metrics on ``part`` as one evaluation row (the columns of ``evaluate_run``)."""
    y = _binary_target(part, negative_index)
    score = reference.defect_score(part)
    row = {"auc": metrics.roc_auc(y, score)}
    for level in metrics.TPR_LEVELS:
        row[metrics.metric_key(level)] = metrics.fpr_at_tpr(y, score, level)
    row["binary_accuracy"] = float(np.mean((score >= 0.5) == y))
    return {"model": REFERENCE_NAME, "arch": "pixel_logreg", "loss": "logistic", "run": "pixel-logreg",
            "crop": "center", "checkpoint": f"C={reference.C:g}", "epoch": 0, "val_auc": reference.val_auc, **row}


def pixel_reference_results(train: SplitData, val: SplitData, part: SplitData, negative_index: int,
                            image_size: int, Cs: Sequence[float] = DEFAULT_CS) -> pd.DataFrame:
    """Fit the reference (C chosen on ``val``) and score it on ``part``: a one-row results frame."""
    reference = fit_pixel_reference(train, val, negative_index, image_size, Cs)
    return pd.DataFrame([reference_row(reference, part, negative_index)])


def with_pixel_reference(results: pd.DataFrame, train: SplitData, val: SplitData, part: SplitData,
                         negative_index: int, image_size: int, label_column: str = "model",
                         Cs: Sequence[float] = DEFAULT_CS) -> pd.DataFrame:
    """``results`` with the reference's row on ``part`` appended, named in ``label_column`` too.

    ``label_column`` is the column a table groups by (``model`` for Tables 2 and 3, ``loss_label``
    for Table 4), so the reference appears as one more column of that table.
    """
    if label_column not in results.columns:
        raise DataError(f"results have no column {label_column!r} to name the reference in; "
                        f"columns: {list(results.columns)}")
    reference = pixel_reference_results(train, val, part, negative_index, image_size, Cs)
    reference[label_column] = REFERENCE_NAME
    return pd.concat([results, reference], ignore_index=True)


def reference_note(results: pd.DataFrame) -> str:
    """The caption sentence for the reference row of ``results`` (the C it was given, how it was scored)."""
    rows = results[results["model"] == REFERENCE_NAME]
    if len(rows) != 1:
        raise DataError(f"expected one {REFERENCE_NAME!r} row in the results, found {len(rows)}")
    return (f"{REFERENCE_NAME}: logistic regression on the raw pixels of the same centre crops "
            f"({rows['checkpoint'].iloc[0]} chosen on validation), a single evaluation.")

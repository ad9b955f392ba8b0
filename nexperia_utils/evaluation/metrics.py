"""Metrics of the report (section 3.8): defect score, ROC AUC, FPR at TPR >= t, accuracies, margins.

Defect is the positive class. The defect score of an image is ``1 - p(good)``, i.e. the sum of the
defect-class softmax probabilities. ``FPR at TPR >= t`` is the false positive rate of the first
operating point of the ROC curve (thresholds in decreasing order, tied scores forming one point,
as :func:`sklearn.metrics.roc_curve` builds it) whose true positive rate reaches ``t``.

All functions take NumPy arrays: ``probs`` of shape ``(N, C)`` (rows are probability vectors),
``labels`` of shape ``(N,)`` with integer class indices. The index of the negative ("good") class
is always passed explicitly; it is looked up by name by the caller, never assumed.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from nexperia_utils.validation import check_int, check_number

__all__ = [
    "TPR_LEVELS",
    "METRIC_KEYS",
    "metric_key",
    "defect_score",
    "is_defect",
    "roc_auc",
    "fpr_at_tpr",
    "threshold_at_tpr",
    "accuracy",
    "binary_accuracy",
    "per_class_accuracy",
    "per_class_binary_accuracy",
    "margin",
    "binary_margin",
    "summarize",
]

TPR_LEVELS: tuple[float, ...] = (0.991, 0.993, 0.995, 0.997, 1.0)
"""TPR levels of the report's tables (99.1 %, ..., 100 %; the report's text misprints 99.91 %)."""

_PROB_SUM_ATOL = 1e-3


def metric_key(tpr_level: float) -> str:
    """Name of the FPR metric at a TPR level: ``0.991 -> "fpr@99.1"``, ``1.0 -> "fpr@100"``."""
    _check_level(tpr_level)
    percent = round(float(tpr_level) * 100.0, 6)
    text = f"{percent:.6f}".rstrip("0").rstrip(".")
    return f"fpr@{text}"


METRIC_KEYS: tuple[str, ...] = ("auc", "fpr@99.1", "fpr@99.3", "fpr@99.5", "fpr@99.7", "fpr@100")
"""Keys of :func:`summarize`'s ROC metrics: ``"auc"`` then ``metric_key(level)`` for each of TPR_LEVELS."""


# --------------------------------------------------------------------------- validation helpers
def _check_level(tpr_level: float) -> None:
    check_number("TPR level (e.g. 0.991 for 99.1 %)", tpr_level, 0, 1, include_low=False, error=ValueError)


def _as_probs(probs: np.ndarray) -> np.ndarray:
    """Validate a probability matrix ``(N, C)`` and return it as float64."""
    arr = np.asarray(probs)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] < 2:
        raise ValueError(
            f"probs must be a 2-D array (samples, classes) with at least one row and two columns, "
            f"got shape {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"probs must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError("probs contains NaN or infinite values; check the model outputs")
    if arr.min() < -_PROB_SUM_ATOL or arr.max() > 1.0 + _PROB_SUM_ATOL:
        raise ValueError(
            f"probs must lie in [0, 1] (found values in [{arr.min():.4g}, {arr.max():.4g}]); "
            "pass softmax probabilities, not logits"
        )
    sums = arr.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > _PROB_SUM_ATOL)
    if bad.size:
        raise ValueError(
            f"every row of probs must sum to 1 (tolerance {_PROB_SUM_ATOL}); row {int(bad[0])} sums to "
            f"{sums[bad[0]]:.6g} ({bad.size} bad rows); pass softmax probabilities, not logits"
        )
    return arr


def _as_labels(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """Validate integer labels of length ``n`` in ``[0, num_classes)``."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"labels must be a 1-D array of length {n} (one per row of probs), got shape {arr.shape}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or _is_integral_float(arr)):
        raise ValueError(f"labels must be integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if n and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}] for {num_classes} classes, "
            f"found values in [{arr.min()}, {arr.max()}]"
        )
    return arr


def _is_integral_float(arr: np.ndarray) -> bool:
    return (
        np.issubdtype(arr.dtype, np.floating)
        and bool(np.all(np.isfinite(arr)))
        and bool(np.all(arr == np.round(arr)))
    )


def _check_index(index: int, num_classes: int, name: str = "negative_index") -> int:
    return check_int(f"{name} (a class index)", index, 0, num_classes - 1, error=ValueError)


def _check_num_classes(num_classes: int) -> int:
    return check_int("num_classes", num_classes, 1, error=ValueError)


def _as_binary(y_defect: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate binary targets (bool or 0/1) and finite scores of the same length, both classes present."""
    y = np.asarray(y_defect)
    s = np.asarray(score)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise ValueError(
            f"y_defect and score must be 1-D arrays of the same length, got shapes {y.shape} and {s.shape}"
        )
    if y.dtype != bool:
        if not np.issubdtype(y.dtype, np.number) or not np.all(np.isin(y, (0, 1))):
            raise ValueError("y_defect must be boolean or 0/1 (1 = defect, the positive class)")
        y = y.astype(bool)
    if not np.issubdtype(s.dtype, np.number) or s.dtype == bool:
        raise ValueError(f"score must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if not np.all(np.isfinite(s)):
        raise ValueError("score contains NaN or infinite values; check the model outputs")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(
            f"ROC metrics need both defect and good samples; got {n_pos} defect and {y.size - n_pos} good. "
            "Evaluate on a set that contains both classes."
        )
    return y, s


# --------------------------------------------------------------------------- scores and ROC
def defect_score(probs: np.ndarray, negative_index: int) -> np.ndarray:
    """Defect score per row: the sum of the defect-class probabilities (= ``1 - p(negative)``).

    Summed rather than computed as ``1 - p(negative)``: for a confidently good image p(negative)
    rounds to 1.0 in float32 and every such image would tie at score 0, where FPR at TPR = 100 % is
    decided; the small defect probabilities keep their order.
    """
    p = _as_probs(probs)
    neg = _check_index(negative_index, p.shape[1])
    return np.delete(p, neg, axis=1).sum(axis=1)


def is_defect(labels: np.ndarray, negative_index: int) -> np.ndarray:
    """Boolean array: ``True`` where the label is a defect class (anything but the negative class)."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    integral = np.issubdtype(arr.dtype, np.integer) or _is_integral_float(arr)
    if arr.dtype == bool or (arr.size and not integral):
        raise ValueError(f"labels must be integer class indices, got dtype {arr.dtype}")
    check_int("negative_index (a class index)", negative_index, 0, error=ValueError)
    if arr.size and arr.min() < 0:
        raise ValueError(f"labels must be non-negative class indices, found {arr.min()}")
    return arr.astype(np.int64) != int(negative_index)


def roc_auc(y_defect: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` against ``y_defect`` (defect positive), via :func:`sklearn.metrics.roc_auc_score`."""
    y, s = _as_binary(y_defect, score)
    return float(roc_auc_score(y, s))


def fpr_at_tpr(y_defect: np.ndarray, score: np.ndarray, tpr_level: float) -> float:
    """FPR of the first ROC operating point (decreasing threshold) whose TPR is >= ``tpr_level``.

    The ROC curve is :func:`sklearn.metrics.roc_curve` with ``drop_intermediate=False``: one operating
    point per distinct score, so samples with tied scores are accepted or rejected together. The
    comparison ``TPR >= level`` is exact (``0.991`` is reached by 991 of 1000 defects).
    """
    _check_level(tpr_level)
    y, s = _as_binary(y_defect, score)
    return _fprs_at_levels(y, s, (tpr_level,))[0]


def _fprs_at_levels(y: np.ndarray, s: np.ndarray, levels: tuple[float, ...]) -> list[float]:
    """FPR at each TPR level from one ROC curve (inputs already validated)."""
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    out = []
    for level in levels:
        # tpr[-1] == 1.0 exactly, so a level in (0, 1] is always reached.
        first = int(np.flatnonzero(tpr >= float(level))[0])
        out.append(float(fpr[first]))
    return out


def threshold_at_tpr(y_defect: np.ndarray, score: np.ndarray, tpr_level: float) -> float:
    """Defect-score threshold of the operating point :func:`fpr_at_tpr` reads (the same ROC walk).

    Images with ``score >= threshold`` are rejected; it is the highest threshold whose TPR reaches
    ``tpr_level`` (at ``tpr_level = 1`` the lowest defect score).
    """
    _check_level(tpr_level)
    y, s = _as_binary(y_defect, score)
    _, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    first = int(np.flatnonzero(tpr >= float(tpr_level))[0])
    return float(thresholds[first])


# --------------------------------------------------------------------------- accuracies
def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax equals the label (ties go to the lower class index)."""
    p = _as_probs(probs)
    y = _as_labels(labels, p.shape[0], p.shape[1])
    return float(np.mean(p.argmax(axis=1) == y))


def binary_accuracy(probs: np.ndarray, labels: np.ndarray, negative_index: int) -> float:
    """Fraction of rows whose argmax class, mapped to good/defect, matches the true good/defect."""
    p = _as_probs(probs)
    neg = _check_index(negative_index, p.shape[1])
    y = _as_labels(labels, p.shape[0], p.shape[1])
    return float(np.mean((p.argmax(axis=1) != neg) == (y != neg)))


def per_class_accuracy(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy (argmax == label) among the samples of each labelled class; NaN for a class without samples."""
    p = _as_probs(probs)
    c = _check_num_classes(num_classes)
    if p.shape[1] != c:
        raise ValueError(f"probs has {p.shape[1]} columns but num_classes is {c}")
    y = _as_labels(labels, p.shape[0], c)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    return _mean_by_class(correct, y, c)


def per_class_binary_accuracy(
    probs: np.ndarray, labels: np.ndarray, negative_index: int, num_classes: int
) -> np.ndarray:
    """Binary accuracy (argmax mapped to good/defect) among the samples of each labelled class; NaN if none."""
    p = _as_probs(probs)
    c = _check_num_classes(num_classes)
    if p.shape[1] != c:
        raise ValueError(f"probs has {p.shape[1]} columns but num_classes is {c}")
    neg = _check_index(negative_index, c)
    y = _as_labels(labels, p.shape[0], c)
    correct = ((p.argmax(axis=1) != neg) == (y != neg)).astype(np.float64)
    return _mean_by_class(correct, y, c)


def _mean_by_class(values: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    sums = np.bincount(labels, weights=values, minlength=num_classes)
    out = np.full(num_classes, np.nan)
    has = counts > 0
    out[has] = sums[has] / counts[has]
    return out


# --------------------------------------------------------------------------- margins
def margin(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per sample: probability of the labelled class minus the largest probability of the other classes."""
    p = _as_probs(probs)
    y = _as_labels(labels, p.shape[0], p.shape[1])
    rows = np.arange(p.shape[0])
    own = p[rows, y]
    others = p.copy()
    others[rows, y] = -np.inf
    return own - others.max(axis=1)


def binary_margin(probs: np.ndarray, labels: np.ndarray, negative_index: int) -> np.ndarray:
    """Per sample: ``(2 p(good) - 1) * (+1 if labelled good else -1)`` (= p(true side) - p(other side))."""
    p = _as_probs(probs)
    neg = _check_index(negative_index, p.shape[1])
    y = _as_labels(labels, p.shape[0], p.shape[1])
    sign = np.where(y == neg, 1.0, -1.0)
    return (2.0 * p[:, neg] - 1.0) * sign


# --------------------------------------------------------------------------- summary
def summarize(probs: np.ndarray, labels: np.ndarray, negative_index: int) -> dict[str, float]:
    """All headline metrics as fractions in [0, 1].

    Keys: :data:`METRIC_KEYS` (AUC of the defect score and FPR at each level of :data:`TPR_LEVELS`),
    then ``"accuracy"`` (10-class) and ``"binary_accuracy"``.
    """
    p = _as_probs(probs)
    neg = _check_index(negative_index, p.shape[1])
    y = _as_labels(labels, p.shape[0], p.shape[1])
    score = 1.0 - p[:, neg]
    positive = y != neg
    positive, score = _as_binary(positive, score)
    out: dict[str, float] = {"auc": float(roc_auc_score(positive, score))}
    for level, fpr in zip(TPR_LEVELS, _fprs_at_levels(positive, score, TPR_LEVELS)):
        out[metric_key(level)] = fpr
    out["accuracy"] = accuracy(p, y)
    out["binary_accuracy"] = binary_accuracy(p, y, neg)
    return out

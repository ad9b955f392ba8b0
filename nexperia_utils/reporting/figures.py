"""Figures of the report: ROC curves, training curves, per-class curves, crop bars; one figure helper.

Training histories are DataFrames with one row per epoch: ``epoch, lr, time_s, train_loss,
train_acc, train_binary_acc, val_loss, val_acc, val_binary_acc, val_auc, val_fpr@99.1, ...``,
per-class ``val_acc/<class>`` etc., and possibly ``test_*`` columns. Accuracies, AUC and FPR are
fractions; figures show them in percent.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot state, nothing shown):
:func:`new_figure` is the one way the package makes a figure, notebooks display the returned figure
and :func:`save_figure` writes it as PNG atomically.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from nexperia_utils.data.dataset import SplitData
from nexperia_utils.errors import DataError
from nexperia_utils.evaluation.predict import best_checkpoint_predictions
from nexperia_utils.io import atomic_save_figure
from nexperia_utils.reporting.published import ROW_KEYS, ROW_LABELS
from nexperia_utils.reporting.tables import CROP_LABELS, check_name, order_rank, summary_values

log = logging.getLogger(__name__)

#: TPR thresholds (percent) marked in the ROC inset, matching the FPR rows of the tables.
_TPR_MARKS_PCT: tuple[float, ...] = (99.1, 99.3, 99.5, 99.7, 100.0)


# --------------------------------------------------------------------------------------------
# Figures: helpers
# --------------------------------------------------------------------------------------------
def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure not registered with pyplot (so notebooks show it once, when returned)."""
    return Figure(figsize=figsize, layout="constrained")


def _palette(n: int) -> list:
    return sns.color_palette("tab10" if n <= 10 else "husl", n)


def _metric_key(column: str) -> str:
    """``"val_fpr@100"`` -> ``"fpr@100"``; ``"val_acc/good"`` -> ``"acc"``."""
    base = column.split("/", 1)[0]
    for prefix in ("train_", "val_", "test_"):
        if base.startswith(prefix):
            return base[len(prefix):]
    return base


def _pretty_metric(column: str) -> str:
    """``"val_binary_acc"`` -> ``"validation binary accuracy"`` (for titles and legends)."""
    base = column.split("/", 1)[0]
    split, _, key = base.partition("_")
    splits = {"train": "train", "val": "validation", "test": "test"}
    if split not in splits:
        split, key = "", base
    names = {"acc": "accuracy", "binary_acc": "binary accuracy", "loss": "loss", "binary_loss": "binary loss",
             "auc": "AUC"}
    name = names.get(key, ROW_LABELS.get(key, key))
    return f"{splits[split]} {name}" if split else name


def _is_loss(column: str) -> bool:
    return "loss" in _metric_key(column)


def _axis_label(column: str) -> str:
    key = _metric_key(column)
    if key in ROW_LABELS:
        return f"{ROW_LABELS[key]} (%)"
    pretty = {"acc": "accuracy (%)", "binary_acc": "binary accuracy (%)", "loss": "loss",
              "binary_loss": "binary loss"}
    return pretty.get(key, key if _is_loss(column) else f"{key} (%)")


def _as_percent(column: str, values: pd.Series, where: str) -> np.ndarray:
    """Fractions -> percent for rate columns (losses unchanged); refuse values already in percent."""
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    if _is_loss(column):
        return array
    finite = array[np.isfinite(array)]
    if finite.size and (finite.min() < -1e-9 or finite.max() > 1 + 1e-9):
        raise DataError(
            f"{where}: column {column!r} has values outside [0, 1] (max {finite.max():g}); histories must "
            "store accuracies, AUC and FPR as fractions."
        )
    return array * 100.0


def _check_history(history: pd.DataFrame, where: str) -> None:
    if not isinstance(history, pd.DataFrame):
        raise DataError(f"{where}: a history must be a DataFrame, got {type(history).__name__}.")
    if "epoch" not in history.columns:
        raise DataError(f"{where}: the history has no 'epoch' column; columns: {list(history.columns)}.")
    if history.empty:
        raise DataError(f"{where}: the history has no rows (no epoch finished yet).")


def _check_histories(histories: Mapping[str, pd.DataFrame], where: str) -> None:
    if not isinstance(histories, Mapping) or not histories:
        raise DataError(f"{where}: pass a non-empty dict run label -> history DataFrame.")
    for label, history in histories.items():
        _check_history(history, f"{where}, run {label!r}")


def _linestyle(column: str) -> str:
    if column.startswith("test_"):
        return ":"
    if column.startswith("train_"):
        return "--"
    return "-"


def _empty_panel(ax, text: str = "not recorded") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def _roc_inputs(label: str, y_defect, score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_defect)
    s = np.asarray(score, dtype=float)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise DataError(f"plot_roc: curve {label!r} needs two 1-D arrays of equal length, got {y.shape} and {s.shape}.")
    if not np.isin(y, (0, 1, True, False)).all():
        raise DataError(f"plot_roc: curve {label!r} labels must be 0/1 (1 = defect), got {np.unique(y)[:5]}.")
    y = y.astype(int)
    if y.min() == y.max():
        raise DataError(f"plot_roc: curve {label!r} has only one class; a ROC curve needs good and defect images.")
    if not np.isfinite(s).all():
        raise DataError(f"plot_roc: curve {label!r} has non-finite scores.")
    return y, s


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str = "") -> Figure:
    """ROC curves (defect = positive) beside a panel zoomed on TPR 99-100 %.

    Args:
        curves: label -> ``(y_defect, score)``, ``y_defect`` 0/1 and ``score`` the defect score.
        title: figure title.

    The legend gives each curve's AUC. The inset's x range is fitted to the FPRs at which the
    curves cross TPR 99 % and reach TPR 100 %; dotted lines mark the tables' TPR thresholds
    (99.1, 99.3, 99.5, 99.7, 100 %). ``fig.axes`` holds the full curve and the zoom, in this
    order; side by side, so the zoom never hides a curve (a near-chance model's curve runs
    through the lower right, where an inset would sit).
    """
    if not isinstance(curves, Mapping) or not curves:
        raise DataError("plot_roc: pass a non-empty dict label -> (y_defect, score).")
    fig = new_figure((12.0, 5.5))
    ax, inset = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1.0]})
    colors = _palette(len(curves))
    lo, hi = math.inf, -math.inf
    for (label, (y_defect, score)), color in zip(curves.items(), colors):
        y, s = _roc_inputs(label, y_defect, score)
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        auc = roc_auc_score(y, s)
        fpr_pct, tpr_pct = fpr * 100.0, tpr * 100.0
        ax.plot(fpr_pct, tpr_pct, color=color, lw=1.6, label=f"{label} (AUC {auc * 100:.2f} %)")
        inset.plot(fpr_pct, tpr_pct, color=color, lw=1.6)
        first_99 = int(np.argmax(tpr >= 0.99))
        lo = min(lo, fpr_pct[max(first_99 - 1, 0)])
        hi = max(hi, fpr_pct[int(np.argmax(tpr >= 1.0))])
    ax.plot([0, 100], [0, 100], color="0.6", lw=1, ls="--", label="chance")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100.5)
    ax.set_xlabel("false positive rate: good images flagged (%)")
    ax.set_ylabel("true positive rate: defects found (%)")
    ax.grid(alpha=0.3)
    for mark in _TPR_MARKS_PCT:
        inset.axhline(mark, color="0.55", lw=0.8, ls=":")
    pad = max(0.05 * (hi - lo), 0.25)
    inset.set_xlim(max(lo - pad, 0.0), min(hi + pad, 100.0))
    inset.set_ylim(98.95, 100.05)
    inset.set_yticks([99.0, *_TPR_MARKS_PCT])
    inset.set_title("zoom on TPR 99-100 %; dotted: the tables' TPR thresholds", fontsize=10)
    inset.set_xlabel("false positive rate (%)")
    inset.set_ylabel("true positive rate (%)")
    inset.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=9 if len(curves) <= 6 else 7, framealpha=0.95)
    ax.set_title("full curve")
    fig.suptitle(title or "ROC curve (defect = positive)")
    return fig


def plot_best_checkpoint_roc(results: pd.DataFrame, part: SplitData, runs_root: Path, negative_class: str,
                             title: str = "") -> Figure:
    """:func:`plot_roc` of each model's best checkpoint (highest validation AUC) in an ``evaluate_run`` result.

    One curve per model, or per model and crop style when ``results`` holds several crops; the
    scores are the prediction cache of :func:`nexperia_utils.evaluation.predict.best_checkpoint_predictions`
    (checked against the checkpoint and ``part``'s images), so nothing is predicted again.
    """
    several_crops = results["crop"].nunique() > 1 if "crop" in results.columns else False
    curves = {}
    for (model, crop), pred in best_checkpoint_predictions(results, part, runs_root).items():
        label = f"{model} {CROP_LABELS.get(crop, crop)}" if several_crops else model
        curves[label] = (pred["label"].astype(str) != negative_class, pred["defect_score"].to_numpy())
    return plot_roc(curves, title=title or "Test ROC of each model's best checkpoint")


def plot_training_curves(history: pd.DataFrame, title: str = "") -> Figure:
    """Training curves of one run: six panels (axes in this order).

    1. loss, train vs val; 2. accuracy (10 classes, %), train vs val; 3. binary accuracy
    (good vs defect, %), train vs val; 4. validation AUC (%); 5. FPR at TPR = 100 % (%), val solid
    and test dotted when recorded; 6. learning rate (log scale). A panel whose columns the history
    lacks says "not recorded". Train lines are dashed, val solid, test dotted.
    """
    _check_history(history, "plot_training_curves")
    epoch = pd.to_numeric(history["epoch"], errors="coerce").to_numpy(dtype=float)
    panels = [  # (title, y label, columns)
        ("loss", "loss", ("train_loss", "val_loss", "test_loss")),
        ("accuracy (10 classes)", "accuracy (%)", ("train_acc", "val_acc", "test_acc")),
        ("binary accuracy (good vs defect)", "binary accuracy (%)",
         ("train_binary_acc", "val_binary_acc", "test_binary_acc")),
        ("AUC", "AUC (%)", ("val_auc", "test_auc")),
        ("FPR at TPR = 100 %", "FPR (%)", ("val_fpr@100", "test_fpr@100")),
        ("learning rate", "learning rate", ("lr",)),
    ]
    fig = new_figure((13.0, 7.0))
    axes = fig.subplots(2, 3, sharex=True).ravel()
    split_colors = {"train": "C0", "val": "C1", "test": "C2", "lr": "C4"}
    for ax, (panel_title, ylabel, cols) in zip(axes, panels):
        present = [c for c in cols if c in history.columns and history[c].notna().any()]
        ax.set_title(panel_title)
        if not present:
            _empty_panel(ax)
            continue
        for col in present:
            split = col.split("_", 1)[0]
            if col == "lr":
                values = pd.to_numeric(history[col], errors="coerce").to_numpy(dtype=float)
            else:
                values = _as_percent(col, history[col], "plot_training_curves")
            ax.plot(epoch, values, color=split_colors.get(split, "C7"), ls=_linestyle(col), lw=1.5,
                    label=split if col != "lr" else "lr")
        if cols == ("lr",):
            if (pd.to_numeric(history["lr"], errors="coerce") > 0).all():
                ax.set_yscale("log")
        else:
            ax.legend(fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in axes[3:]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.suptitle(title or "Training curves")
    return fig


def _classes_for(histories: Mapping[str, pd.DataFrame], metrics: Sequence[str]) -> list[str]:
    classes: list[str] = []
    for history in histories.values():
        for column in history.columns:
            for metric in metrics:
                prefix = f"{metric}/"
                if isinstance(column, str) and column.startswith(prefix):
                    name = column[len(prefix):]
                    if name not in classes:
                        classes.append(name)
    return classes


def plot_per_class_curves(
    histories: Mapping[str, pd.DataFrame],
    metric: str | Sequence[str],
    counts: pd.DataFrame | None = None,
    title: str = "",
    ncols: int = 5,
) -> Figure:
    """One small panel per class with one line per run (Figures 4, 5, 7 and 8 of the report).

    Args:
        histories: run label (e.g. the loss) -> history with per-class columns ``<metric>/<class>``.
        metric: ``"val_acc"``, ``"val_binary_acc"``, ``"val_loss"``, ``"val_binary_loss"`` (or any
            prefix with per-class columns, e.g. ``"train_acc"``), or several of them: each
            (run, metric) pair is one line, colour by run, line style by metric.
        counts: optional image counts per class (index class, columns ``train``, ``val``,
            ``test``); panel titles then read ``"class (train/val/test)"`` as in the report.
        title: figure title; default names the metric(s).
        ncols: panels per row.

    Classes come from the histories' columns (in their order). Rates are shown in %.
    One axes per class; a single figure legend to the right.
    """
    _check_histories(histories, "plot_per_class_curves")
    metrics = [metric] if isinstance(metric, str) else list(metric)
    if not metrics:
        raise DataError("plot_per_class_curves: name at least one metric, e.g. 'val_acc'.")
    classes = _classes_for(histories, metrics)
    if not classes:
        raise DataError(
            f"plot_per_class_curves: no history has per-class columns '<metric>/<class>' for {metrics}; "
            f"columns of the first run: {list(next(iter(histories.values())).columns)[:20]}."
        )
    if counts is not None:
        need = [c for c in ("train", "val", "test") if c not in counts.columns]
        if need:
            raise DataError(f"plot_per_class_curves: counts lacks the column(s) {need}; it needs train, val, test.")
    ncols = max(1, min(ncols, len(classes)))
    nrows = math.ceil(len(classes) / ncols)
    fig = new_figure((2.7 * ncols + 2.2, 2.3 * nrows + 0.6))
    grid = fig.subplots(nrows, ncols, sharex=True, squeeze=False)
    axes = grid.ravel()
    by_metric = len(histories) == 1 and len(metrics) > 1  # one run: colour by metric instead
    colors = _palette(len(metrics) if by_metric else len(histories))
    styles = ["-", "--", ":", "-."]
    # rates get one 0-100 % scale in every panel: a class stuck at 0 % or 100 % would otherwise
    # get an autoscaled axis of +-0.04 % that reads like a real curve
    rates_only = not any(_is_loss(m) for m in metrics)
    handles: dict[str, object] = {}
    for ax, cls in zip(axes, classes):
        for r_index, (run, history) in enumerate(histories.items()):
            epoch = pd.to_numeric(history["epoch"], errors="coerce").to_numpy(dtype=float)
            for m_index, m in enumerate(metrics):
                column = f"{m}/{cls}"
                if column not in history.columns:
                    continue
                values = _as_percent(column, history[column], f"plot_per_class_curves, run {run!r}")
                pretty = _pretty_metric(m)
                label = run if len(metrics) == 1 else (pretty if by_metric else f"{run}: {pretty}")
                color = colors[m_index if by_metric else r_index]
                (line,) = ax.plot(epoch, values, color=color, ls=styles[m_index % len(styles)], lw=1.2)
                handles.setdefault(label, line)
        heading = cls
        if counts is not None:
            if cls in counts.index:
                row = counts.loc[cls]
                heading = f"{cls} ({int(row['train'])}/{int(row['val'])}/{int(row['test'])})"
            else:
                log.warning("plot_per_class_curves: class %r has no row in counts", cls)
        ax.set_title(heading, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if rates_only:
            ax.set_ylim(-4.0, 104.0)
    for ax in axes[len(classes):]:
        ax.remove()
    for ax in grid[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    for row in grid:
        row[0].set_ylabel(_axis_label(metrics[0]), fontsize=8)
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside right upper", fontsize=8)
    if title:
        fig.suptitle(title)
    else:
        what = ", ".join(_pretty_metric(m) for m in metrics)
        fig.suptitle(what + (" per class (images: train/val/test)" if counts is not None else " per class"))
    return fig


def plot_metric_per_epoch(
    histories: Mapping[str, pd.DataFrame],
    columns: Sequence[str] = ("val_fpr@100",),
    title: str = "",
) -> Figure:
    """Metrics per epoch for several runs on one axes (Figures 6 and 9 of the report).

    Colour by run; line style by split: val solid, test dotted, train dashed. Rates in %.
    A run lacking a column is skipped (logged); if no run has any of ``columns`` it is an error.
    """
    _check_histories(histories, "plot_metric_per_epoch")
    columns = list(columns)
    if not columns:
        raise DataError("plot_metric_per_epoch: name at least one column, e.g. 'val_fpr@100'.")
    fig = new_figure((9.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    colors = _palette(len(histories))
    keys = {_metric_key(c) for c in columns}
    plotted = 0
    for (run, history), color in zip(histories.items(), colors):
        epoch = pd.to_numeric(history["epoch"], errors="coerce").to_numpy(dtype=float)
        for column in columns:
            if column not in history.columns:
                log.info("plot_metric_per_epoch: run %r has no column %r", run, column)
                continue
            values = _as_percent(column, history[column], f"plot_metric_per_epoch, run {run!r}")
            if len(columns) == 1:
                label = run
            elif len(keys) == 1:  # same metric on several splits: name the split
                label = f"{run} ({_pretty_metric(column).split(' ', 1)[0]})"
            else:
                label = f"{run}: {_pretty_metric(column)}"
            ax.plot(epoch, values, color=color, ls=_linestyle(column), lw=1.5, label=label)
            plotted += 1
    if plotted == 0:
        raise DataError(f"plot_metric_per_epoch: no history has any of the columns {columns}.")
    ax.set_ylabel(_axis_label(columns[0]) if len(keys) == 1 else "value (%)")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    styles = {"val": "validation solid", "test": "test dotted", "train": "train dashed"}
    splits = [s for s in styles if any(c.startswith(f"{s}_") for c in columns)]
    note = ", ".join(styles[s] for s in splits) if len(splits) > 1 else ""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=9,
              title=note or None, title_fontsize=8)
    ax.set_title(title or f"{', '.join(_pretty_metric(c) for c in columns)} per epoch")
    return fig


def plot_crop_bars(
    results: pd.DataFrame,
    metric: str = "fpr@100",
    reference: Mapping[str, Mapping[str, tuple[float, float | None]]] | None = None,
    title: str = "",
) -> Figure:
    """Grouped bars: per model, one bar per crop style with a sample-std error bar (Table 3 companion).

    Args:
        results: evaluation results with ``model``, ``crop`` and the metric columns (fractions).
        metric: one of :data:`ROW_KEYS`.
        reference: optional published values (``published.published_values(3)``); where a column
            ``"<model> / <CropLabel>"`` exists, the report's value is drawn as a black diamond.
        title: axes title.

    Bars are annotated with the mean; groups with one evaluation get no error bar.
    """
    if metric not in ROW_KEYS:
        raise DataError(f"plot_crop_bars: metric {metric!r} is not one of {list(ROW_KEYS)}.")
    values = summary_values(results, ("model", "crop"))
    values = values[values["metric"] == metric]
    models = list(dict.fromkeys(values["model"]))
    crop_rank = order_rank("crop", values["crop"])
    crops = sorted(crop_rank, key=crop_rank.get)
    width = 0.8 / len(crops)
    colors = _palette(len(crops))
    fig = new_figure((max(6.0, 1.9 * len(models) + 3.0), 4.8))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(models), dtype=float)
    ref_drawn = False
    for c_index, (crop, color) in enumerate(zip(crops, colors)):
        part = values[values["crop"] == crop].set_index("model").reindex(models)
        offsets = x - 0.4 + width * (c_index + 0.5)
        means = part["mean_pct"].to_numpy(dtype=float)
        stds = np.nan_to_num(part["std_pct"].to_numpy(dtype=float), nan=0.0)
        bars = ax.bar(offsets, means, width=width * 0.92, color=color, yerr=stds, capsize=3,
                      label=CROP_LABELS.get(crop, crop), error_kw={"lw": 1, "ecolor": "0.2"})
        ax.bar_label(bars, labels=["" if np.isnan(m) else f"{m:.2f}" for m in means], fontsize=7, padding=2)
        if reference is not None:
            for off, model in zip(offsets, models):
                cell = reference.get(f"{model} / {CROP_LABELS.get(crop, crop)}")
                if cell and metric in cell:
                    ax.plot([off], [cell[metric][0]], marker="D", color="black", ms=5, ls="none",
                            label="report" if not ref_drawn else None)
                    ref_drawn = True
    ax.set_xticks(x, models)
    ax.set_ylabel(f"{ROW_LABELS[metric]} (%)")
    ax.set_xlabel("model")
    ax.margins(y=0.12)
    if metric == "auc":
        low = np.nanmin(values["mean_pct"] - values["std_pct"].fillna(0))
        ax.set_ylim(max(0.0, math.floor(low - 0.5)), 100.0)
    ax.grid(axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i] == "report")  # report marker last
    ax.legend([handles[i] for i in order], [labels[i] for i in order], title="test-time crop",
              loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=9)
    ax.set_title(title or f"{ROW_LABELS[metric]} by crop style (mean, error bar = std over checkpoints)")
    return fig


def save_figure(fig: Figure, out_dir: Path, name: str) -> Path:
    """Save ``fig`` as ``<out_dir>/<name>.png`` atomically and close it; returns the path."""
    check_name(name)
    try:
        return atomic_save_figure(Path(out_dir) / f"{name}.png", fig)
    finally:
        plt.close(fig)

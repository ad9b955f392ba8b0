"""Figures of an error analysis: the confusion matrix, the defect scores per filed class and the 2-D
embeddings of the penultimate-layer activations (:class:`nexperia_utils.analysis.interpretation.Interpretation`
draws them for a run)."""
from __future__ import annotations

import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from nexperia_utils.reporting.figures import new_figure

__all__ = ["plot_confusion", "plot_embeddings", "plot_score_distributions"]


def plot_confusion(confusion: pd.DataFrame, title: str = "") -> Figure:
    """Confusion matrix heatmap (seaborn): colour = share of the row (log scale), numbers = counts."""
    import seaborn as sns

    counts = confusion.to_numpy()
    share = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    n = len(confusion)
    fig = new_figure((1.0 + 0.75 * n, 0.8 + 0.65 * n))
    ax = fig.add_subplot(1, 1, 1)
    shown = np.where(share > 0, share, np.nan)
    # the colour scale spans at least 1 % .. 100 %: a model that predicts one class for every image
    # (every share 0 or 1) would otherwise get a collapsed scale
    smallest = np.nanmin(shown) if np.isfinite(shown).any() else 1e-3
    sns.heatmap(pd.DataFrame(shown, index=confusion.index, columns=confusion.columns), ax=ax, cmap="Blues",
                norm=LogNorm(vmin=max(1e-3, min(0.01, smallest)), vmax=1.0),
                annot=counts, fmt="d", annot_kws={"fontsize": 8}, cbar_kws={"label": "share of the row (log)"},
                linewidths=0.5, linecolor="0.9", square=True)
    ax.set_xlabel("predicted class (argmax)")
    ax.set_ylabel("filed label")
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    ax.tick_params(axis="y", rotation=0, labelsize=8)
    ax.set_title(title or "Confusion matrix (counts)", fontsize=10)
    return fig


def plot_score_distributions(predictions: pd.DataFrame, classes: Sequence[str], thresholds: Mapping[str, float],
                             marked: Iterable[str] = (), marked_label: str = "annotated mislabel",
                             title: str = "") -> Figure:
    """Defect score per filed class (seaborn box + strip plot, logit axis) with the operating points'
    thresholds as vertical lines; images in ``marked`` (ids) are drawn as red stars."""
    import seaborn as sns

    eps = 1e-5
    frame = predictions.assign(score=predictions["defect_score"].clip(eps, 1 - eps))
    order = [c for c in classes if (frame["label"] == c).any()]
    fig = new_figure((9.0, 0.55 * len(order) + 1.6))
    ax = fig.add_subplot(1, 1, 1)
    with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11's deprecated `vert`
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        sns.boxplot(data=frame, x="score", y="label", order=order, ax=ax, color="0.85", fliersize=0, width=0.6)
    sns.stripplot(data=frame, x="score", y="label", order=order, ax=ax, size=3, alpha=0.6, jitter=0.25,
                  color="tab:blue")
    marked = set(str(m) for m in marked)
    hits = frame[frame["image_id"].astype(str).isin(marked)]
    if len(hits):
        ax.scatter(hits["score"], [order.index(lab) for lab in hits["label"]], marker="*", s=140, color="red",
                   edgecolor="black", linewidth=0.6, zorder=5, label=marked_label)
    styles = ["--", ":", "-.", (0, (1, 3)), (0, (5, 2, 1, 2)), (0, (3, 1))]
    for (name, value), style in zip(thresholds.items(), styles):
        ax.axvline(min(max(value, eps), 1 - eps), color="tab:red", lw=1.0, ls=style, label=f"{name} (t = {value:.3g})")
    _logit_axis(ax, np.concatenate([frame["score"].to_numpy(), list(thresholds.values())]), eps)
    ax.set_xlabel("defect score 1 - p(good) (logit scale)")
    ax.set_ylabel("filed label")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    ax.set_title(title or "Defect score per class", fontsize=10)
    return fig


def _logit_axis(ax, values: np.ndarray, eps: float) -> None:
    """A logit x axis fitted to ``values`` with plain tick labels (0.01, 0.5, 0.99 ...)."""
    from matplotlib.ticker import NullFormatter
    from scipy.special import expit, logit

    values = np.clip(np.asarray(values, dtype=float), eps, 1 - eps)
    lo = float(max(eps / 2, expit(logit(values.min()) - 0.7)))
    hi = float(min(1 - eps / 2, expit(logit(values.max()) + 0.7)))
    ax.set_xscale("logit")
    ax.set_xlim(lo, hi)
    ticks = [t for t in (1e-5, 1e-4, 1e-3, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999) if lo <= t <= hi]
    if len(ticks) < 4:
        ticks = sorted(set(ticks) | {t for t in (0.2, 0.3, 0.4, 0.6, 0.7, 0.8) if lo <= t <= hi})
    ax.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_embeddings(coords: Mapping[str, np.ndarray], labels: Sequence[str], classes: Sequence[str],
                    negative_class: str, marked: Mapping[int, str] | None = None,
                    ringed: Iterable[int] = (), title: str = "") -> Figure:
    """Scatter plots of 2-D embeddings (one panel per method), coloured by filed class.

    ``marked``: position -> note (e.g. the annotated true class of a mislabelled image), drawn as a
    black-edged star with the note; ``ringed``: positions circled (e.g. the top-K suspects).
    """
    import seaborn as sns

    labels = np.asarray(labels, dtype=object)
    palette = dict(zip(classes, sns.color_palette("tab10" if len(classes) <= 10 else "husl", len(classes))))
    palette[negative_class] = (0.72, 0.72, 0.72)
    fig = new_figure((6.0 * len(coords) + 1.8, 5.6))
    axes = np.atleast_1d(fig.subplots(1, len(coords)))
    marked = dict(marked or {})
    ringed = sorted(set(int(i) for i in ringed))
    for ax, (method, xy) in zip(axes, coords.items()):
        order = [negative_class] + [c for c in classes if c != negative_class]
        for name in order:
            mask = labels == name
            if mask.any():
                ax.scatter(xy[mask, 0], xy[mask, 1], s=10 if name == negative_class else 16, color=palette[name],
                           label=f"{name} ({int(mask.sum())})", alpha=0.7 if name == negative_class else 0.9,
                           linewidths=0)
        if ringed:
            ax.scatter(xy[ringed, 0], xy[ringed, 1], s=70, facecolors="none", edgecolors="black", linewidths=0.8,
                       label="top-K suspects")
        if marked:
            positions = sorted(marked)
            ax.scatter(xy[positions, 0], xy[positions, 1], marker="*", s=180, color="red", edgecolor="black",
                       linewidth=0.7, label="annotated mislabel", zorder=5)
            if len(positions) <= 30:  # beyond that the notes hide the points
                for p in positions:
                    ax.annotate(marked[p], xy[p], xytext=(4, 4), textcoords="offset points", fontsize=7)
        ax.set_title(method, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0, markerscale=1.5)
    fig.suptitle(title or "Penultimate-layer activations", fontsize=11)
    return fig

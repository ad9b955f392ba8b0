"""Figures of SAT as a mislabel detector: the weight distribution, weights over epochs, the detection curve,
the ranks of the noisy images and the lowest-weight gallery (the frames come from
:mod:`nexperia_utils.analysis.sat_weights`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nexperia_utils.errors import DataError
from nexperia_utils.reporting.figures import new_figure
from nexperia_utils.analysis.sat_weights import detection_curve, noisy_ranks

__all__ = [
    "lowest_weight_gallery", "plot_detection_curve", "plot_mislabel_detection", "plot_noisy_ranks",
    "plot_weight_distribution", "plot_weight_over_epochs",
]

_CLEAN, _NOISY = "#4c72b0", "#dd4444"


def plot_weight_distribution(ax: Axes, frame: pd.DataFrame) -> None:
    """Histogram of the final weights, clean vs noisy (each normalised to its own count), noisy as a rug."""
    w = frame["weight"].to_numpy(dtype=float)
    y = frame["noisy"].to_numpy(dtype=bool) if "noisy" in frame.columns else np.zeros(len(frame), bool)
    lo = float(w.min()) if w.size else 0.0
    bins = np.linspace(min(lo, 1.0) - 1e-6, 1.0 + 1e-6, 31)
    ax.hist(w[~y], bins=bins, color=_CLEAN, alpha=0.6, weights=np.full((~y).sum(), 100.0 / max((~y).sum(), 1)),
            label=f"clean ({(~y).sum()})")
    if y.any():
        ax.hist(w[y], bins=bins, histtype="step", lw=2, color=_NOISY,
                weights=np.full(y.sum(), 100.0 / y.sum()), label=f"noisy ({y.sum()})")
        sns.rugplot(x=w[y], ax=ax, color=_NOISY, height=0.06, lw=1.5)
    ax.set_xlabel("SAT weight max_j t_ij (last epoch)")
    ax.set_ylabel("images of the group (%)")
    ax.set_title("weight distribution")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def plot_weight_over_epochs(ax: Axes, trajectories: pd.DataFrame, noisy: pd.Series | np.ndarray,
                            sat_es: int | None = None, max_lines: int = 40) -> None:
    """Weight per epoch: clean median with its 10-90 % band; noisy images as thin lines and their mean."""
    epochs = np.asarray(trajectories.columns, dtype=float)
    values = trajectories.to_numpy(dtype=float)
    y = np.asarray(noisy, dtype=bool)
    if y.shape[0] != values.shape[0]:
        raise DataError(f"noisy has {y.shape[0]} entries, trajectories {values.shape[0]} rows")
    clean = values[~y]
    if clean.size:
        ax.fill_between(epochs, np.quantile(clean, 0.1, axis=0), np.quantile(clean, 0.9, axis=0),
                        color=_CLEAN, alpha=0.25, lw=0, label="clean 10-90 %")
        ax.plot(epochs, np.median(clean, axis=0), color=_CLEAN, lw=2, label="clean median")
    if y.any():
        for row in values[y][:max_lines]:
            ax.plot(epochs, row, color=_NOISY, lw=0.7, alpha=0.45)
        ax.plot(epochs, values[y].mean(axis=0), color=_NOISY, lw=2, label=f"noisy mean ({y.sum()}; thin: each)")
    if sat_es is not None:
        ax.axvline(sat_es + 0.5, color="0.4", ls="--", lw=1)
        ax.annotate("SAT starts", (sat_es + 0.5, 0.5), xycoords=("data", "axes fraction"), fontsize=7,
                    color="0.3", ha="right", va="center", rotation=90, xytext=(-2, 0), textcoords="offset points")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("SAT weight")
    ax.set_title("weight over epochs")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)


def plot_detection_curve(ax: Axes, frame: pd.DataFrame) -> None:
    """Recall and precision of flagging the lowest weights against the % of images flagged (log axis)."""
    curve = detection_curve(frame["weight"], frame["noisy"])
    base = float(frame["noisy"].mean()) * 100.0
    x = curve["flagged_pct"].to_numpy()
    ax.step(x, curve["recall"] * 100.0, where="post", color=_NOISY, lw=2, label="recall")
    ax.step(x, curve["precision"] * 100.0, where="post", color="#2a9d5c", lw=2, label="precision")
    grid = np.geomspace(max(x.min(), 1e-3), 100.0, 100)
    ax.plot(grid, grid, color=_NOISY, ls=":", lw=1, label="recall by chance")
    ax.axhline(base, color="#2a9d5c", ls=":", lw=1, label=f"precision by chance ({base:.2f} %)")
    ax.set_xscale("log")
    ax.set_xlim(max(x.min() * 0.8, 1e-3), 100.0)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("training images flagged, lowest weights first (%)")
    ax.set_ylabel("%")
    ax.set_title("lowest weights as a mislabel detector")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax.grid(alpha=0.3, which="both")


def plot_noisy_ranks(ax: Axes, frame: pd.DataFrame) -> None:
    """Each noisy image at its weight rank (% of the training set on a log axis, low = lowest weights),
    y = defect severity when annotated, colour = true class."""
    ranks = noisy_ranks(frame)
    if ranks.empty:
        ax.text(0.5, 0.5, "no noisy label in the training part", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    has_severity = "severity" in ranks.columns and ranks["severity"].notna().any()
    yvals = ranks["severity"] if has_severity else np.zeros(len(ranks))
    classes = sorted(ranks["true_class"].unique())
    palette = dict(zip(classes, sns.color_palette("tab10", len(classes))))
    for cls in classes:
        part = ranks["true_class"] == cls
        ax.scatter(ranks.loc[part, "rank_pct"], np.asarray(yvals)[part.to_numpy()], s=36, color=palette[cls],
                   edgecolor="black", lw=0.5, label=cls, zorder=3)
    median = float(ranks["rank_pct"].median())
    ax.axvline(median, color="0.3", ls="--", lw=1)
    ax.annotate(f"median {median:.1f} %", (median, 0.97), xycoords=("data", "axes fraction"), fontsize=7,
                ha="left", va="top", xytext=(3, 0), textcoords="offset points")
    ax.axvline(50, color="0.6", ls=":", lw=1)
    ax.annotate("chance", (50, 0.02), xycoords=("data", "axes fraction"), fontsize=7, color="0.4",
                ha="right", xytext=(-2, 0), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlim(min(50.0 / len(frame), float(ranks["rank_pct"].min()) * 0.8), 100.0)
    ax.set_xlabel("rank of the weight (% of training images, log; lowest weight = rank 1)")
    ax.set_ylabel("defect severity (annotation)" if has_severity else "")
    if has_severity:
        ax.set_ylim(-0.03, 1.03)
    else:
        ax.set_yticks([])
    ax.set_title("where the noisy labels rank")
    ax.legend(title="true class", fontsize=7, title_fontsize=7, loc="best")
    ax.grid(alpha=0.3)


def plot_mislabel_detection(frame: pd.DataFrame, trajectories: pd.DataFrame | None = None,
                            sat_es: int | None = None, title: str = "") -> Figure:
    """Four panels: weight distribution clean vs noisy, weight over epochs, precision/recall of the
    lowest weights, ranks of the noisy images. ``frame`` from :func:`load_sat_weights` with annotations."""
    if "noisy" not in frame.columns:
        raise DataError("plot_mislabel_detection needs annotations: load_sat_weights(..., annotations=...)")
    fig = new_figure((12.5, 8.5))
    axes = fig.subplots(2, 2).ravel()
    plot_weight_distribution(axes[0], frame)
    if trajectories is not None:
        noisy = frame.set_index("image_id").loc[trajectories.index, "noisy"]
        plot_weight_over_epochs(axes[1], trajectories, noisy.to_numpy(), sat_es)
    else:
        axes[1].set_axis_off()
    if frame["noisy"].any():
        plot_detection_curve(axes[2], frame)
    else:
        axes[2].text(0.5, 0.5, "no noisy label in the training part", ha="center", va="center",
                     transform=axes[2].transAxes)
        axes[2].set_axis_off()
    plot_noisy_ranks(axes[3], frame)
    epoch = int(frame["epoch"].iloc[0]) if "epoch" in frame.columns else None
    fig.suptitle(title or f"SAT weights as a mislabel detector (epoch {epoch})")
    return fig


def lowest_weight_gallery(frame: pd.DataFrame, data_root: Path, n: int = 12, columns: int = 6,
                          title: str = "") -> Figure:
    """The ``n`` training images with the lowest SAT weights, captioned ``label -> soft-target class``,
    the weight and (when annotated) the true class of noisy ones: candidates to re-inspect."""
    from nexperia_utils.data.images import read_grayscale
    from nexperia_utils.analysis.galleries import plot_gallery

    if "path" not in frame.columns:
        raise DataError("lowest_weight_gallery needs the image paths: pass the whole split to load_sat_weights")
    chosen = frame.sort_values("weight", kind="mergesort").head(n)
    images, captions = [], []
    for row in chosen.itertuples():
        images.append(read_grayscale(Path(data_root) / row.path))
        text = f"{row.label} -> {row.target_class}, w={row.weight:.3f} (#{row.weight_rank:.0f})"
        if getattr(row, "noisy", False):
            text += f"\nNOISY, true class {row.true_class}"
        captions.append(text)
    return plot_gallery(images, captions, columns=columns,
                        title=title or f"the {len(images)} training images with the lowest SAT weight")

"""Image grids: examples per class with their defect boxes, and captioned galleries of predictions
(:func:`select_gallery` picks the rows, :func:`gallery_figure` draws them with Grad-CAM heatmaps)."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.patches as patches
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nexperia_utils.data.images import read_grayscale
from nexperia_utils.errors import ConfigError
from nexperia_utils.analysis.explain import Heatmaps
from nexperia_utils.reporting.figures import new_figure


def _box(row: pd.Series) -> tuple[float, float, float, float] | None:
    values = [row.get(k) for k in ("x", "y", "w", "h")]
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in values):
        return None
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def plot_examples(
    data_root: Path,
    split: pd.DataFrame,
    classes: Sequence[str],
    annotations: pd.DataFrame | None = None,
    per_class: int = 4,
    seed: int = 0,
) -> Figure:
    """A grid with ``per_class`` example images of each class (rows), defect boxes drawn in red.

    Boxes come from ``annotations`` (columns image_id, x, y, w, h) when given; a label that the
    annotations mark as noisy (a defect filed as good) is flagged in the title.
    """
    ann = annotations.set_index("image_id") if annotations is not None else None
    fig = Figure(figsize=(1.9 * per_class, 1.9 * len(classes)))
    axes = fig.subplots(len(classes), per_class, squeeze=False)
    rng = np.random.default_rng(seed)
    for r, name in enumerate(classes):
        rows = split[split["label"] == name]
        chosen = rows.iloc[rng.permutation(len(rows))[:per_class]] if len(rows) else rows
        for c in range(per_class):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{name}\n({len(rows)})", fontsize=9)
            if c >= len(chosen):
                ax.set_frame_on(False)
                continue
            row = chosen.iloc[c]
            ax.imshow(read_grayscale(Path(data_root) / row["path"]), cmap="gray", vmin=0, vmax=255)
            title = str(row["image_id"])[:8]
            if ann is not None and row["image_id"] in ann.index:
                info = ann.loc[row["image_id"]]
                box = _box(info)
                if box is not None:
                    ax.add_patch(patches.Rectangle(box[:2], box[2], box[3], fill=False, edgecolor="red", lw=1.2))
                if bool(info.get("noisy", False)):
                    title += f"\nnoisy: {info['true_class']}"
            ax.set_title(title, fontsize=7)
    fig.suptitle("Example images per class (defect boxes in red)", fontsize=11)
    fig.tight_layout()
    return fig


def plot_gallery(
    images: Sequence[np.ndarray],
    captions: Sequence[str],
    heatmaps: Sequence[np.ndarray] | None = None,
    boxes: Sequence[tuple | None] | None = None,
    columns: int = 6,
    title: str = "",
) -> Figure:
    """Images (grey, in [0, 1] or uint8) with optional heatmap overlays, boxes and captions."""
    n = len(images)
    rows = max(1, int(np.ceil(n / columns)))
    fig = Figure(figsize=(2.2 * columns, 2.5 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.set_frame_on(False)
            continue
        ax.imshow(images[i], cmap="gray")
        if heatmaps is not None:
            ax.imshow(heatmaps[i], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        if boxes is not None and boxes[i] is not None:
            x, y, w, h = boxes[i]
            ax.add_patch(patches.Rectangle((x, y), w, h, fill=False, edgecolor="white", lw=1.2, ls="--"))
        ax.set_title(captions[i], fontsize=7)
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "nothing to show", ha="center", va="center", transform=axes.flat[0].transAxes)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


#: Visibility (peak defect contrast over the sensor noise at the input size) below which a defect is
#: called borderline in the 01_split summary.
BORDERLINE_VISIBILITY = 5.0


def visibility_summary(annotations: pd.DataFrame, borderline: float = BORDERLINE_VISIBILITY) -> pd.DataFrame:
    """Per true defect class: images, median and 10 % quantile of ``visibility``, share borderline.

    ``annotations`` is a synthetic set's ``annotations.csv`` (``true_class``, ``visibility``); good
    images (NaN visibility) are left out. A last row ``all defects`` summarises every defect.
    """
    missing = [c for c in ("true_class", "visibility") if c not in annotations.columns]
    if missing:
        raise ValueError(f"annotations lack the column(s) {missing}; regenerate the synthetic data set "
                         f"(its annotations.csv predates the visibility measure)")
    defects = annotations.dropna(subset=["visibility"])
    if defects.empty:
        raise ValueError("annotations hold no defect with a visibility value")

    def _row(v: pd.Series) -> dict:
        return {"images": len(v), "median": float(v.median()), "q10": float(v.quantile(0.1)),
                f"share < {borderline:g}": float((v < borderline).mean())}

    rows = {name: _row(g["visibility"]) for name, g in defects.groupby("true_class")}
    rows["all defects"] = _row(defects["visibility"])
    return pd.DataFrame.from_dict(rows, orient="index")


def plot_visibility(annotations: pd.DataFrame, borderline: float = BORDERLINE_VISIBILITY,
                    input_size: int = 64) -> Figure:
    """Box plot of the defect visibility per true class (log scale), the borderline level marked."""
    summary = visibility_summary(annotations, borderline)
    defects = annotations.dropna(subset=["visibility"])
    names = [n for n in summary.index if n != "all defects"]
    fig = new_figure((8, 0.45 * len(names) + 1.6))
    ax = fig.add_subplot()
    data = [np.clip(defects.loc[defects["true_class"] == n, "visibility"].to_numpy(), 0.1, None) for n in names]
    ax.boxplot(data, orientation="horizontal", tick_labels=names, showfliers=True, flierprops={"markersize": 2})
    ax.set_xscale("log")
    ax.axvline(borderline, color="tab:red", linestyle="--", linewidth=1)
    ax.set_xlabel(f"visibility at {input_size} px: peak |defect - twin| / sensor-noise std (log scale)")
    share = summary["share < " + f"{borderline:g}"]
    for i, n in enumerate(names, start=1):
        ax.text(1.01, i, f"{100 * share[n]:.0f} % < {borderline:g}", transform=ax.get_yaxis_transform(),
                va="center", fontsize=8)
    ax.set_title(f"Defect visibility per class ({100 * share['all defects']:.1f} % of defects borderline)")
    return fig


def select_gallery(predictions: pd.DataFrame, negative_class: str, kind: str, n: int,
                   threshold: float | None = None) -> pd.DataFrame:
    """Rows of ``predictions`` for a gallery, in display order.

    ``kind``: ``"lowest_defects"`` (defect-labelled, lowest scores first), ``"missed"`` (defect-labelled
    with score below ``threshold``, lowest first), ``"highest_good"`` (good-labelled, highest first),
    ``"false_alarms"`` (good-labelled with score >= ``threshold``, highest first). At most ``n`` rows.
    """
    is_good = predictions["label"] == negative_class
    if kind in ("missed", "false_alarms") and threshold is None:
        raise ConfigError(f"gallery kind {kind!r} needs a threshold")
    if kind == "lowest_defects":
        rows = predictions[~is_good].sort_values("defect_score", kind="stable")
    elif kind == "missed":
        rows = predictions[~is_good & (predictions["defect_score"] < threshold)].sort_values("defect_score", kind="stable")
    elif kind == "highest_good":
        rows = predictions[is_good].sort_values("defect_score", ascending=False, kind="stable")
    elif kind == "false_alarms":
        rows = predictions[is_good & (predictions["defect_score"] >= threshold)].sort_values(
            "defect_score", ascending=False, kind="stable")
    else:
        raise ConfigError(f"unknown gallery kind {kind!r}; use lowest_defects, missed, highest_good or false_alarms")
    return rows.head(max(0, int(n)))


def gallery_figure(rows: pd.DataFrame, heatmaps: Heatmaps, boxes: Sequence[tuple | None], title: str,
                   flags: Mapping[str, str] | None = None, columns: int = 6, n_total: int | None = None) -> Figure:
    """A gallery (:func:`nexperia_utils.analysis.galleries.plot_gallery`) of ``rows`` (predictions with their
    position in the part as index): image, heatmap, box, and caption ``id / label / score / rank``.

    ``boxes`` are the part's input boxes (by position); ``flags`` adds a line per image id (e.g. the
    annotated true class of a mislabelled image); ``n_total`` (the part's size) is shown after the
    rank. A constant (flat) heatmap is not overlaid and the caption says so.
    """
    images, maps, captions, shown_boxes = [], [], [], []
    for index, row in rows.iterrows():
        image, heat = heatmaps.get(int(index))
        flat = bool(heat.max() == heat.min())
        images.append(image)
        maps.append(np.full(heat.shape, np.nan, dtype=np.float32) if flat else heat)  # NaN: drawn transparent
        shown_boxes.append(boxes[int(index)])
        rank = f"{int(row['rank'])}/{n_total}" if n_total else f"{int(row['rank'])}"
        caption = f"{str(row['image_id'])[:8]}  {row['label']}\nscore {row['defect_score']:.3g}  rank {rank}"
        if flags and str(row["image_id"]) in flags:
            caption += f"\n{flags[str(row['image_id'])]}"
        if flat:
            caption += "\n(flat heatmap: no evidence)"
        captions.append(caption)
    title = textwrap.fill(title, width=int(18 * columns))
    fig = plot_gallery(images, captions, heatmaps=maps, boxes=shown_boxes, columns=columns, title=title)
    # room for multi-line captions above every row (plot_gallery sizes rows for two lines)
    rows = max(1, math.ceil(len(images) / columns))
    lines = max([c.count("\n") + 1 for c in captions] or [1])
    fig.set_size_inches(2.2 * columns, rows * (2.25 + 0.13 * lines) + 0.3 + 0.2 * title.count("\n"))
    fig.tight_layout()
    return fig

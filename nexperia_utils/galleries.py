"""Image grids: examples per class with their defect boxes, and captioned galleries of predictions."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.patches as patches
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nexperia_utils.data import read_grayscale


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
    fig = Figure(figsize=(8, 0.45 * len(names) + 1.6), layout="constrained")
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

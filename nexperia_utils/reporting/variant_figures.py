"""Figures of the model variants: Figure 2 (images before/after the STN), the distribution of the
learned STN transforms, and ResNet_att_2's attention maps over defect images with their boxes.

Figures are :class:`matplotlib.figure.Figure` objects built without pyplot (as in
:mod:`nexperia_utils.reporting`): notebooks display the returned figure and save it with
:func:`nexperia_utils.reporting.save_figure`.
"""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib.patches as patches
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from nexperia_utils.errors import DataError
from nexperia_utils.analysis.explain import overlay
from nexperia_utils.analysis.variant_inspection import IDENTITY_VALUES
from nexperia_utils.reporting.figures import new_figure

Box = tuple[float, float, float, float]

#: Axis labels of the :func:`nexperia_utils.analysis.variant_inspection.theta_frame` columns.
THETA_LABELS: dict[str, str] = {
    "theta11": "theta11 (x from x)", "theta12": "theta12 (x from y)", "theta13": "theta13 = tx (translation x)",
    "theta21": "theta21 (y from x)", "theta22": "theta22 (y from y)", "theta23": "theta23 = ty (translation y)",
    "area_scale": "det: area of the input seen", "rotation_deg": "rotation (degrees)",
    "scale": "scale s (theta1)", "tx": "tx (theta2, 1 = half width)", "ty": "ty (theta3, 1 = half height)",
    "coverage": "share of the output showing the image",
}

_GROUP_COLORS = {"good": "tab:blue", "defect": "tab:red", "all": "0.3"}


def _hide_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _check_images(images: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(images, dtype=np.float32)
    if array.ndim != 3:
        raise DataError(f"{name} must be (n, H, W) grey images in [0, 1]; got shape {array.shape}.")
    if array.size and (not np.isfinite(array).all() or array.min() < 0 or array.max() > 1):
        raise DataError(f"{name} must hold values in [0, 1] (undo the normalisation first).")
    return array


def plot_stn_examples(inputs: np.ndarray, transformed: np.ndarray, captions: Sequence[str],
                      title: str = "") -> Figure:
    """Figure 2 of the report: a row of input images and, below, the same images after the STN.

    ``inputs`` and ``transformed`` are ``(n, H, W)`` grey images in [0, 1]
    (:func:`nexperia_utils.analysis.variant_inspection.stn_views`); ``captions`` one per column.
    """
    inputs, transformed = _check_images(inputs, "inputs"), _check_images(transformed, "transformed")
    if inputs.shape != transformed.shape or len(captions) != len(inputs):
        raise DataError(f"plot_stn_examples: {len(inputs)} inputs, {len(transformed)} transformed images and "
                        f"{len(captions)} captions; pass one of each per column.")
    n = max(len(inputs), 1)
    fig = new_figure((max(1.75 * n, 5.0), 4.2))
    axes = fig.subplots(2, n, squeeze=False)
    for c in range(n):
        for r, (row, label) in enumerate(((inputs, "input"), (transformed, "after the STN"))):
            ax = axes[r, c]
            _hide_ticks(ax)
            if c >= len(row):
                ax.set_frame_on(False)
                continue
            ax.imshow(row[c], cmap="gray", vmin=0, vmax=1)
            if c == 0:
                ax.set_ylabel(label, fontsize=10)
        if c < len(inputs):
            axes[0, c].set_title(captions[c], fontsize=8)
    fig.suptitle(title or "Figure 2: test images (top) and the same images transformed by the STN (bottom)",
                 fontsize=11)
    return fig


def plot_theta_distribution(frame: pd.DataFrame, title: str = "", bins: int = 30) -> Figure:
    """Histograms of the learned transform parameters over a set of images, good vs defect.

    ``frame`` is :func:`nexperia_utils.analysis.variant_inspection.theta_frame` output (numeric parameter columns and
    optionally ``group``). A dashed line marks each parameter's value at the identity transform
    (where the STN starts); the legend gives mean and std per group.
    """
    columns = [c for c in frame.columns if c != "group" and pd.api.types.is_numeric_dtype(frame[c])]
    if not columns or frame.empty:
        raise DataError("plot_theta_distribution: no transform parameters to plot (empty frame).")
    groups = (list(dict.fromkeys(["good", "defect"] + sorted(frame["group"].unique())))
              if "group" in frame.columns else ["all"])
    groups = [g for g in groups if g == "all" or (frame["group"] == g).any()]
    ncols = min(4, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    fig = new_figure((3.6 * ncols, 2.9 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, column in zip(axes, columns):
        values = frame[column].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        identity = IDENTITY_VALUES.get(column)
        if identity is not None:
            lo, hi = min(lo, identity), max(hi, identity)
        pad = max(0.05 * (hi - lo), 1e-3 * max(abs(lo), abs(hi), 1.0))
        edges = np.linspace(lo - pad, hi + pad, bins + 1)
        for group in groups:
            part = values if group == "all" else frame.loc[frame["group"] == group, column].to_numpy(dtype=float)
            part = part[np.isfinite(part)]
            if not part.size:
                continue
            std = part.std(ddof=1) if part.size > 1 else float("nan")
            ax.hist(part, bins=edges, histtype="stepfilled", alpha=0.35, color=_GROUP_COLORS.get(group, "0.5"),
                    label=f"{group} (n={part.size}): {part.mean():.3g} ± {std:.2g}", density=False)
        if identity is not None:
            ax.axvline(identity, color="k", ls="--", lw=1, label=f"identity: {identity:g}")
        ax.set_xlabel(THETA_LABELS.get(column, column), fontsize=9)
        ax.set_ylabel("images", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    for ax in axes[len(columns):]:
        ax.set_visible(False)
    fig.suptitle(title or "Learned STN transform parameters", fontsize=11)
    return fig


def _draw_box(ax, box: Box | None) -> None:
    if box is None or box[2] <= 0 or box[3] <= 0:
        return
    ax.add_patch(patches.Rectangle((box[0] - 0.5, box[1] - 0.5), box[2], box[3], fill=False,
                                   edgecolor="white", lw=1.3, ls="--"))


def plot_attention_maps(images: np.ndarray, maps: Sequence[np.ndarray], boxes: Sequence[Box | None],
                        captions: Sequence[str], layer_names: Sequence[str], title: str = "",
                        alpha: float = 0.5, peak_format: str | None = "max {:.2g}x uniform") -> Figure:
    """Defect images (top row) and each attention map over them (one row per map), boxes dashed.

    Args:
        images: ``(n, S, S)`` grey images in [0, 1] (the model inputs, denormalised).
        maps: one ``(n, S, S)`` array per attention layer, non-negative
            (:func:`nexperia_utils.analysis.variant_inspection.attention_maps`); each map is scaled to a maximum of 1
            for display, so colours compare positions within a map, not maps with each other.
        boxes: the defect box of each image in model-input pixels (``(x, y, w, h)``) or ``None``.
        captions: one per image (column title).
        layer_names: one per map (row label).
        alpha: weight of the jet-coloured map over the image.
        peak_format: label written in each overlay's corner with the map's maximum before scaling
            (the default suits maps in multiples of the uniform weight, as ``attention_maps``
            returns them); ``None`` writes nothing.
    """
    images = _check_images(images, "images")
    n = len(images)
    if len(boxes) != n or len(captions) != n or len(layer_names) != len(maps):
        raise DataError(f"plot_attention_maps: {n} images, {len(boxes)} boxes, {len(captions)} captions, "
                        f"{len(maps)} maps and {len(layer_names)} layer names; pass one box and caption per "
                        "image and one name per map.")
    for name, layer in zip(layer_names, maps):
        layer = np.asarray(layer)
        if layer.shape != images.shape:
            raise DataError(f"attention map {name!r} has shape {layer.shape}; the images have {images.shape}.")
        if layer.size and (not np.isfinite(layer).all() or layer.min() < 0):
            raise DataError(f"attention map {name!r} must be finite and non-negative.")
    ncols = max(n, 1)
    fig = new_figure((max(2.0 * ncols, 5.0), 2.15 * (1 + len(maps)) + 0.5))
    axes = fig.subplots(1 + len(maps), ncols, squeeze=False)
    for c in range(ncols):
        for r in range(1 + len(maps)):
            ax = axes[r, c]
            _hide_ticks(ax)
            if c >= n:
                ax.set_frame_on(False)
                continue
            if r == 0:
                ax.imshow(images[c], cmap="gray", vmin=0, vmax=1)
                ax.set_title(captions[c], fontsize=8)
            else:
                heat = np.asarray(maps[r - 1][c], dtype=np.float32)
                peak = float(heat.max())
                heat = heat / peak if peak > 0 else heat
                ax.imshow(overlay(images[c], np.clip(heat, 0.0, 1.0), alpha=alpha))
                if peak_format:
                    ax.text(0.03, 0.03, peak_format.format(peak), transform=ax.transAxes, fontsize=7,
                            color="white", bbox={"facecolor": "black", "alpha": 0.5, "pad": 1.5, "lw": 0})
            _draw_box(ax, boxes[c])
            if c == 0:
                ax.set_ylabel("input" if r == 0 else layer_names[r - 1], fontsize=9)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no defect images with a box", ha="center", va="center",
                        transform=axes[0, 0].transAxes)
    fig.suptitle(title or "Attention maps of ResNet_att_2 (jet, scaled per map; dashed: defect box)", fontsize=11)
    return fig

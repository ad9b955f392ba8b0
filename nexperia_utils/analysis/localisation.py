"""Scoring heatmaps against defect boxes: boxes mapped to the model input, the pointing game, the heatmap
mass in the box, their means over images, and the most a layer's heatmaps could score (:func:`pointing_bound`).

Boxes are ``(x, y, w, h)`` in model-input pixels; a pixel is inside when its centre is. The heatmaps come
from :mod:`nexperia_utils.analysis.explain`, which tabulates these scores per class
(:func:`~nexperia_utils.analysis.explain.localisation_table`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pytorch_grad_cam.utils.image import scale_cam_image

from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.validation import check_int

Box = tuple[float, float, float, float]


# --------------------------------------------------------------------------- boxes
def _crop_offset(size: int, crop: int) -> int:
    """Offset of torchvision's CenterCrop along one axis (negative when it pads)."""
    if crop > size:
        return -((crop - size) // 2)
    return int(round((size - crop) / 2.0))


def map_box_to_input(
    box: Sequence[float], original_hw: tuple[int, int], resize: int, crop: int
) -> Box:
    """Map a box ``(x, y, w, h)`` in original pixels to the model input.

    Follows torchvision ``Resize(resize)`` (shorter side to ``resize``, the longer one
    ``int(resize * long / short)``) then ``CenterCrop(crop)`` (offset ``round((size - crop) / 2)``
    with Python's rounding, or zero padding when the crop is larger). Coordinates are continuous
    pixel edges (``x`` = left edge). The result is clipped to the crop; a box outside it comes
    back with zero width or height.
    """
    x, y, w, h = _check_box(box)
    height, width = (int(v) for v in original_hw)
    if height < 1 or width < 1 or resize < 1 or crop < 1:
        raise ConfigError(f"Sizes must be positive; got original_hw={original_hw}, resize={resize}, crop={crop}.")
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    scale_x, scale_y = new_w / width, new_h / height
    left, top = _crop_offset(new_w, crop), _crop_offset(new_h, crop)
    x0, x1 = x * scale_x - left, (x + w) * scale_x - left
    y0, y1 = y * scale_y - top, (y + h) * scale_y - top
    x0, x1 = (min(max(v, 0.0), float(crop)) for v in (x0, x1))
    y0, y1 = (min(max(v, 0.0), float(crop)) for v in (y0, y1))
    return (x0, y0, x1 - x0, y1 - y0)


def _check_box(box: Sequence[float]) -> Box:
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise DataError(f"A box must be four numbers (x, y, w, h); got {box!r}.") from exc
    if not all(np.isfinite([x, y, w, h])) or w < 0 or h < 0:
        raise DataError(f"A box (x, y, w, h) needs finite values and w, h >= 0; got {box!r}.")
    return x, y, w, h


def _box_mask(shape: tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """Pixels whose centres lie inside the box (edges included)."""
    x, y, w, h = _check_box(box)
    rows = np.arange(shape[0]) + 0.5
    cols = np.arange(shape[1]) + 0.5
    inside_rows = (rows >= y) & (rows <= y + h)
    inside_cols = (cols >= x) & (cols <= x + w)
    return inside_rows[:, None] & inside_cols[None, :]


def _check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    values = np.asarray(heatmap, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise DataError(f"A heatmap must be a non-empty (H, W) array; got shape {values.shape}.")
    if not np.isfinite(values).all() or values.min() < 0:
        raise DataError("A heatmap must hold finite, non-negative values.")
    return values


def _scored_mask(shape: tuple[int, int], box: Sequence[float] | None) -> np.ndarray | None:
    """The box's pixel mask (:func:`_box_mask`), or None for a box that is not scored: None, of zero
    width or height (e.g. cropped away by :func:`map_box_to_input`), or covering no pixel centre."""
    if box is None:
        return None
    _, _, w, h = _check_box(box)
    mask = _box_mask(shape, box)
    return mask if w > 0 and h > 0 and mask.any() else None


def pointing_game(heatmap: np.ndarray, box: Sequence[float]) -> bool:
    """Whether the heatmap's maximum lies inside the box ``(x, y, w, h)`` (model-input pixels).

    A pixel is inside when its centre is. With several maximal pixels (an upsampled coarse map
    has a plateau) the point is the maximal pixel nearest to their centroid. A constant heatmap
    points nowhere: a miss.
    """
    values = _check_heatmap(heatmap)
    peak = values.max()
    if peak == values.min():
        return False
    rows, cols = np.nonzero(values == peak)
    nearest = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    return bool(_box_mask(values.shape, box)[rows[nearest], cols[nearest]])


def grid_peak_pixels(grid: int, image_size: int) -> np.ndarray:
    """Where the maximum of a ``grid`` x ``grid`` map can land once pytorch-grad-cam upsamples it to
    ``image_size`` (``scale_cam_image``: bilinear): an ``(image_size, image_size)`` mask of the pixels
    nearest to a node of the grid. A bilinear interpolation peaks next to its largest node, so the
    pointing-game pixel of any heatmap read at that layer is one of them. A 1x1 map upsamples to a
    constant heatmap, which points nowhere: an empty mask."""
    check_int("grid", grid, 1)
    check_int("image_size", image_size, 1)
    mask = np.zeros((image_size, image_size), dtype=bool)
    if grid == 1:
        return mask
    for k in range(grid * grid):
        one_hot = np.zeros((1, grid, grid), dtype=np.float32)
        one_hot.flat[k] = 1.0
        up = scale_cam_image(one_hot, (image_size, image_size))[0]
        mask |= up == up.max()
    return mask


def pointing_bound(boxes: Sequence[Sequence[float] | None], grid: int, image_size: int) -> float:
    """The most any heatmap of a ``grid`` x ``grid`` layer can score in the pointing game on these boxes
    (``image_size`` pixels): the share of the boxes holding a pixel of :func:`grid_peak_pixels`. Boxes
    that are None or empty are skipped as in :func:`localisation_scores`; NaN when none is left."""
    peaks = grid_peak_pixels(grid, image_size)
    masks = [_scored_mask(peaks.shape, box) for box in boxes]
    hits = [bool((inside & peaks).any()) for inside in masks if inside is not None]
    return float(np.mean(hits)) if hits else float("nan")


def mass_in_box(heatmap: np.ndarray, box: Sequence[float]) -> float:
    """Share of the heatmap's total mass on pixels inside the box (0 for an all-zero heatmap)."""
    values = _check_heatmap(heatmap)
    total = values.sum()
    if total <= 0:
        return 0.0
    return float(values[_box_mask(values.shape, box)].sum() / total)


def localisation_scores(heatmaps: np.ndarray, boxes: Sequence[Sequence[float] | None]) -> dict[str, float]:
    """Pointing-game hit rate and mean mass in box over the images that have a box.

    Args:
        heatmaps: ``(N, H, W)`` heatmaps.
        boxes: one box ``(x, y, w, h)`` in the heatmaps' pixels per image, or ``None``. Boxes of
            zero area (e.g. cropped away by :func:`map_box_to_input`) are skipped.

    Returns:
        ``{"pointing_game": hit rate, "mass_in_box": mean share, "n": images scored,
        "n_skipped_empty_box": boxes of zero area}``; the rates are NaN when ``n == 0``.
    """
    maps = np.asarray(heatmaps)
    if maps.ndim != 3:
        raise DataError(f"heatmaps must be (N, H, W); got shape {maps.shape}.")
    if len(boxes) != len(maps):
        raise DataError(f"Got {len(maps)} heatmaps but {len(boxes)} boxes; pass one box (or None) per heatmap.")
    hits: list[bool] = []
    masses: list[float] = []
    empty = 0
    for heatmap, box in zip(maps, boxes):
        if box is None:
            continue
        if _scored_mask(heatmap.shape, box) is None:
            empty += 1
            continue
        hits.append(pointing_game(heatmap, box))
        masses.append(mass_in_box(heatmap, box))
    n = len(hits)
    return {
        "pointing_game": float(np.mean(hits)) if n else float("nan"),
        "mass_in_box": float(np.mean(masses)) if n else float("nan"),
        "n": n,
        "n_skipped_empty_box": empty,
    }

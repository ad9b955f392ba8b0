"""Defect boxes: read from a CSV (ours or Kaggle's ``defect_area.csv``) and mapped to the model input.

A box is ``(x, y, w, h)`` in the original image's pixels (x, y = top-left corner). The model sees
``Resize(resize_size_for(image_size))`` then ``CenterCrop(image_size)``; :func:`input_boxes` maps
each image's box through that (:func:`nexperia_utils.analysis.localisation.map_box_to_input`), reading the
original size from the file header.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from nexperia_utils.errors import DataError
from nexperia_utils.analysis.localisation import map_box_to_input
from nexperia_utils.data.transforms import resize_size_for

#: A box ``(x, y, w, h)``.
Box = tuple[float, float, float, float]


def image_size_hw(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file, from its header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise DataError(f"Image {path} does not exist; check the data root.") from None
    return height, width


def read_boxes(path: Path) -> pd.DataFrame:
    """Defect boxes from a CSV: ``image_id, x, y, w, h`` (original pixels) or the Kaggle stage-2
    ``defect_area.csv`` layout (``id, x_1, y_1, x_2, y_2``). Several boxes of one image are merged
    into their enclosing box."""
    from nexperia_utils.kaggle.layouts import read_defect_area

    path = Path(path)
    if not path.is_file():
        raise DataError(f"box CSV {path} does not exist; pass a CSV with image_id,x,y,w,h (or Kaggle's "
                        f"defect_area.csv) or leave the parameter empty")
    header = pd.read_csv(path, nrows=0).columns.tolist()
    if "x_1" in header:
        boxes = read_defect_area(path)
    else:
        missing = [c for c in ("image_id", "x", "y", "w", "h") if c not in header]
        if missing:
            raise DataError(f"box CSV {path} lacks the column(s) {missing}; expected image_id,x,y,w,h "
                            f"or id,x_1,y_1,x_2,y_2")
        boxes = pd.read_csv(path, dtype={"image_id": str})[["image_id", "x", "y", "w", "h"]]
        boxes = boxes.dropna(subset=["x", "y", "w", "h"])
        values = boxes[["x", "y", "w", "h"]].apply(pd.to_numeric, errors="coerce")
        if values.isna().any().any() or (values[["w", "h"]] < 0).any().any():
            raise DataError(f"box CSV {path}: x, y, w, h must be numbers with w, h >= 0")
        boxes[["x", "y", "w", "h"]] = values
    return _merge_boxes(boxes)


def _merge_boxes(boxes: pd.DataFrame) -> pd.DataFrame:
    frame = boxes.assign(image_id=boxes["image_id"].astype(str), x1=boxes["x"] + boxes["w"], y1=boxes["y"] + boxes["h"])
    merged = frame.groupby("image_id", sort=False).agg(x=("x", "min"), y=("y", "min"), x1=("x1", "max"), y1=("y1", "max"))
    merged["w"] = merged.pop("x1") - merged["x"]
    merged["h"] = merged.pop("y1") - merged["y"]
    return merged.reset_index()[["image_id", "x", "y", "w", "h"]].astype({"x": float, "y": float, "w": float, "h": float})


def box_lookup(boxes: pd.DataFrame | None) -> dict[str, Box]:
    """``image_id -> (x, y, w, h)`` for the rows of ``boxes`` (annotations or :func:`read_boxes`) with a
    finite box; ``{}`` for ``None`` (no annotations)."""
    if boxes is None:
        return {}
    missing = [c for c in ("image_id", "x", "y", "w", "h") if c not in boxes.columns]
    if missing:
        raise DataError(f"the boxes lack the column(s) {missing}; they need image_id, x, y, w, h.")
    frame = boxes.drop_duplicates("image_id")
    values = frame[["x", "y", "w", "h"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    frame = frame[np.isfinite(values).all(axis=1)]
    return {str(r.image_id): (float(r.x), float(r.y), float(r.w), float(r.h)) for r in frame.itertuples()}


def input_boxes(frame: pd.DataFrame, boxes: Mapping[str, Sequence[float]], data_root: Path, image_size: int
                ) -> list[Box | None]:
    """The box of each row of ``frame`` (columns image_id, path) in model-input pixels, or None.

    ``boxes`` is :func:`box_lookup`'s mapping. The input is ``Resize(resize_size_for(image_size))``
    then ``CenterCrop(image_size)``. The original image size is read from the file header (no
    decoding). The decoded-image cache fits every image to the Nexperia aspect ratio; for images of
    that ratio the mapping is exact to a pixel.
    """
    out: list[Box | None] = []
    resize = resize_size_for(image_size)
    for image_id, rel in zip(frame["image_id"].astype(str), frame["path"]):
        box = boxes.get(image_id)
        out.append(None if box is None else map_box_to_input(box, image_size_hw(Path(data_root) / rel), resize, image_size))
    return out

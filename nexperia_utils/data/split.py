"""The report's fixed train/validation/test split (section 3.1), saved and reused as CSV.

Per class, 10 % of the images (rounded half to even, at least one) are drawn for the test set;
10 % of the remaining images (again at least one) for the validation set; the rest is the training
set. A class with fewer than 10 images therefore gives exactly one image to test and one to
validation. With the batch-2 class counts this reproduces the published sizes exactly
(train 31,025 / val 3,447 / test 3,830).

A split is stored as a CSV file with the columns ``image_id, path, label, split`` and a JSON
sidecar ``<csv stem>.json`` holding the class list, the negative class, the seed, the data root,
the split hash and the creation time. Once written, a split is reused and never silently redrawn.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nexperia_utils.data.folders import class_names, negative_index
from nexperia_utils.errors import format_listing
from nexperia_utils.errors import DataError
from nexperia_utils.validation import check_int, check_number
from nexperia_utils.io import atomic_write_csv, atomic_write_text

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_COLUMNS: tuple[str, ...] = ("image_id", "path", "label", "split")
SIDECAR_KEYS: tuple[str, ...] = ("classes", "negative_class", "seed", "data_root", "hash", "created")


# --------------------------------------------------------------------------------------------
# Drawing a split
# --------------------------------------------------------------------------------------------
def _check_fraction(name: str, value: float) -> Fraction:
    """``value`` as an exact fraction (``0.1`` -> ``1/10``) after checking ``0 < value < 1``."""
    check_number(name, value, 0, 1, include_low=False, include_high=False)
    return Fraction(str(value))


def _check_seed(seed: int) -> int:
    """``seed`` as a Python int after checking it is a non-negative integer."""
    return check_int("seed", seed, 0)


def split_sizes(n: int, test_fraction: float = 0.1, val_fraction: float = 0.1) -> tuple[int, int, int]:
    """``(train, val, test)`` image counts for a class of ``n`` images.

    ``test = max(1, round(test_fraction * n))`` and ``val = max(1, round(val_fraction * (n - test)))``
    with Python's round-half-to-even computed on exact fractions (so ``0.1 * 135 = 13.5`` rounds to
    14 and ``0.1 * 625 = 62.5`` to 62). For the default fractions this is the report's rule: a
    class with fewer than 10 images gives exactly one image to test and one to validation. A class
    needs at least three images (one per split).
    """
    test_f = _check_fraction("test_fraction", test_fraction)
    val_f = _check_fraction("val_fraction", val_fraction)
    n = int(n)
    n_test = max(1, round(test_f * n))
    n_val = max(1, round(val_f * (n - n_test)))
    n_train = n - n_test - n_val
    if n_train < 1:
        raise DataError(
            f"A class of {n} image(s) cannot be split into train/val/test with test_fraction="
            f"{test_fraction} and val_fraction={val_fraction}: every split needs at least one image "
            "(so at least 3 images per class). Add images to the class, merge it into another, or "
            "remove its folder."
        )
    return n_train, n_val, n_test


def _check_frame(frame: pd.DataFrame, what: str = "The data frame") -> None:
    """A frame to split needs the columns image_id, path, label, at least one row and unique ids."""
    missing = [column for column in ("image_id", "path", "label") if column not in frame.columns]
    if missing:
        raise DataError(
            f"{what} lacks the column(s) {missing} (found {list(frame.columns)}); read the data with "
            "nexperia_utils.data.folders.load_dataset."
        )
    if frame.empty:
        raise DataError(f"{what} has no images; check the data root.")
    duplicated = sorted(set(frame.loc[frame["image_id"].duplicated(), "image_id"].astype(str)))
    if duplicated:
        raise DataError(
            f"{what} has {len(duplicated)} duplicate image id(s); image ids must be unique:\n"
            f"{format_listing(duplicated)}"
        )


def make_split(
    frame: pd.DataFrame, seed: int = 0, test_fraction: float = 0.1, val_fraction: float = 0.1
) -> pd.DataFrame:
    """Draw the per-class split of section 3.1; return ``frame`` plus a column ``split``.

    Rows are sorted by ``image_id`` first (and returned in that order), so the result depends only
    on the images and ``seed``, not on the input row order. One generator
    ``numpy.random.default_rng(seed)`` permutes each class in turn, classes in sorted order; the
    first ``test`` images of the permutation go to test, the next ``val`` to validation
    (sizes from :func:`split_sizes`).
    """
    seed = _check_seed(seed)
    _check_frame(frame)
    sizes = {label: split_sizes(int(count), test_fraction, val_fraction)
             for label, count in frame["label"].astype(str).value_counts().items()}
    ordered = frame.assign(image_id=frame["image_id"].astype(str), label=frame["label"].astype(str))
    ordered = ordered.sort_values("image_id", kind="mergesort").reset_index(drop=True)
    labels = ordered["label"].to_numpy()
    assignment = np.full(len(ordered), "train", dtype=object)
    rng = np.random.default_rng(seed)
    for label in sorted(sizes):
        _, n_val, n_test = sizes[label]
        members = rng.permutation(np.flatnonzero(labels == label))
        assignment[members[:n_test]] = "test"
        assignment[members[n_test:n_test + n_val]] = "val"
    return ordered.assign(split=assignment)


# --------------------------------------------------------------------------------------------
# Hash and counts
# --------------------------------------------------------------------------------------------
def split_hash(split: pd.DataFrame) -> str:
    """First 16 hex digits of the SHA-256 of the sorted ``(image_id, path, label, split)`` rows."""
    missing = [column for column in SPLIT_COLUMNS if column not in split.columns]
    if missing:
        raise DataError(f"Cannot hash a split without the column(s) {missing}; found {list(split.columns)}.")
    rows = sorted(zip(*(split[column].astype(str) for column in SPLIT_COLUMNS)))
    digest = hashlib.sha256()
    for row in rows:
        digest.update(("\t".join(row) + "\n").encode("utf-8"))
    return digest.hexdigest()[:16]


def split_counts(split: pd.DataFrame) -> pd.DataFrame:
    """Images per class (rows, sorted, plus a ``total`` row) and split (``train, val, test, total``)."""
    if "label" not in split.columns or "split" not in split.columns:
        raise DataError(f"split_counts needs the columns 'label' and 'split'; found {list(split.columns)}.")
    labels = split["label"].astype(str)
    if (labels == "total").any():
        raise DataError("A class named 'total' clashes with the total row of split_counts; rename that class.")
    table = pd.crosstab(labels, split["split"].astype(str))
    table = table.reindex(index=sorted(labels.unique()), columns=list(SPLITS), fill_value=0).astype(int)
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    table.index.name = "class"
    table.columns.name = None
    return table


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def default_split_path(data_root: Path, seed: int, splits_dir: Path = Path("data/splits")) -> Path:
    """``<splits_dir>/<name of the data root>-seed<seed>.csv``."""
    name = Path(data_root).resolve().name or "data"
    return Path(splits_dir) / f"{name}-seed{seed}.csv"


def sidecar_path(split_csv: Path) -> Path:
    """The JSON sidecar of a split CSV: the same folder and stem, suffix ``.json``."""
    split_csv = Path(split_csv)
    return split_csv.with_name(split_csv.stem + ".json")


def read_split_info(split_csv: Path) -> dict[str, Any]:
    """The sidecar of ``split_csv`` (classes, negative class, seed, data root, hash, created)."""
    sidecar = sidecar_path(split_csv)
    if not sidecar.is_file():
        raise DataError(
            f"The split {split_csv} has no sidecar {sidecar} (class list, seed, hash). Restore it, or "
            "redraw the split with load_or_create_split(..., overwrite=True)."
        )
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"The split sidecar {sidecar} is not valid JSON ({error}); restore it or redraw the split.") from error
    if not isinstance(info, dict):
        raise DataError(f"The split sidecar {sidecar} must hold a JSON object; restore it or redraw the split.")
    missing = [key for key in SIDECAR_KEYS if key not in info]
    if missing:
        raise DataError(f"The split sidecar {sidecar} lacks the key(s) {missing}; restore it or redraw the split.")
    classes = info["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DataError(f"'classes' in the split sidecar {sidecar} must be a non-empty list of names, got {classes!r}.")
    return info


def split_classes(split_csv: Path) -> list[str]:
    """The class list stored with a split (sorted class names; index = model output index)."""
    return list(read_split_info(split_csv)["classes"])


def read_split(split_csv: Path) -> pd.DataFrame:
    """Read and validate a split CSV and its sidecar.

    Refused with a :class:`DataError` naming the file: a missing CSV or sidecar, missing columns,
    empty ids or paths, unknown split names, labels that are not among the sidecar's classes,
    duplicate image ids, and content that no longer matches the hash stored in the sidecar.
    """
    split_csv = Path(split_csv)
    if not split_csv.is_file():
        raise DataError(
            f"Split file {split_csv} does not exist; create it with "
            "nexperia_utils.data.split.load_or_create_split(frame, split_csv, seed)."
        )
    try:
        split = pd.read_csv(split_csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"Split file {split_csv} is not a readable CSV file ({error}); redraw it with overwrite=True.") from error
    missing = [column for column in SPLIT_COLUMNS if column not in split.columns]
    if missing:
        raise DataError(
            f"Split file {split_csv} lacks the column(s) {missing} (found {list(split.columns)}); it "
            f"needs {list(SPLIT_COLUMNS)}. Redraw it with load_or_create_split(..., overwrite=True)."
        )
    split = split[list(SPLIT_COLUMNS)]
    info = read_split_info(split_csv)
    classes = info["classes"]

    empty = [f"line {i + 2}" for i, (image_id, path) in enumerate(zip(split["image_id"], split["path"]))
             if not image_id.strip() or not path.strip()]
    if empty:
        raise DataError(f"Split file {split_csv} has rows with an empty image_id or path:\n{format_listing(empty)}")
    bad_split = [f"line {i + 2}: {value!r}" for i, value in enumerate(split["split"]) if value not in SPLITS]
    if bad_split:
        raise DataError(
            f"Split file {split_csv} has {len(bad_split)} row(s) with an unknown split name (allowed: "
            f"{list(SPLITS)}):\n{format_listing(bad_split)}"
        )
    unknown = sorted(set(split["label"]) - set(classes))
    if unknown:
        raise DataError(
            f"Unknown classes in a split: {split_csv} has labels {unknown} that are not among the classes "
            f"{classes} stored in {sidecar_path(split_csv)}. Redraw the split with overwrite=True."
        )
    duplicated = sorted(set(split.loc[split["image_id"].duplicated(), "image_id"]))
    if duplicated:
        raise DataError(
            f"Split file {split_csv} lists {len(duplicated)} image id(s) more than once:\n"
            f"{format_listing(duplicated)}\nRedraw the split with overwrite=True."
        )
    actual = split_hash(split)
    if actual != info["hash"]:
        raise DataError(
            f"Split file {split_csv} does not match the hash stored in {sidecar_path(split_csv)} "
            f"({actual} != {info['hash']}): it was changed after it was drawn. Restore it, or redraw "
            "the split with load_or_create_split(..., overwrite=True)."
        )
    return split.reset_index(drop=True)


def _differences(saved: pd.DataFrame, frame: pd.DataFrame) -> dict[str, list[str]]:
    """Images added to / removed from ``frame`` since ``saved`` was drawn, relabelled or moved."""
    columns = ["image_id", "label", "path"]
    old = saved[columns].astype(str)
    new = frame[columns].astype(str)
    merged = old.merge(new, on="image_id", how="outer", suffixes=("_old", "_new"), indicator=True)
    merged = merged.sort_values("image_id", kind="mergesort")
    both = merged[merged["_merge"] == "both"]
    relabelled = both[both["label_old"] != both["label_new"]]
    moved = both[both["path_old"] != both["path_new"]]
    added = merged[merged["_merge"] == "right_only"]
    removed = merged[merged["_merge"] == "left_only"]
    return {
        "added": [f"{i} ({label})" for i, label in zip(added["image_id"], added["label_new"])],
        "removed": [f"{i} ({label})" for i, label in zip(removed["image_id"], removed["label_old"])],
        "relabelled": [
            f"{i}: {a} -> {b}" for i, a, b in zip(relabelled["image_id"], relabelled["label_old"], relabelled["label_new"])
        ],
        "moved": [f"{i}: {a} -> {b}" for i, a, b in zip(moved["image_id"], moved["path_old"], moved["path_new"])],
    }


def load_or_create_split(
    frame: pd.DataFrame,
    split_csv: Path,
    seed: int = 0,
    overwrite: bool = False,
    negative_class: str = "good",
    data_root: Path | None = None,
    test_fraction: float = 0.1,
    val_fraction: float = 0.1,
) -> pd.DataFrame:
    """Reuse the split saved in ``split_csv``, or draw it with :func:`make_split` and save it.

    An existing split is read with :func:`read_split` and checked against ``frame``: the same image
    ids, labels and paths, and the same negative class. A mismatch raises a :class:`DataError`
    that counts the added, removed, relabelled and moved images; it is never redrawn silently
    (``seed`` does not matter when reusing). With ``overwrite=True`` a new split is drawn and
    replaces the files. The CSV and its sidecar are written atomically and only after the new
    split passed every check. Returns the columns ``image_id, path, label, split``.
    """
    split_csv = Path(split_csv)
    seed = _check_seed(seed)
    _check_frame(frame)
    if split_csv.exists() and not overwrite:
        saved = read_split(split_csv)
        info = read_split_info(split_csv)
        differences = _differences(saved, frame)
        if any(differences.values()):
            counts = ", ".join(f"{len(items)} {kind}" for kind, items in differences.items())
            examples = "\n".join(
                f"  {kind}:\n{format_listing(items, limit=5)}" for kind, items in differences.items() if items
            )
            raise DataError(
                f"The saved split {split_csv} does not match the data ({counts} image(s)):\n{examples}\n"
                "A saved split is never redrawn silently: pass overwrite=True to draw a new split "
                "(train/val/test membership changes), or choose another split file."
            )
        if info["negative_class"] != negative_class:
            raise DataError(
                f"The saved split {split_csv} was drawn with negative class {info['negative_class']!r}, "
                f"not {negative_class!r}; pass negative_class={info['negative_class']!r} or redraw with overwrite=True."
            )
        if info["seed"] != seed:
            logger.info("Reusing split %s drawn with seed %s (requested seed %s ignored)", split_csv, info["seed"], seed)
        else:
            logger.info("Reusing split %s (hash %s)", split_csv, info["hash"])
        return saved

    split = make_split(frame, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction)
    split = split[list(SPLIT_COLUMNS)]
    classes = class_names(split)
    negative_index(classes, negative_class)
    info = {
        "classes": classes,
        "negative_class": negative_class,
        "seed": seed,
        "data_root": None if data_root is None else Path(data_root).as_posix(),
        "hash": split_hash(split),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "test_fraction": float(test_fraction),
        "val_fraction": float(val_fraction),
        "counts": {name: int((split["split"] == name).sum()) for name in SPLITS},
    }
    atomic_write_csv(split_csv, split)
    atomic_write_text(sidecar_path(split_csv), json.dumps(info, indent=2) + "\n")
    logger.info(
        "Wrote split %s (seed %s, hash %s): %s", split_csv, seed, info["hash"],
        ", ".join(f"{name} {count}" for name, count in info["counts"].items()),
    )
    return split.reset_index(drop=True)

"""A finished synthetic set in the layouts of the two Kaggle competitions, with the answer key kept apart."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.io import atomic_write_csv
from nexperia_utils.data.synthetic.generate import (
    is_complete, read_annotations, _commit, _is_kaggle_entry, _partial_dir, _prepare_target,
)
from nexperia_utils.data.synthetic.spec import (
    ANSWER_KEY_SUFFIX, batch_classes, GOOD, IMAGE_SUFFIX, JPEG_QUALITY, _round_half_up,
)

logger = logging.getLogger(__name__)


def answer_key_path(out_root: Path) -> Path:
    """Where :func:`export_kaggle` keeps the hidden test labels: beside, not inside, ``out_root``."""
    out_root = Path(out_root)
    return out_root.parent / f"{out_root.name}{ANSWER_KEY_SUFFIX}"


def _stratified_test(frame: pd.DataFrame, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of test images: per true class round(n * fraction) (at least 1 if n >= 2)."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(frame), dtype=bool)
    for name in batch_classes(3):  # in a batch-2 set the batch-3 classes are simply absent
        idx = np.flatnonzero(frame["true_class"].to_numpy() == name)
        if len(idx) < 2:
            continue
        n_test = min(len(idx) - 1, max(1, _round_half_up(len(idx) * test_fraction)))
        is_test[rng.choice(idx, size=n_test, replace=False)] = True
    return is_test


def export_kaggle(source_root: Path, out_root: Path, stage: int = 1, test_fraction: float = 0.1, seed: int = 0,
                  overwrite: bool = False) -> Path:
    """Write a finished synthetic set in the Kaggle stage-1 or stage-2 layout; returns ``out_root``.

    Stage 1: ``train/good_0``, ``train/bad_1`` (filed labels: noisy defects stay in ``good_0``)
    and unlabelled ``test/all_tests``, grey JPEG (quality 95). Stage 2: ``train/train_contest/
    good_all``, ``train/train_contest/defect``, ``test/test_contest/test`` as grey BMP, plus
    ``submission_sample.csv`` (``id,defect_score`` = 0.5 per test image) and ``defect_area.csv``
    (``id,x_1,y_1,x_2,y_2`` with ``x_2 = x + w``, ``y_2 = y + h``, for train defect images with a
    box). A stratified ``test_fraction`` per true class forms the test set. The answer key
    (``id,label,true_class``; ``label`` 1 = defect by true class) is written to
    :func:`answer_key_path`, outside ``out_root``.
    """
    source_root, out_root = Path(source_root).resolve(), Path(out_root).resolve()
    if stage not in (1, 2):
        raise ConfigError(f"stage={stage!r} must be 1 or 2")
    if not (0.0 < float(test_fraction) < 1.0):
        raise ConfigError(f"test_fraction={test_fraction!r} must lie strictly between 0 and 1")
    if not is_complete(source_root):
        raise DataError(f"{source_root} is not a finished synthetic data set; generate it first with "
                        f"`python -m nexperia_utils.data.synthetic --out {source_root}`")
    if out_root == source_root or source_root in out_root.parents:
        raise DataError(f"the Kaggle output {out_root} must not lie inside the source data set {source_root}")
    key_path = answer_key_path(out_root)
    _prepare_target(out_root, overwrite, _is_kaggle_entry, "Kaggle export")
    if key_path.exists() and not overwrite:
        raise DataError(f"{key_path} already exists; pass overwrite=True (command line: --overwrite) to replace it")

    frame = read_annotations(source_root)
    is_test = _stratified_test(frame, float(test_fraction), seed)
    if stage == 1:
        ext, fmt, options = ".jpg", "JPEG", {"quality": JPEG_QUALITY}
        train_good, train_bad, test_dir = Path("train/good_0"), Path("train/bad_1"), Path("test/all_tests")
    else:
        ext, fmt, options = ".bmp", "BMP", {}
        train_good = Path("train/train_contest/good_all")
        train_bad = Path("train/train_contest/defect")
        test_dir = Path("test/test_contest/test")

    partial = _partial_dir(out_root)
    try:
        for sub in (train_good, train_bad, test_dir):
            (partial / sub).mkdir(parents=True)
        for iid, label, test in zip(frame["image_id"], frame["label"], is_test):
            folder = test_dir if test else (train_good if label == GOOD else train_bad)
            with Image.open(source_root / label / f"{iid}{IMAGE_SUFFIX}") as image:
                image.convert("L").save(partial / folder / f"{iid}{ext}", format=fmt, **options)
        test_ids = sorted(frame.loc[is_test, "image_id"])
        if stage == 2:
            atomic_write_csv(partial / "submission_sample.csv",
                             pd.DataFrame({"id": test_ids, "defect_score": [0.5] * len(test_ids)}))
            train_defect = frame[~is_test & (frame["label"] != GOOD) & frame["x"].notna()]
            area = pd.DataFrame({
                "id": train_defect["image_id"].to_numpy(),
                "x_1": train_defect["x"].to_numpy(int),
                "y_1": train_defect["y"].to_numpy(int),
                "x_2": (train_defect["x"] + train_defect["w"]).to_numpy(int),
                "y_2": (train_defect["y"] + train_defect["h"]).to_numpy(int),
            })
            atomic_write_csv(partial / "defect_area.csv", area)
        _commit(partial, out_root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    test_rows = frame[is_test].sort_values("image_id")
    key = pd.DataFrame({
        "id": test_rows["image_id"].to_numpy(),
        "label": (test_rows["true_class"] != GOOD).astype(int).to_numpy(),
        "true_class": test_rows["true_class"].to_numpy(),
    })
    atomic_write_csv(key_path, key)
    logger.info("exported %s as Kaggle stage %d to %s (%d train, %d test; answer key %s)", source_root, stage,
                out_root, int((~is_test).sum()), int(is_test.sum()), key_path)
    return out_root

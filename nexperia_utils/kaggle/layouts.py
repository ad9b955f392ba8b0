"""Kaggle competitions: reading the stage-1 and stage-2 layouts, writing and validating submissions.

Stage 1 (``semi-conductor-image-classification-first``)::

    root/train/good_0/*.jpg    root/train/bad_1/*.jpg    root/test/all_tests/*.jpg

Stage 2 (``semi-conductor-image-classification-second-stage``)::

    root/train/train_contest/good_all/*.bmp    root/train/train_contest/defect/*.bmp
    root/test/test_contest/test/*.bmp
    root/submission_sample.csv   (optional; id,defect_score)
    root/defect_area.csv         (optional; id,x_1,y_1,x_2,y_2)

Both competitions score the ROC AUC of a defect probability (defect = positive class). Classes
are always mapped by folder *name*: an image-folder loader sorts ``bad_1`` before ``good_0``, so
its index 1 is *not* "bad".

This module must not import :mod:`nexperia_utils.data.folders` at module level (``data.py`` imports it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from nexperia_utils.errors import MAX_PREVIEWED, ConfigError, DataError, preview

logger = logging.getLogger(__name__)

COMPETITIONS: dict[int, str] = {
    1: "semi-conductor-image-classification-first",
    2: "semi-conductor-image-classification-second-stage",
}
SUBMISSION_COLUMNS: dict[int, tuple[str, str]] = {1: ("id", "label"), 2: ("id", "defect_score")}

#: Training class folders per stage, relative to the root, as ``(negative, positive)`` names.
TRAIN_FOLDERS: dict[int, Path] = {1: Path("train"), 2: Path("train/train_contest")}
CLASS_NAMES: dict[int, tuple[str, str]] = {1: ("good_0", "bad_1"), 2: ("good_all", "defect")}
#: Unlabelled test image folder per stage, relative to the root.
TEST_FOLDERS: dict[int, Path] = {1: Path("test/all_tests"), 2: Path("test/test_contest/test")}
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
SAMPLE_SUBMISSION_NAME = "submission_sample.csv"
DEFECT_AREA_NAME = "defect_area.csv"
DEFECT_AREA_COLUMNS: tuple[str, ...] = ("id", "x_1", "y_1", "x_2", "y_2")


@dataclass
class KaggleData:
    """One competition's data as read from disk.

    ``train`` has columns ``image_id, path, label`` (``path`` POSIX, relative to ``root``; ``label``
    the class folder name); ``test`` has ``image_id, path``. ``boxes`` (stage 2 only, when
    ``defect_area.csv`` exists) has ``image_id, x, y, w, h``.
    """

    stage: int
    root: Path
    train: pd.DataFrame
    test: pd.DataFrame
    negative_class: str
    boxes: pd.DataFrame | None = None

    @property
    def positive_class(self) -> str:
        """Name of the defect class folder (``bad_1`` or ``defect``)."""
        return CLASS_NAMES[self.stage][1]

    @property
    def competition(self) -> str:
        """Kaggle competition slug of this stage."""
        return COMPETITIONS[self.stage]


def check_stage(stage: int) -> int:
    if stage not in COMPETITIONS:
        raise ConfigError(f"Unknown Kaggle stage {stage!r}: use 1 ({COMPETITIONS[1]}) or 2 ({COMPETITIONS[2]}).")
    return int(stage)


def _expected_layout(stage: int) -> str:
    neg, pos = CLASS_NAMES[stage]
    train = TRAIN_FOLDERS[stage]
    return f"{(train / neg).as_posix()}/, {(train / pos).as_posix()}/, {TEST_FOLDERS[stage].as_posix()}/"


def _list_dir(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())


def detect_stage(root: Path) -> int | None:
    """Return 1 or 2 when ``root`` holds that stage's training class folders, else ``None``.

    Stage 1 needs ``train/good_0`` and ``train/bad_1``; stage 2 ``train/train_contest/good_all``
    and ``train/train_contest/defect``. A root holding both layouts is ambiguous: DataError.
    """
    root = Path(root)
    found = [
        stage
        for stage in sorted(COMPETITIONS)
        if all((root / TRAIN_FOLDERS[stage] / name).is_dir() for name in CLASS_NAMES[stage])
    ]
    if len(found) > 1:
        raise DataError(
            f"{root} holds both the stage-1 ({_expected_layout(1)}) and stage-2 ({_expected_layout(2)}) "
            "layouts; pass stage=1 or stage=2 explicitly, or keep each competition in its own folder."
        )
    return found[0] if found else None


def _layout_not_recognised(root: Path) -> DataError:
    hint = ""
    if any((root / name).is_dir() for name in (*CLASS_NAMES[1], *CLASS_NAMES[2], "train_contest")):
        hint = " It looks like root points inside train/: point it at the folder that holds train/ and test/."
    return DataError(
        f"Kaggle layout not recognised under {root}. Expected stage 1 ({COMPETITIONS[1]}): "
        f"{_expected_layout(1)}; or stage 2 ({COMPETITIONS[2]}): {_expected_layout(2)}. "
        f"Found at the top level: {_list_dir(root) or 'nothing'}; in train/: {_list_dir(root / 'train') or 'nothing'}; "
        f"in train/train_contest/: {_list_dir(root / 'train/train_contest') or 'nothing'}.{hint} "
        "Fix: unzip the competition data so that root holds train/ and test/, or pass stage= explicitly."
    )


def _image_files(folder: Path, what: str) -> list[Path]:
    """Image files directly inside ``folder`` (sorted); DataError if missing or empty."""
    if not folder.is_dir():
        raise DataError(
            f"The {what} folder {folder} is missing. Fix: restore it from the competition download "
            f"(kaggle competitions download) or pass the right root."
        )
    files, skipped = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES:
            files.append(entry)
        else:
            skipped.append(entry.name)
    if skipped:
        logger.warning("Ignoring %d non-image entries in %s: %s", len(skipped), folder, preview(skipped))
    if not files:
        raise DataError(
            f"The {what} folder {folder} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))}). "
            "Fix: re-extract the competition archive; the folder must not be empty."
        )
    return files


def duplicates(values: Sequence[str]) -> list[str]:
    series = pd.Series(list(values), dtype=object)
    return sorted(series[series.duplicated()].unique().tolist())


def _strip_image_suffix(value: str) -> str:
    path = Path(value)
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else value


def read_id_csv(csv_path: Path, required: Sequence[str]) -> pd.DataFrame:
    """Read a CSV keeping ``id`` as text; DataError naming missing columns."""
    try:
        frame = pd.read_csv(csv_path, dtype={"id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read {csv_path} as CSV ({exc}). Fix: re-download the file.") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{csv_path} lacks column(s) {missing}; expected {list(required)}, found {list(frame.columns)}. "
            "Fix: use the file from the competition download."
        )
    if frame["id"].isna().any():
        rows = (np.flatnonzero(frame["id"].isna().to_numpy()) + 2).tolist()
        raise DataError(f"{csv_path} has empty ids on line(s) {preview(rows)}. Fix: remove or complete those rows.")
    frame["id"] = frame["id"].astype(str).str.strip().map(_strip_image_suffix)
    return frame


def read_defect_area(csv_path: Path) -> pd.DataFrame:
    """Read stage 2's ``defect_area.csv`` (``id,x_1,y_1,x_2,y_2``) as boxes ``image_id, x, y, w, h``.

    ``x, y`` is the top-left corner and ``w = x_2 - x_1``, ``h = y_2 - y_1``. An image may carry
    several boxes (one row each). Non-numeric or inverted coordinates raise a DataError.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"Defect box file {csv_path} does not exist. Fix: pass the path of defect_area.csv.")
    frame = read_id_csv(csv_path, DEFECT_AREA_COLUMNS)
    coords = {}
    for column in DEFECT_AREA_COLUMNS[1:]:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            rows = (np.flatnonzero(bad.to_numpy()) + 2).tolist()
            raise DataError(
                f"{csv_path}: column {column} is empty or not a finite number on line(s) {preview(rows)}. "
                "Fix: correct or remove those rows."
            )
        coords[column] = values
    boxes = pd.DataFrame(
        {
            "image_id": frame["id"],
            "x": coords["x_1"],
            "y": coords["y_1"],
            "w": coords["x_2"] - coords["x_1"],
            "h": coords["y_2"] - coords["y_1"],
        }
    ).reset_index(drop=True)
    inverted = (boxes["w"] < 0) | (boxes["h"] < 0)
    if inverted.any():
        rows = (np.flatnonzero(inverted.to_numpy()) + 2).tolist()
        raise DataError(
            f"{csv_path}: x_2 < x_1 or y_2 < y_1 on line(s) {preview(rows)}; boxes must be given as "
            "top-left (x_1, y_1) and bottom-right (x_2, y_2). Fix: correct those rows."
        )
    return boxes


def _frame_for(files: Sequence[Path], root: Path, label: str | None) -> pd.DataFrame:
    data: dict[str, list[str]] = {
        "image_id": [f.stem for f in files],
        "path": [f.relative_to(root).as_posix() for f in files],
    }
    if label is not None:
        data["label"] = [label] * len(files)
    return pd.DataFrame(data)


def _raise_on_duplicate_ids(frame: pd.DataFrame, what: str, fix: str) -> None:
    dups = duplicates(frame["image_id"].tolist())
    if dups:
        paths = frame.loc[frame["image_id"].isin(dups[:MAX_PREVIEWED]), "path"].tolist()
        raise DataError(
            f"{len(dups)} duplicate image id(s) in the {what}: {preview(dups)} (files {preview(paths, 2 * MAX_PREVIEWED)}). "
            f"Ids are file names without extension and must be unique. Fix: {fix}"
        )


def _check_sample_submission(csv_path: Path, test: pd.DataFrame, stage: int) -> pd.DataFrame:
    """Check the sample submission's ids equal the test folder's; return ``test`` in the sample's order."""
    sample = read_id_csv(csv_path, SUBMISSION_COLUMNS[stage])
    dups = duplicates(sample["id"].tolist())
    if dups:
        raise DataError(f"{csv_path} lists {len(dups)} id(s) more than once: {preview(dups)}. Fix: re-download it.")
    sample_ids, test_ids_ = set(sample["id"]), set(test["image_id"])
    only_sample = sorted(sample_ids - test_ids_)
    only_test = sorted(test_ids_ - sample_ids)
    if only_sample or only_test:
        parts = []
        if only_sample:
            parts.append(f"{len(only_sample)} id(s) in the sample but not in the test folder: {preview(only_sample)}")
        if only_test:
            parts.append(f"{len(only_test)} test image(s) missing from the sample: {preview(only_test)}")
        raise DataError(
            f"{csv_path} does not match the test folder {TEST_FOLDERS[stage].as_posix()}/: " + "; ".join(parts)
            + ". Fix: re-extract the test images and the sample submission from the same download."
        )
    order = {image_id: i for i, image_id in enumerate(sample["id"])}
    return test.sort_values("image_id", key=lambda s: s.map(order)).reset_index(drop=True)


def read_kaggle_layout(root: Path, stage: int | None = None) -> KaggleData:
    """Read a stage-1 or stage-2 competition folder (``stage`` detected when ``None``).

    Training labels are the class folder names; ``negative_class`` is the good folder's name.
    Ids (file names without extension) must be unique within train and within test; an id in both
    is only logged as a warning (the public data has a few cross duplicates). For stage 2, an
    existing ``submission_sample.csv`` must list exactly the test ids (the test frame then follows
    its order) and an existing ``defect_area.csv`` is read into ``boxes``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Kaggle data folder {root} does not exist. Fix: download and unzip the competition data there.")
    if stage is None:
        stage = detect_stage(root)
        if stage is None:
            raise _layout_not_recognised(root)
        logger.info("Detected Kaggle stage %d layout (%s) in %s", stage, COMPETITIONS[stage], root)
    stage = check_stage(stage)

    negative, positive = CLASS_NAMES[stage]
    train_parts = []
    for name in (negative, positive):
        folder = root / TRAIN_FOLDERS[stage] / name
        if not folder.is_dir():
            raise DataError(
                f"Stage-{stage} training folder {folder} is missing; stage {stage} expects {_expected_layout(stage)} "
                f"under {root}. Found in {folder.parent}: {_list_dir(folder.parent) or 'nothing'}. "
                "Fix: point root at the unzipped competition data or pass the other stage."
            )
        train_parts.append(_frame_for(_image_files(folder, f"stage-{stage} training class '{name}'"), root, name))
    train = pd.concat(train_parts, ignore_index=True)
    _raise_on_duplicate_ids(
        train, f"stage-{stage} training folders", "remove the duplicate files (an image must sit in one class folder only)."
    )

    test_folder = root / TEST_FOLDERS[stage]
    test = _frame_for(_image_files(test_folder, f"stage-{stage} test"), root, None)
    _raise_on_duplicate_ids(test, f"test folder {test_folder}", "keep one file per id in the test folder.")

    cross = sorted(set(train["image_id"]) & set(test["image_id"]))
    if cross:
        logger.warning("%d image id(s) appear in both train and test of %s: %s", len(cross), root, preview(cross))

    boxes = None
    if stage == 2:
        sample_csv = root / SAMPLE_SUBMISSION_NAME
        if sample_csv.is_file():
            test = _check_sample_submission(sample_csv, test, stage)
        area_csv = root / DEFECT_AREA_NAME
        if area_csv.is_file():
            boxes = read_defect_area(area_csv)
            unknown = sorted(set(boxes["image_id"]) - set(train.loc[train["label"] == positive, "image_id"]))
            if unknown:
                logger.warning(
                    "%d id(s) in %s are not images of train/train_contest/%s: %s",
                    len(unknown), area_csv, positive, preview(unknown),
                )
    logger.info(
        "Read Kaggle stage %d from %s: %d train (%d %s, %d %s), %d test",
        stage, root, len(train), int((train["label"] == negative).sum()), negative,
        int((train["label"] == positive).sum()), positive, len(test),
    )
    return KaggleData(stage=stage, root=root, train=train, test=test, negative_class=negative, boxes=boxes)


def test_ids(data: KaggleData) -> list[str]:
    """The ids a submission for ``data`` must contain, in the test frame's order."""
    return [str(i) for i in data.test["image_id"]]


# Keep pytest from collecting this function when a test module imports it by name.
test_ids.__test__ = False  # type: ignore[attr-defined]

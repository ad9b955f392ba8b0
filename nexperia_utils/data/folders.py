"""Reading image data sets: folder-per-class trees, CSV manifests and the Kaggle layouts.

Every reader returns a :class:`pandas.DataFrame` with the columns

* ``image_id`` -- the file name without its extension (unique in a data set),
* ``path`` -- the POSIX path of the image relative to the data root,
* ``label`` -- the class name.

The class list is always derived from the data (sorted, as an image-folder loader sorts it) and
the negative ("good") class is looked up by name, never by position.

Bad input is refused with a :class:`~nexperia_utils.errors.DataError` whose message names every
offending file or folder (the first :data:`nexperia_utils.errors.MAX_LISTED` of each kind plus a count) and says how to
fix it. Nothing is dropped silently: with ``skip_bad=True`` unreadable files are left out, but a
warning lists them.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

import pandas as pd

from nexperia_utils.data.images import IMAGE_EXTENSIONS, drop_or_raise_bad_images
from nexperia_utils.errors import ConfigError, DataError, format_listing

logger = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = ("image_id", "path", "label")
"""Columns of every frame returned by the readers."""

DEFAULT_NEGATIVE_CLASS = "good"


# --------------------------------------------------------------------------------------------
# Error formatting
# --------------------------------------------------------------------------------------------
def _problem_report(source: str, problems: list[tuple[str, Sequence[str]]]) -> str:
    """One message describing every kind of problem found in ``source``.

    ``problems`` holds ``(headline, items)`` pairs; pairs with no items are left out.
    """
    parts = [f"{headline}:\n{format_listing(items)}" for headline, items in problems if items]
    return f"Problems in {source}:\n" + "\n".join(parts)


def _raise_problems(source: str, problems: list[tuple[str, Sequence[str]]]) -> None:
    """Raise one :class:`DataError` listing all ``problems`` if there is any."""
    if any(items for _, items in problems):
        raise DataError(_problem_report(source, problems))


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _check_root(root: Path) -> Path:
    """Return ``root`` as a Path after checking that it is an existing directory."""
    root = Path(root)
    if not root.exists():
        raise DataError(
            f"Data root {root} does not exist. Pass the folder that holds one sub-folder per class "
            "(or a Kaggle layout, or a manifest's image root)."
        )
    if not root.is_dir():
        raise DataError(f"Data root {root} is not a directory. Pass the folder that holds the images.")
    return root


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series([], dtype=object) for column in COLUMNS})


def _frame(records: Iterable[tuple[str, str, str]]) -> pd.DataFrame:
    rows = list(records)
    if not rows:
        return _empty_frame()
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _duplicate_ids(frame: pd.DataFrame) -> list[str]:
    """Describe every image id that occurs more than once, with all its paths."""
    duplicated = frame[frame["image_id"].duplicated(keep=False)]
    return [
        f"{image_id}: " + ", ".join(sorted(group["path"]))
        for image_id, group in duplicated.groupby("image_id", sort=True)
    ]


def class_names(frame: pd.DataFrame) -> list[str]:
    """Sorted unique labels of ``frame`` (the order an image-folder loader uses)."""
    if "label" not in frame.columns:
        raise DataError("The frame has no 'label' column; read it with load_dataset / scan_image_folder.")
    return sorted(str(label) for label in frame["label"].unique())


def negative_index(classes: list[str], negative_class: str) -> int:
    """Index of ``negative_class`` in ``classes``; :class:`ConfigError` if it is not there."""
    try:
        return list(classes).index(negative_class)
    except ValueError:
        raise ConfigError(
            f"The negative class {negative_class!r} is not among the classes {list(classes)}. "
            "Pass negative_class=<the name of the class that holds the good devices>."
        ) from None


# --------------------------------------------------------------------------------------------
# Folder-per-class data sets
# --------------------------------------------------------------------------------------------
def _class_folders(root: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``root``."""
    return sorted(
        entry.name for entry in os.scandir(root) if not entry.name.startswith(".") and entry.is_dir()
    )


def _walk_class_folder(root: Path, class_name: str) -> tuple[list[str], list[str]]:
    """All visible files below ``root/class_name`` as POSIX paths relative to ``root``.

    Returns ``(images, others)``: files with a supported extension and everything else. Hidden
    files and folders (names starting with '.') are ignored; symlinked folders are not followed.
    """
    images: list[str] = []
    others: list[str] = []
    for directory, subdirs, files in os.walk(root / class_name):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        relative = PurePosixPath(Path(directory).relative_to(root).as_posix())
        for name in sorted(files):
            if name.startswith("."):
                continue
            (images if _is_image_name(name) else others).append(str(relative / name))
    return images, others


def scan_image_folder(
    root: Path,
    negative_class: str = DEFAULT_NEGATIVE_CLASS,
    check_images: bool = True,
    skip_bad: bool = False,
    progress: bool = False,
) -> pd.DataFrame:
    """Read a folder-per-class data set ``root/<class>/<image>``.

    The classes are the visible sub-folders of ``root`` (sorted); files directly in ``root`` (such
    as ``annotations.csv``) and hidden entries are ignored. ``negative_class`` must be one of the
    folders. Refused with a :class:`DataError`: a missing root, no class folders, a missing
    negative class, empty class folders, files with an unsupported extension, duplicate image ids
    and (with ``check_images``) images that do not decode. With ``skip_bad=True`` unsupported and
    undecodable files are dropped with a warning instead (a folder left empty is still an error).
    """
    root = _check_root(root)
    classes = _class_folders(root)
    if not classes:
        raise DataError(
            f"Data root {root} has no class folders. Expected one sub-folder per class, e.g. "
            f"{root}/{negative_class}/<image>.png and {root}/<defect class>/<image>.png."
        )
    if negative_class not in classes:
        raise DataError(
            f"The negative class folder {negative_class!r} is not in {root}; folders found: {classes}. "
            "Pass negative_class=<the folder that holds the good devices>."
        )

    records: list[tuple[str, str, str]] = []
    unsupported: list[str] = []
    for class_name in classes:
        images, others = _walk_class_folder(root, class_name)
        unsupported.extend(others)
        records.extend((PurePosixPath(path).stem, path, class_name) for path in images)
    frame = _frame(records)

    if unsupported and skip_bad:
        logger.warning(
            "Skipping %d file(s) with an unsupported extension in %s (skip_bad=True):\n%s",
            len(unsupported), root, format_listing(unsupported),
        )
        unsupported = []
    empty = sorted(set(classes) - set(frame["label"]))
    duplicates = _duplicate_ids(frame)
    _raise_problems(
        str(root),
        [
            (
                f"{len(unsupported)} file(s) with an unsupported extension (supported: "
                f"{', '.join(IMAGE_EXTENSIONS)}); move them out of the class folders or pass "
                "skip_bad=True to leave them out",
                unsupported,
            ),
            (
                f"{len(empty)} empty class folder(s); add images or remove the folder",
                [f"{root / name}/" for name in empty],
            ),
            (
                f"{len(duplicates)} duplicate image id(s) (the same file name in two "
                "folders or with two extensions); rename or remove one copy of each",
                duplicates,
            ),
        ],
    )
    if check_images:
        frame = drop_or_raise_bad_images(frame, root, str(root), skip_bad, progress)
        left_empty = sorted(set(classes) - set(frame["label"]))
        if left_empty:
            raise DataError(
                f"After leaving out bad images these class folders of {root} are empty: "
                f"{left_empty}; add readable images or remove the folders."
            )
    logger.info("Read %d images in %d classes from %s", len(frame), len(classes), root)
    return frame


# --------------------------------------------------------------------------------------------
# Frames from a manifest or a Kaggle layout
# --------------------------------------------------------------------------------------------
def _row_name(row: int, text: str, line_numbers: bool) -> str:
    """How an error message names one listed row: ``line 5: 'good/a.png'`` or ``'good/a.png'``."""
    return f"line {row}: {text!r}" if line_numbers else repr(text)


def _validate_paths(
    frame: pd.DataFrame, root: Path, source: str, skip_bad: bool, line_numbers: bool
) -> pd.DataFrame:
    """Check the ``path`` column of a frame read from a listing (manifest, Kaggle layout).

    Refuses paths that leave ``root`` (absolute paths, ``..`` escapes, symlinks resolving outside
    it), missing files and unsupported extensions; duplicate paths or ids are refused too. Paths
    are normalised (``a/./b`` -> ``a/b``). Unsupported extensions are dropped with a warning when
    ``skip_bad`` is set; the other problems are always errors.
    """
    resolved_root = root.resolve()
    normalised: list[str] = []
    outside: list[str] = []
    missing: list[str] = []
    unsupported: list[str] = []
    empty: list[str] = []
    for row, raw in enumerate(frame["path"], start=2):  # line 1 is the CSV header
        text = str(raw)
        where = _row_name(row, text, line_numbers)
        if not text.strip():
            empty.append(f"line {row}" if line_numbers else f"row {row - 1}")
            normalised.append(text)
            continue
        pure = PurePosixPath(text)
        if pure.is_absolute() or ".." in pure.parts:
            outside.append(where)
            normalised.append(text)
            continue
        relative = PurePosixPath(os.path.normpath(pure.as_posix()))
        target = resolved_root / relative
        try:
            if not target.resolve().is_relative_to(resolved_root):
                outside.append(f"{where} (resolves to {target.resolve()})")
                normalised.append(text)
                continue
        except (OSError, RuntimeError):  # symlink loops
            outside.append(f"{where} (cannot be resolved)")
            normalised.append(text)
            continue
        normalised.append(relative.as_posix())
        if not _is_image_name(relative.name):
            unsupported.append(where)
        elif not target.is_file():
            missing.append(where)
    frame = frame.assign(path=normalised)
    frame = frame.assign(image_id=[PurePosixPath(p).stem for p in normalised])

    if unsupported and skip_bad:
        logger.warning(
            "Skipping %d row(s) with an unsupported extension in %s (skip_bad=True):\n%s",
            len(unsupported), source, format_listing(unsupported),
        )
        keep = [_is_image_name(PurePosixPath(p).name) or not p.strip() for p in normalised]
        frame = frame[keep].reset_index(drop=True)
        unsupported = []
    duplicate_paths = sorted(set(frame.loc[frame["path"].duplicated(), "path"]))
    duplicate_ids = [] if duplicate_paths else _duplicate_ids(frame)
    _raise_problems(
        source,
        [
            (f"{len(empty)} row(s) with an empty path; fill in the image path", empty),
            (
                f"{len(outside)} path(s) leaving the data root {root} (absolute, '..' or a symlink "
                "pointing outside) are refused; give paths relative to the data root and keep the "
                "images inside it",
                outside,
            ),
            (f"{len(missing)} missing file(s) under {root}; fix the paths or the data root", missing),
            (
                f"{len(unsupported)} path(s) with an unsupported extension (supported: "
                f"{', '.join(IMAGE_EXTENSIONS)}); remove the rows or pass skip_bad=True",
                unsupported,
            ),
            (f"{len(duplicate_paths)} path(s) listed more than once; keep one row each", duplicate_paths),
            (
                f"{len(duplicate_ids)} duplicate image id(s) (the same file name twice); rename one copy",
                duplicate_ids,
            ),
        ],
    )
    return frame


def _validate_listed_frame(
    frame: pd.DataFrame,
    root: Path,
    source: str,
    check_images: bool,
    skip_bad: bool,
    classes: Sequence[str] | None = None,
    negative_class: str | None = None,
    line_numbers: bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """Validate labels and paths of a listed frame and verify its images (see :func:`read_manifest`).

    The cheap checks (labels, paths, negative class) run before the images are decoded.
    """
    labels = [str(label).strip() for label in frame["label"]]
    frame = frame.assign(label=labels)
    rows = list(enumerate(zip(frame["path"].astype(str), labels), start=2))
    empty_labels = [_row_name(row, path, line_numbers) for row, (path, label) in rows if not label]
    unknown: list[str] = []
    if classes is not None:
        known = set(classes)
        unknown = [
            f"{_row_name(row, path, line_numbers)} has label {label!r}"
            for row, (path, label) in rows
            if label and label not in known
        ]
    _raise_problems(
        source,
        [
            (f"{len(empty_labels)} row(s) with an empty label; give every image its class", empty_labels),
            (
                f"{len(unknown)} row(s) with an unknown label (known classes: {sorted(classes or [])}); "
                "fix the label or add the class",
                unknown,
            ),
        ],
    )
    frame = _validate_paths(frame, root, source, skip_bad, line_numbers)
    frame = frame[list(COLUMNS)].reset_index(drop=True)
    if frame.empty:
        raise DataError(f"{source} lists no images; add rows 'path,label' for the images.")
    if negative_class is not None:
        _check_negative(frame, negative_class, source)
    if check_images:
        frame = drop_or_raise_bad_images(frame, root, source, skip_bad, progress=progress)
    return frame


def read_manifest(
    manifest_csv: Path,
    root: Path,
    check_images: bool = True,
    skip_bad: bool = False,
    classes: Sequence[str] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Read a CSV manifest with columns ``path`` (image path relative to ``root``) and ``label``.

    Other columns are ignored. Labels are stripped of surrounding white space; if ``classes`` is
    given, labels outside it are refused. Refused with one :class:`DataError` per stage that lists
    all offenders: a missing manifest or root, missing columns, empty or unknown labels, paths that
    leave ``root`` (absolute, ``..``, symlinks resolving outside), missing files, unsupported
    extensions, duplicate paths or ids, and (with ``check_images``) images that do not decode.
    """
    return _read_manifest(Path(manifest_csv), root, check_images, skip_bad, classes, None, progress)


def _read_manifest(
    manifest_csv: Path,
    root: Path,
    check_images: bool,
    skip_bad: bool,
    classes: Sequence[str] | None,
    negative_class: str | None,
    progress: bool = False,
) -> pd.DataFrame:
    """:func:`read_manifest`, optionally checking that ``negative_class`` occurs before decoding images."""
    manifest_csv = Path(manifest_csv)
    root = _check_root(root)
    if not manifest_csv.is_file():
        raise DataError(
            f"Manifest {manifest_csv} does not exist; pass the CSV file with columns 'path,label'."
        )
    try:
        table = pd.read_csv(manifest_csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"Manifest {manifest_csv} is not a readable CSV file ({error}); write it as 'path,label' rows.") from error
    table.columns = [str(column).strip() for column in table.columns]
    missing_columns = [column for column in ("path", "label") if column not in table.columns]
    if missing_columns:
        raise DataError(
            f"Manifest {manifest_csv} lacks the column(s) {missing_columns}; found {list(table.columns)}. "
            "The manifest needs a header line 'path,label'."
        )
    frame = pd.DataFrame({"image_id": "", "path": table["path"], "label": table["label"]})
    return _validate_listed_frame(
        frame, root, f"manifest {manifest_csv}", check_images, skip_bad, classes, negative_class,
        progress=progress,
    )


def _check_negative(frame: pd.DataFrame, negative_class: str, source: str) -> None:
    classes = class_names(frame)
    if negative_class not in classes:
        raise DataError(
            f"The negative class {negative_class!r} does not occur in {source}; classes found: {classes}. "
            "Pass negative_class=<the label of the good devices>."
        )


def load_dataset(
    root: Path,
    negative_class: str | None = None,
    manifest: Path | None = None,
    check_images: bool = True,
    skip_bad: bool = False,
    progress: bool = False,
) -> tuple[pd.DataFrame, str]:
    """Read a data set whatever its layout; return ``(frame, negative_class)``.

    * ``manifest`` given: :func:`read_manifest` (images under ``root``); negative class default
      ``good``.
    * a Kaggle layout (``nexperia_utils.kaggle.layouts.detect_stage(root)`` is 1 or 2): the training part
      of :func:`nexperia_utils.kaggle.layouts.read_kaggle_layout`, validated like a manifest; the negative
      class default comes from the layout (``good_0`` for stage 1, ``good_all`` for stage 2).
    * otherwise a folder-per-class tree: :func:`scan_image_folder`, negative class default ``good``.

    In every case the negative class must occur in the data. ``progress`` shows a tqdm bar while
    the images are verified.
    """
    root = _check_root(root)
    if manifest is not None:
        negative = negative_class or DEFAULT_NEGATIVE_CLASS
        frame = _read_manifest(Path(manifest), root, check_images, skip_bad, None, negative, progress)
        return frame, negative

    from nexperia_utils.kaggle import layouts as kaggle  # lazy: kaggle.py may use this module's helpers

    stage = kaggle.detect_stage(root)
    if stage in (1, 2):
        layout = kaggle.read_kaggle_layout(root)
        negative = negative_class or layout.negative_class
        source = f"Kaggle stage-{stage} layout {root}"
        listed = pd.DataFrame(
            {"image_id": "", "path": layout.train["path"].astype(str), "label": layout.train["label"].astype(str)}
        )
        frame = _validate_listed_frame(
            listed, root, source, check_images, skip_bad, negative_class=negative, line_numbers=False,
            progress=progress,
        )
        logger.info("Read %d training images of a Kaggle stage-%d layout from %s", len(frame), stage, root)
        return frame, negative

    negative = negative_class or DEFAULT_NEGATIVE_CLASS
    frame = scan_image_folder(root, negative, check_images=check_images, skip_bad=skip_bad, progress=progress)
    return frame, negative

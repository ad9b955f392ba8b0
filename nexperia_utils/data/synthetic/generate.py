"""Writing and reading a synthetic set: the plan, the parallel writer, the annotations, completeness checks."""
from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.io import atomic_write_csv
from nexperia_utils.data.synthetic.render import defect_visibility, draw_severity, png_bytes, render_image
from nexperia_utils.data.synthetic.spec import (
    ANNOTATION_COLUMNS, ANNOTATIONS_FILE, batch_classes, BATCHES, class_counts, GOOD, image_id, IMAGE_SUFFIX,
    KAGGLE_ENTRIES, NOISY_SEVERITY_POWER, SyntheticConfig, VISIBILITY_SIZE, _round_half_up,
)

logger = logging.getLogger(__name__)


def plan_dataset(config: SyntheticConfig) -> tuple[pd.DataFrame, list[np.random.SeedSequence]]:
    """The annotations without boxes (one row per image, class order) and one seed per image.

    Severities and the noisy-label choice come from a planning stream; the returned seed
    sequences give each image its own generator.
    """
    config.validate()
    counts = class_counts(config.scale, config.min_per_class, config.batch)
    classes = [name for name in batch_classes(config.batch) for _ in range(counts[name])]
    n = len(classes)
    entropy = int(config.seed) if config.batch == 2 else [int(config.seed), int(config.batch)]
    plan_seq, images_seq = np.random.SeedSequence(entropy).spawn(2)
    plan_rng = np.random.default_rng(plan_seq)
    severity = np.array([0.0 if c == GOOD else draw_severity(plan_rng) for c in classes])
    true_class = np.array(classes, dtype=object)
    noisy = np.zeros(n, dtype=bool)
    # Camera glitches are neither good nor defect: they are never filed under another label.
    defect_idx = np.flatnonzero((true_class != GOOD) & (true_class != "camera_glitch"))
    n_noisy = _round_half_up(config.noise_fraction * len(defect_idx))
    if n_noisy:
        # Every defect class keeps at least its most severe image under its own label, so no
        # class folder is emptied by label noise.
        keep = set()
        for name in set(true_class[defect_idx]):
            members = defect_idx[true_class[defect_idx] == name]
            keep.add(int(members[np.argmax(severity[members])]))
        eligible = np.array([i for i in defect_idx if int(i) not in keep], dtype=int)
        n_noisy = min(n_noisy, len(eligible))
        weight = (1.0 - severity[eligible]) ** NOISY_SEVERITY_POWER + 0.05
        chosen = plan_rng.choice(eligible, size=n_noisy, replace=False, p=weight / weight.sum())
        noisy[chosen] = True
    label = np.where(noisy, GOOD, true_class)
    frame = pd.DataFrame({
        "image_id": [image_id(config.seed, i, config.batch) for i in range(n)],
        "label": label.astype(str),
        "true_class": true_class.astype(str),
        "noisy": noisy,
        "severity": np.round(severity, 4),
        "batch": int(config.batch),
    })
    return frame, images_seq.spawn(n)


def _looks_like(root: Path, allowed: Callable[[Path], bool]) -> bool:
    return all(allowed(entry) for entry in root.iterdir())


def _is_synthetic_entry(entry: Path) -> bool:
    return (entry.is_dir() and entry.name in batch_classes(3)) or entry.name == ANNOTATIONS_FILE


def _is_kaggle_entry(entry: Path) -> bool:
    return entry.name in KAGGLE_ENTRIES


def _prepare_target(root: Path, overwrite: bool, allowed: Callable[[Path], bool], what: str) -> None:
    """Refuse a non-empty ``root`` unless ``overwrite``; never delete something unrecognised."""
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} exists and is not a folder; choose another output path")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise DataError(f"{root} is not empty; pass overwrite=True (command line: --overwrite) to replace it, "
                            f"or choose another output folder")
        if not _looks_like(root, allowed):
            raise DataError(f"{root} holds files that are not part of a {what}; refusing to delete it even with "
                            f"overwrite=True. Choose an empty or new output folder")


def _commit(partial: Path, root: Path) -> None:
    """Move the finished ``partial`` folder to ``root`` (replacing an old one only now)."""
    old = None
    if root.exists():
        old = root.with_name(f"{root.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(root, old)
    os.replace(partial, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _partial_dir(root: Path) -> Path:
    """A fresh ``<root>.partial-<pid>`` folder beside ``root`` (same file system: the rename is atomic)."""
    partial = root.with_name(f"{root.name}.partial-{os.getpid()}")
    if partial.exists():
        shutil.rmtree(partial)
    stale = sorted(p.name for p in root.parent.glob(f"{root.name}.partial-*") if p != partial)
    if stale:
        logger.warning("stale unfinished output(s) %s in %s from interrupted runs; they can be deleted",
                       ", ".join(stale), root.parent)
    partial.mkdir(parents=True)
    return partial


def _render_to_file(task: tuple) -> tuple[tuple[int, int, int, int] | None, float]:
    """Render one planned image, write its PNG and return its box and visibility (a worker's job)."""
    path, true_class, severity, seq, height, width, batch = task
    image, box = render_image(true_class, np.random.default_rng(seq), severity, height, width, batch)
    Path(path).write_bytes(png_bytes(image))
    return box, defect_visibility(true_class, seq, severity, VISIBILITY_SIZE, height, width, batch)


def default_workers() -> int:
    """The cores this process may use (``os.sched_getaffinity`` where there is one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def generate_dataset(root: Path, config: SyntheticConfig = SyntheticConfig(), overwrite: bool = False,
                     progress: bool = True, workers: int | None = None) -> pd.DataFrame:
    """Write the synthetic data set to ``root`` and return its annotations.

    Images go to ``<root>/<label>/<image_id>.png`` (``label`` = the filed, possibly noisy
    label) and ``<root>/annotations.csv`` lists every image. The set is written into
    ``<root>.partial-<pid>`` and renamed to ``root`` at the end. A non-empty ``root`` is refused
    unless ``overwrite`` (and even then only if it holds nothing but a synthetic data set).

    ``workers`` processes render the images (default: every core this process may use). Every
    image has its own seed, so the set is byte-identical for any number of workers.
    """
    root = Path(root).resolve()
    config.validate()
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    _prepare_target(root, overwrite, _is_synthetic_entry, "synthetic data set")
    frame, seeds = plan_dataset(config)
    partial = _partial_dir(root)
    try:
        for label in sorted(set(frame["label"])):
            (partial / label).mkdir()
        tasks = [(str(partial / label / f"{iid}{IMAGE_SUFFIX}"), true_class, float(severity), seq,
                  config.height, config.width, config.batch)
                 for iid, label, true_class, severity, seq in
                 zip(frame["image_id"], frame["label"], frame["true_class"], frame["severity"], seeds)]
        bar = dict(total=len(tasks), disable=not progress, desc=f"synthetic images ({workers} workers)", unit="img")
        if workers == 1:
            results = [_render_to_file(task) for task in tqdm(tasks, **bar)]
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = list(tqdm(pool.map(_render_to_file, tasks, chunksize=32), **bar))
        boxes = [box for box, _ in results]
        for j, column in enumerate("xywh"):
            frame[column] = pd.array([None if b is None else b[j] for b in boxes], dtype="Int64")
        frame["visibility"] = np.round([visibility for _, visibility in results], 2)
        frame = frame[list(ANNOTATION_COLUMNS)]
        atomic_write_csv(partial / ANNOTATIONS_FILE, frame)
        _commit(partial, root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    n_def = int((frame["true_class"] != GOOD).sum())
    logger.info("wrote %d synthetic images (%d defects, %d filed as good) to %s", len(frame), n_def,
                int(frame["noisy"].sum()), root)
    return frame


def read_annotations(root: Path) -> pd.DataFrame:
    """Read ``<root>/annotations.csv`` of a synthetic set, checking its columns and values."""
    path = Path(root) / ANNOTATIONS_FILE
    if not path.is_file():
        raise DataError(f"{path} not found: {root} is not a finished synthetic data set; generate it with "
                        f"`python -m nexperia_utils.data.synthetic --out {root}`")
    frame = pd.read_csv(path, dtype={"image_id": str, "label": str, "true_class": str},
                        keep_default_na=True)
    if "batch" not in frame.columns:  # written before batch 3 existed: a batch-2 set
        frame["batch"] = 2
    missing = [c for c in ANNOTATION_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(missing)}; regenerate the data set with --overwrite")
    batches = sorted(set(frame["batch"].tolist()))
    if len(batches) != 1 or batches[0] not in BATCHES:
        raise DataError(f"{path}: column 'batch' must hold one of {BATCHES} for every image, found {batches}")
    classes = batch_classes(int(batches[0]))
    unknown = sorted(set(frame["label"]).union(frame["true_class"]) - set(classes))
    if unknown:
        raise DataError(f"{path} names unknown class(es) {', '.join(unknown)} for batch {batches[0]}; "
                        f"expected {', '.join(classes)}")
    frame["noisy"] = frame["noisy"].astype(str).str.lower().map({"true": True, "false": False})
    if frame["noisy"].isna().any():
        raise DataError(f"{path}: column 'noisy' must hold True/False")
    for column in "xywh":
        frame[column] = frame[column].astype("Int64")
    return frame


def is_complete(root: Path) -> bool:
    """True when ``root`` holds a finished synthetic data set: annotations plus every listed image."""
    root = Path(root)
    try:
        frame = read_annotations(root)
    except (DataError, OSError, ValueError) as err:
        logger.debug("%s is not a complete synthetic data set: %s", root, err)
        return False
    pairs = zip(frame["image_id"], frame["label"])
    return all((root / label / f"{iid}{IMAGE_SUFFIX}").is_file() for iid, label in pairs)


def matches_config(root: Path, config: SyntheticConfig, n_check: int = 3) -> bool:
    """True when the finished set in ``root`` is the one ``config`` generates with this code.

    Compares the planned ids, labels and noisy flags, then re-renders ``n_check`` images spread
    over the set and compares their bytes, so a set written by an older generator is not reused.
    """
    root = Path(root)
    if not is_complete(root):
        return False
    existing = read_annotations(root)
    expected, seeds = plan_dataset(config)
    if len(existing) != len(expected):
        return False
    for column in ("image_id", "label", "true_class", "noisy", "batch"):
        if not (existing[column].to_numpy() == expected[column].to_numpy()).all():
            return False
    for i in np.unique(np.linspace(0, len(expected) - 1, num=max(1, n_check)).round().astype(int)):
        row = expected.iloc[int(i)]
        image, _ = render_image(row["true_class"], np.random.default_rng(seeds[int(i)]), float(row["severity"]),
                                config.height, config.width, config.batch)
        if (root / row["label"] / f"{row['image_id']}{IMAGE_SUFFIX}").read_bytes() != png_bytes(image):
            return False
    return True

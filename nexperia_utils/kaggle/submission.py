"""Kaggle submissions: predict every unlabelled test image of a competition folder with a trained run.

The defect probability of an image is ``1 - p(negative class)``, the negative class looked up by
*name* in the checkpoint's class list (``meta["classes"]``, ``meta["negative_class"]``). With an
ensemble of checkpoints the softmax probabilities are averaged first (which averages the defect
probabilities too).

Class sets. A checkpoint must have been trained on the competition's own class set: stage 1
``good_0``/``bad_1``, stage 2 ``good_all``/``defect`` (``08_submission.ipynb`` trains such a model on
the layout's training images). A model trained on another class set, e.g. the ten batch-2 classes,
is refused with a DataError unless ``allow_other_classes=True``: its ``1 - p(good)`` is a valid
defect probability, but on the synthetic Kaggle export its training images include the hidden test
images (the export's test set is drawn from the same synthetic set), so its score would be leaked;
only use that switch for a model whose training data shares no image with the test folder.

Typical use::

    data = kaggle.read_kaggle_layout(root)
    prediction = predict_test(run_dir, data, crop="center", ensemble="top-k")
    write_kaggle_submission(outputs / "submission.csv", prediction, data)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from nexperia_utils.data import dataset

from nexperia_utils.kaggle import layouts as kaggle
from nexperia_utils.kaggle import submission_file
from nexperia_utils.config import Profile, resolve_path, workdir
from nexperia_utils.data.dataset import SplitData
from nexperia_utils.errors import ConfigError, DataError, preview
from nexperia_utils.evaluation.predict import predict_proba
from nexperia_utils.models.builders import resolve_device
from nexperia_utils.data.transforms import CROP_STYLES
from nexperia_utils.reporting.figures import new_figure

logger = logging.getLogger(__name__)

#: Name of the SplitData part that holds a competition's unlabelled test images.
TEST_PART_NAME = "kaggle-test"
#: Label index of an unlabelled image.
UNLABELLED = dataset.UNLABELLED
#: Values of ``ensemble`` besides a positive integer.
ENSEMBLE_CHOICES: tuple[str, ...] = ("best", "top-k")


@dataclass
class TestPrediction:
    """Defect probabilities of every test image of a competition folder.

    ``frame`` has ``image_id, path, defect_score`` (the ensemble's) and one ``score_epochNNN``
    column per checkpoint, in the test frame's order; ``checkpoints`` has ``epoch, val_auc, file``.
    """

    __test__ = False  # not a pytest test class

    stage: int
    run: str
    crop: str
    frame: pd.DataFrame
    checkpoints: pd.DataFrame

    @property
    def ids(self) -> list[str]:
        return [str(i) for i in self.frame["image_id"]]

    @property
    def scores(self) -> np.ndarray:
        return self.frame["defect_score"].to_numpy(dtype=float)

    @property
    def label(self) -> str:
        """Short legend label: ``resnet18-ce-kaggle1 (center, 2 ckpts)``."""
        n = len(self.checkpoints)
        return f"{self.run} ({self.crop}, {n} ckpt{'s' if n > 1 else ''})"

    def describe(self) -> str:
        """One line: ``resnet18-ce-kaggle1, centre crop, mean of 2 checkpoints (epochs 2, 1)``."""
        epochs = ", ".join(str(e) for e in self.checkpoints["epoch"])
        how = "best checkpoint" if len(self.checkpoints) == 1 else f"mean of {len(self.checkpoints)} checkpoints"
        return f"{self.run}, {self.crop} crop, {how} (epoch{'s' if len(self.checkpoints) > 1 else ''} {epochs})"


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def default_kaggle_root(profile: Profile, stage: int = 1) -> Path:
    """Where the profile's synthetic data is exported in a Kaggle layout: ``data/kaggle-stage1-synthetic``
    for the quick profile (``data/synthetic``), ``data/kaggle-stage1-synthetic-smoke`` for smoke."""
    stage = kaggle.check_stage(stage)
    return workdir() / "data" / f"kaggle-stage{stage}-{Path(profile.data_dir).name}"


def export_is_current(source_root: Path, out_root: Path, stage: int) -> bool:
    """True when ``out_root`` is a finished Kaggle export of ``source_root``: the stage's layout, its
    answer key beside it, and exactly the source's image ids (a regenerated source makes it stale)."""
    from nexperia_utils.data import synthetic

    out_root = Path(out_root)
    try:
        if kaggle.detect_stage(out_root) != stage or not synthetic.answer_key_path(out_root).is_file():
            return False
        source_ids = set(synthetic.read_annotations(source_root)["image_id"].astype(str))
    except (DataError, OSError, ValueError):
        return False
    exported = {p.stem for p in out_root.rglob("*") if p.is_file() and p.suffix.lower() in kaggle.IMAGE_SUFFIXES}
    return exported == source_ids


def with_synthetic_scale(profile: Profile, scale: float | None) -> Profile:
    """``profile`` whose synthetic data set has ``scale`` (fraction of the batch-2 counts), kept in its own
    folder ``<data_dir>-scale<scale>`` so it never mixes with the profile's default set; ``None``: unchanged."""
    if scale is None or float(scale) == profile.data_scale:
        return profile
    return profile.replace(data_scale=float(scale), data_dir=f"{profile.data_dir}-scale{float(scale):g}")


def prepare_kaggle_root(profile: Profile, data_root: str | Path | None = None, stage: int | None = None,
                        progress: bool = True) -> Path:
    """The competition folder to use.

    ``data_root`` given: that folder (it must exist; it is never written to). Otherwise the profile's
    synthetic data set (generated when missing, at ``profile.data_scale``) exported in the layout of
    ``stage`` (default 1) to :func:`default_kaggle_root`, with its hidden answer key beside it; an
    export that no longer matches the synthetic data is replaced.
    """
    from nexperia_utils.data import synthetic
    from nexperia_utils.experiment import prepare_data

    if data_root not in (None, ""):
        root = resolve_path(data_root)
        if not root.is_dir():
            raise DataError(f"Kaggle data folder {root} does not exist. Fix: download and unzip the competition "
                            "data there (kaggle competitions download -c ...), or leave data_root empty to use "
                            "the synthetic export.")
        return root
    stage = 1 if stage is None else kaggle.check_stage(stage)
    source = prepare_data(profile, None, seed=profile.seed, progress=progress)
    out = default_kaggle_root(profile, stage)
    if export_is_current(source, out, stage):
        logger.info("reusing the synthetic stage-%d export %s", stage, out)
        return out
    overwrite = out.exists() or synthetic.answer_key_path(out).exists()
    logger.info("exporting %s in the Kaggle stage-%d layout to %s", source, stage, out)
    synthetic.export_kaggle(source, out, stage=stage, seed=profile.seed, overwrite=overwrite)
    return out


def answer_key_for(root: Path) -> Path | None:
    """The hidden answer key of a synthetic export (:func:`synthetic.answer_key_path`), or ``None``."""
    from nexperia_utils.data import synthetic

    key = synthetic.answer_key_path(Path(root))
    return key if key.is_file() else None


def unlabelled_part(data: kaggle.KaggleData, image_size: int, cache_dir: Path | None = None,
                    progress: bool = True) -> SplitData:
    """The competition's test images as a :class:`SplitData` with labels ``-1`` (decoded, cached).

    Images are resized like the training images (shorter side ``round(image_size * 255 / 224)``).
    """
    return dataset.unlabelled_part(TEST_PART_NAME, data.root, data.test, image_size, cache_dir, progress)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

def parse_ensemble(ensemble: str | int) -> int | None:
    """``"best"`` -> 1, ``"top-k"`` -> ``None`` (every kept checkpoint), ``n`` or ``"n"`` -> n >= 1."""
    if isinstance(ensemble, str):
        text = ensemble.strip().lower()
        if text == "best":
            return 1
        if text in ("top-k", "topk", "top_k", "all"):
            return None
        if text.isdigit():
            ensemble = int(text)
    if isinstance(ensemble, (int, np.integer)) and not isinstance(ensemble, bool) and ensemble >= 1:
        return int(ensemble)
    raise ConfigError(f"ensemble={ensemble!r}: use 'best' (the checkpoint with the best validation AUC), "
                      "'top-k' (the mean probability of every kept checkpoint) or a number n >= 1 (the best n).")


def select_checkpoints(run_dir: Path, ensemble: str | int = "top-k") -> list[dict]:
    """The checkpoints of ``run_dir`` to predict with, best validation AUC first."""
    from nexperia_utils.training.checkpoints import list_checkpoints

    n = parse_ensemble(ensemble)
    entries = list_checkpoints(run_dir)
    if not entries:
        raise DataError(f"no checkpoints in {Path(run_dir) / 'checkpoints'}: train the run first "
                        "(08_submission.ipynb trains it when it is missing).")
    if n is not None and n > len(entries):
        logger.warning("ensemble of %d requested but %s keeps %d checkpoint(s); using them all", n,
                       Path(run_dir).name, len(entries))
    return entries if n is None else entries[:n]


def check_class_set(meta: dict, stage: int, source: str | Path = "the checkpoint",
                    allow_other_classes: bool = False) -> str:
    """The checkpoint's negative class name, after checking its class set suits ``stage``.

    The class list must be the stage's (``good_0, bad_1`` or ``good_all, defect``, in any order)
    with the stage's good class as negative class. With ``allow_other_classes`` any class list that
    contains the checkpoint's negative class is accepted (see the module docstring for the risk).
    """
    stage = kaggle.check_stage(stage)
    classes = [str(c) for c in meta.get("classes", [])]
    negative = str(meta.get("negative_class", ""))
    wanted_neg, wanted_pos = kaggle.CLASS_NAMES[stage]
    if negative not in classes:
        raise DataError(f"{source}: its negative class {negative!r} is not among its classes {classes}; the "
                        "checkpoint is damaged. Fix: retrain the run.")
    if sorted(classes) == sorted((wanted_neg, wanted_pos)):
        if negative != wanted_neg:
            raise DataError(f"{source} was trained with negative class {negative!r}, but the stage-{stage} good "
                            f"class is {wanted_neg!r}. Fix: retrain it with negative_class={wanted_neg!r}.")
        return negative
    if allow_other_classes:
        logger.warning("%s was trained on the classes %s, not the stage-%d classes %s; using 1 - p(%s) as "
                       "defect probability (allow_other_classes=True)", source, classes, stage,
                       [wanted_neg, wanted_pos], negative)
        return negative
    raise DataError(
        f"{source} was trained on the classes {classes} (negative {negative!r}), but a stage-{stage} submission "
        f"({kaggle.COMPETITIONS[stage]}) needs a model trained on the stage-{stage} classes "
        f"{[wanted_neg, wanted_pos]}. Fix: train a run on the competition folder's training images "
        "(08_submission.ipynb does it: leave run empty), or pass allow_other_classes=True to use 1 - p(good) of "
        "this model, only if its training images share none with the test folder."
    )


def defect_probability(probs: np.ndarray, classes: Sequence[str], negative_class: str) -> np.ndarray:
    """``1 - p(negative_class)`` per row of a ``(N, C)`` probability matrix, clipped to [0, 1]."""
    probs = np.asarray(probs, dtype=np.float64)
    classes = list(classes)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise DataError(f"probabilities of shape {probs.shape} do not match the {len(classes)} classes {classes}")
    if negative_class not in classes:
        raise DataError(f"negative class {negative_class!r} is not among the classes {classes}")
    return np.clip(1.0 - probs[:, classes.index(negative_class)], 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Prediction and writing
# --------------------------------------------------------------------------------------------

def predict_test(
    run_dir: Path,
    data: kaggle.KaggleData,
    crop: str = "center",
    ensemble: str | int = "top-k",
    device: str | torch.device = "auto",
    batch_size: int = 128,
    cache_dir: Path | None = None,
    allow_other_classes: bool = False,
    progress: bool = True,
) -> TestPrediction:
    """Defect probability of every test image of ``data`` with the chosen checkpoints of ``run_dir``.

    Every checkpoint's class set is checked (:func:`check_class_set`) before any prediction;
    images are decoded once per image size (cached under ``cache_dir`` when given).
    """
    from nexperia_utils.training.checkpoints import load_checkpoint

    if crop not in CROP_STYLES:
        raise ConfigError(f"unknown crop style {crop!r}; choose from {list(CROP_STYLES)}")
    run_dir = Path(run_dir)
    device = resolve_device(device)
    entries = select_checkpoints(run_dir, ensemble)
    models = []
    for entry in entries:
        model, meta = load_checkpoint(entry["path"], device=device)
        negative = check_class_set(meta, data.stage, entry["path"], allow_other_classes)
        models.append((entry, model, meta, negative))

    parts: dict[int, SplitData] = {}
    frame = data.test[["image_id", "path"]].reset_index(drop=True).copy()
    columns = []
    for entry, model, meta, negative in models:
        size = int(meta["config"]["image_size"])
        if size not in parts:
            parts[size] = unlabelled_part(data, size, cache_dir, progress)
        probs = predict_proba(model, parts[size], size, crop, batch_size, device, progress=progress)
        column = f"score_epoch{entry['epoch']:03d}"
        frame[column] = defect_probability(probs, meta["classes"], negative)
        columns.append(column)
        logger.info("%s epoch %d (val AUC %.4f): predicted %d test images (%s crop)", run_dir.name,
                    entry["epoch"], entry["val_auc"], len(frame), crop)
    frame["defect_score"] = np.clip(frame[columns].mean(axis=1).to_numpy(), 0.0, 1.0)
    frame = frame[["image_id", "path", "defect_score", *columns]]
    checkpoints = pd.DataFrame([{"epoch": e["epoch"], "val_auc": e["val_auc"], "file": Path(e["path"]).name}
                                for e, *_ in models])
    return TestPrediction(data.stage, run_dir.name, crop, frame, checkpoints)


def write_kaggle_submission(path: Path, prediction: TestPrediction, data: kaggle.KaggleData) -> Path:
    """Validate and atomically write ``prediction`` as ``data``'s competition submission.

    The file has the stage's columns (stage 1 ``id,label``, stage 2 ``id,defect_score``) and one
    row per test id in the test frame's order; any problem (missing or duplicate id, NaN, value
    outside [0, 1], other stage) raises a DataError and writes nothing.
    """
    if prediction.stage != data.stage:
        raise DataError(f"the prediction is for stage {prediction.stage} but the data is stage {data.stage}; "
                        "predict with the same competition folder.")
    return submission_file.write_submission(path, prediction.ids, prediction.scores, data.stage,
                                   expected_ids=kaggle.test_ids(data))


def key_labels(answer_key_csv: Path, ids: Sequence[str]) -> np.ndarray:
    """The answer key's labels (1 = defect) in the order of ``ids``; DataError if an id is missing."""
    key = pd.read_csv(answer_key_csv, dtype={"id": str})
    by_id = key.set_index("id")["label"]
    missing = [i for i in ids if i not in by_id.index]
    if missing:
        raise DataError(f"{answer_key_csv} has no label for {len(missing)} test id(s): {preview(missing)}; "
                        "the key belongs to another export. Fix: re-export the synthetic data.")
    return by_id.loc[list(ids)].to_numpy(dtype=int)


def plot_score_distribution(scores: np.ndarray, labels: np.ndarray | None = None, title: str = "") -> Figure:
    """Histogram of test defect probabilities; split into good and defect when ``labels`` are known."""
    scores = np.asarray(scores, dtype=float)
    fig = new_figure((6.5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    bins = np.linspace(0.0, 1.0, 26)
    if labels is None:
        ax.hist(scores, bins=bins, color="tab:blue", alpha=0.8, label=f"test images (n={len(scores)})")
    else:
        labels = np.asarray(labels).astype(bool)
        ax.hist(scores[~labels], bins=bins, color="tab:green", alpha=0.6, label=f"good (n={int((~labels).sum())})")
        ax.hist(scores[labels], bins=bins, color="tab:red", alpha=0.6, label=f"defect (n={int(labels.sum())})")
    ax.set_xlabel("defect probability 1 - p(good)")
    ax.set_ylabel("images")
    ax.set_xlim(0, 1)
    ax.legend(loc="upper center")
    if title:
        ax.set_title(title)
    return fig


def summary_table(prediction: TestPrediction, data: kaggle.KaggleData, submission_csv: Path,
                  auc: float | None = None) -> pd.DataFrame:
    """A one-column description of a submission, indexed by ``item`` (for the run report)."""
    rows = {
        "competition": data.competition,
        "stage": str(data.stage),
        "data": str(data.root),
        "test images": str(len(prediction.frame)),
        "model": prediction.describe(),
        "checkpoint val AUC": ", ".join(f"{v:.4f}" for v in prediction.checkpoints["val_auc"]),
        "file": str(submission_csv),
        "AUC vs hidden answer key": "n/a (scored by Kaggle)" if auc is None else f"{auc:.4f}",
    }
    return pd.DataFrame({"value": list(rows.values())}, index=pd.Index(list(rows), name="item"))


#: Stem of the submission's summary table under ``outputs/<profile>/tables/``.
SUMMARY_TABLE = "submission_summary"


def write_summary(prediction: TestPrediction, data: kaggle.KaggleData, submission_csv: Path, auc: float | None,
                  tables_dir: Path, profile_name: str) -> tuple[pd.DataFrame, str]:
    """Write ``submission_summary.csv`` / ``.md`` / ``.caption.txt`` to ``tables_dir``; return (table, caption)."""
    from nexperia_utils.reporting import write_table

    table = summary_table(prediction, data, submission_csv, auc)
    caption = (f"Kaggle submission (profile `{profile_name}`): {prediction.describe()}; "
               + ("scored against the synthetic export's hidden answer key." if auc is not None
                  else "the competition scores it after upload."))
    write_table(table, Path(tables_dir), SUMMARY_TABLE, caption, index_header="item", row_labels={})
    return table, caption

"""SAT as a mislabel detector (report section 2.6): per-sample weights and soft targets of a SAT run.

A SAT run writes, after every epoch, ``run_dir/sat/epoch_NNN.npz`` (``NNN`` 1-based) with the
weight ``w_i = max_j t_ij`` (``weights``, ``(N,)``) and the soft target ``t_i`` (``soft_targets``,
``(N, C)``) of every image of the TRAINING part, in the order of the training set (the split's
``train`` rows in file order, as :func:`nexperia_utils.data.dataset.load_split_part` reads them). The
report: "in early training w_i is relatively small for noisy labels ... [SAT can check] the sanity
of labels by ranking sample weights", and a soft target may even correct a label.

This module joins those arrays to the image ids and, where the synthetic data's annotations say
which labels are noisy (``annotations.csv``: ``noisy``, ``true_class``), measures how well "the
lowest weights" find them. Training never reads the annotations; only this analysis does::

    frame = load_sat_weights(run_dir, exp.split, annotations=exp.annotations())
    summary = detection_summary(frame)
    fig = plot_mislabel_detection(frame, weight_trajectories(run_dir, exp.split), title="SAT")  # sat_weight_figures

Conventions: a low weight is suspicious, so the detector flags the images with the LOWEST weights;
ranks are 1 for the lowest weight (ties share their average rank); "flagging the k lowest" flags
every image whose weight is <= the k-th lowest value (ties are flagged together).
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from nexperia_utils.training.checkpoints import read_run_meta, sat_dir, sat_snapshot_file
from nexperia_utils.errors import DataError, preview

__all__ = [
    "SatSnapshot",
    "attach_annotations",
    "detection_curve",
    "detection_summary",
    "detection_table",
    "flag_lowest",
    "load_sat_snapshot",
    "load_sat_weights",
    "noisy_ranks",
    "sat_epochs",
    "sat_label_mass_floor",
    "sat_start_epoch",
    "train_rows",
    "weight_trajectories",
]

log = logging.getLogger(__name__)

_SNAPSHOT_RE = re.compile(r"^epoch_(\d+)\.npz$")


@dataclass(frozen=True)
class SatSnapshot:
    """SAT's table after one epoch: ``weights`` ``(N,)`` and ``soft_targets`` ``(N, C)`` as float32."""

    epoch: int
    weights: np.ndarray
    soft_targets: np.ndarray


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def sat_epochs(run_dir: Path) -> list[int]:
    """The (1-based) epochs with a SAT snapshot under ``run_dir/sat``, ascending; empty if none."""
    folder = sat_dir(run_dir)
    if not folder.is_dir():
        return []
    found = (_SNAPSHOT_RE.match(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def sat_start_epoch(run_dir: Path) -> int | None:
    """``sat_es`` of the run (epochs of plain cross entropy before SAT), or None for a non-SAT run."""
    config = read_run_meta(run_dir)["config"]
    if not str(config.get("loss", "")).startswith("sat"):
        return None
    from nexperia_utils.training.losses import DEFAULT_SAT_ES

    return int(config.get("loss_params", {}).get("sat_es", DEFAULT_SAT_ES))


def sat_label_mass_floor(run_dir: Path) -> float | None:
    """The least mass a soft target can keep on its given label at the end of the run: ``alpha ** n``
    for ``n = epochs - sat_es`` SAT epochs (each image is visited at most once per epoch with the
    plain sampler). A label can be corrected (argmax moved) only when this is below 0.5. None for a
    non-SAT run or a class-balanced sampler (which may visit an image several times per epoch)."""
    config = read_run_meta(run_dir)["config"]
    sat_es = sat_start_epoch(run_dir)
    if sat_es is None or config.get("sampler", "none") != "none":
        return None
    from nexperia_utils.training.losses import DEFAULT_SAT_ALPHA

    alpha = float(config.get("loss_params", {}).get("alpha", DEFAULT_SAT_ALPHA))
    return alpha ** max(int(config["epochs"]) - sat_es, 0)


def load_sat_snapshot(run_dir: Path, epoch: int | None = None) -> SatSnapshot:
    """The SAT table after ``epoch`` (1-based; ``None``: the last one written)."""
    epochs = sat_epochs(run_dir)
    if not epochs:
        raise DataError(
            f"{Path(run_dir) / 'sat'} holds no epoch_NNN.npz: train the run with a SAT loss "
            f"(sat, sat_bad_1, sat_bad_boost) first"
        )
    epoch = epochs[-1] if epoch is None else int(epoch)
    if epoch not in epochs:
        raise DataError(f"{run_dir} has no SAT snapshot of epoch {epoch}; it has epochs {epochs}")
    file = sat_snapshot_file(run_dir, epoch)
    with np.load(file) as data:
        missing = [k for k in ("weights", "soft_targets") if k not in data.files]
        if missing:
            raise DataError(f"{file} lacks the array(s) {missing}; it is not a SAT snapshot")
        weights = data["weights"].astype(np.float32)
        soft = data["soft_targets"].astype(np.float32)
    if weights.ndim != 1 or soft.ndim != 2 or soft.shape[0] != weights.shape[0]:
        raise DataError(f"{file}: weights {weights.shape} and soft_targets {soft.shape} do not match ((N,) and (N, C))")
    return SatSnapshot(epoch, weights, soft)


def train_rows(split: pd.DataFrame) -> pd.DataFrame:
    """The training part's rows in the order of the training set (= the rows of SAT's table).

    ``split`` is a whole split (column ``split``, as ``Experiment.split``); the ``train`` rows are
    taken in file order, exactly as :func:`nexperia_utils.data.dataset.load_split_part` takes them.
    """
    if not isinstance(split, pd.DataFrame) or not {"image_id", "label", "split"} <= set(split.columns):
        raise DataError("pass the whole split (a DataFrame with image_id, label and split columns, e.g. exp.split)")
    return split[split["split"] == "train"].reset_index(drop=True)


def _checked_train_rows(run_dir: Path, split: pd.DataFrame, meta: dict) -> pd.DataFrame:
    from nexperia_utils.data.split import split_hash

    if {"path"} <= set(split.columns) and meta.get("split_hash") and split_hash(split) != meta["split_hash"]:
        raise DataError(
            f"{run_dir} was trained on another split (hash {meta['split_hash']}, this split "
            f"{split_hash(split)}); open the experiment with the data and split seed the run used"
        )
    return train_rows(split)


def load_sat_weights(run_dir: Path, split: pd.DataFrame, epoch: int | None = None,
                     annotations: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per training image, SAT's state after ``epoch`` (``None``: the last), joined to the image ids.

    Columns: ``image_id``, ``path`` (when the split has it), ``label`` (the label trained on),
    ``epoch``, ``weight`` (``max_j t_ij``; before SAT starts every weight is 1), ``label_mass``
    (``t_i`` at the given label), ``target_class`` (argmax of ``t_i``, a class name), ``relabelled``
    (``target_class != label``), ``weight_rank`` (1 = lowest weight, ties averaged). With
    ``annotations`` (``exp.annotations()``) also ``true_class``, ``noisy``, ``severity`` (when
    present) and ``corrected`` (noisy and ``target_class == true_class``).

    Raises DataError when the run, split and snapshot do not belong together.
    """
    meta = read_run_meta(run_dir)
    classes = list(meta["classes"])
    snap = load_sat_snapshot(run_dir, epoch)
    rows = _checked_train_rows(run_dir, split, meta)
    if len(rows) != len(snap.weights):
        raise DataError(
            f"{run_dir}: the SAT snapshot has {len(snap.weights)} rows but the split's training part has "
            f"{len(rows)} images; pass the split the run was trained on"
        )
    if snap.soft_targets.shape[1] != len(classes):
        raise DataError(f"{run_dir}: soft targets have {snap.soft_targets.shape[1]} classes, the run has {len(classes)}")
    unknown = sorted(set(rows["label"]) - set(classes))
    if unknown:
        raise DataError(f"training labels {unknown} are not among the run's classes {classes}")
    label_index = rows["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    soft = snap.soft_targets
    columns = ["image_id", "path", "label"] if "path" in rows.columns else ["image_id", "label"]
    frame = rows[columns].copy()
    frame["image_id"] = frame["image_id"].astype(str)
    frame["epoch"] = snap.epoch
    frame["weight"] = snap.weights
    frame["label_mass"] = soft[np.arange(len(rows)), label_index]
    frame["target_class"] = np.asarray(classes, dtype=object)[soft.argmax(axis=1)]
    frame["relabelled"] = frame["target_class"] != frame["label"]
    frame["weight_rank"] = frame["weight"].rank(method="average")
    return frame if annotations is None else attach_annotations(frame, annotations)


def attach_annotations(frame: pd.DataFrame, annotations: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the annotations' ``true_class``, ``noisy`` (bool), ``severity`` and ``corrected``.

    Every image of ``frame`` must be annotated (DataError naming the missing ids otherwise).
    """
    need = {"image_id", "true_class", "noisy"}
    if not need <= set(annotations.columns):
        raise DataError(f"annotations need the columns {sorted(need)}; found {list(annotations.columns)}")
    keep = [c for c in ("image_id", "true_class", "noisy", "severity") if c in annotations.columns]
    ann = annotations[keep].assign(image_id=annotations["image_id"].astype(str))
    if ann["image_id"].duplicated().any():
        raise DataError("annotations list some image ids twice; each image needs one row")
    out = frame.drop(columns=[c for c in keep[1:] + ["corrected"] if c in frame.columns]).merge(
        ann, on="image_id", how="left", validate="one_to_one")
    missing = out.loc[out["true_class"].isna(), "image_id"].tolist()
    if missing:
        raise DataError(f"annotations.csv does not describe {len(missing)} training image(s): {preview(missing)}; "
                        f"use the annotations of the data set the split was drawn from")
    out["noisy"] = out["noisy"].map(_as_bool)
    if "target_class" in out.columns:
        out["corrected"] = out["noisy"] & (out["target_class"] == out["true_class"])
    return out


def _as_bool(value) -> bool:
    if isinstance(value, str):
        if value.strip().lower() in ("true", "1", "yes"):
            return True
        if value.strip().lower() in ("false", "0", "no", ""):
            return False
        raise DataError(f"annotation 'noisy' must be true/false, got {value!r}")
    return bool(value)


def weight_trajectories(run_dir: Path, split: pd.DataFrame, value: str = "weight") -> pd.DataFrame:
    """Per training image (index ``image_id``) the ``value`` after each epoch (columns: 1-based epochs).

    ``value``: ``"weight"`` (``max_j t_ij``) or ``"label_mass"`` (``t_i`` at the given label).
    """
    if value not in ("weight", "label_mass"):
        raise DataError(f"value must be 'weight' or 'label_mass', got {value!r}")
    epochs = sat_epochs(run_dir)
    if not epochs:
        load_sat_snapshot(run_dir)  # raises the explanatory error
    columns = {e: load_sat_weights(run_dir, split, e)[value].to_numpy() for e in epochs}
    ids = train_rows(split)["image_id"].astype(str)
    frame = pd.DataFrame(columns, index=pd.Index(ids, name="image_id"))
    frame.columns.name = "epoch"
    return frame


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------
def _weights_and_flags(weight, noisy) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(weight, dtype=float)
    y = np.asarray(noisy)
    if w.ndim != 1 or y.shape != w.shape:
        raise DataError(f"weight and noisy must be 1-D arrays of the same length, got {w.shape} and {y.shape}")
    if not np.isfinite(w).all():
        raise DataError("weights must be finite")
    return w, y.astype(bool)


def flag_lowest(weight, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` lowest weights; images tied with the k-th lowest are flagged too."""
    w = np.asarray(weight, dtype=float)
    if k <= 0 or w.size == 0:
        return np.zeros(w.shape, dtype=bool)
    k = min(int(k), w.size)
    return w <= np.partition(w, k - 1)[k - 1]


def detection_curve(weight, noisy) -> pd.DataFrame:
    """Precision and recall of "flag every image with weight <= threshold", one row per distinct weight.

    Columns: ``threshold``, ``flagged`` (images flagged), ``flagged_pct`` (% of all images),
    ``true_positives`` (noisy among them), ``precision`` and ``recall`` (fractions; recall NaN when
    nothing is noisy). Rows go from the lowest threshold to the highest (where everything is flagged).
    """
    w, y = _weights_and_flags(weight, noisy)
    if w.size == 0:
        raise DataError("detection_curve needs at least one weight")
    thresholds = np.unique(w)
    flagged = np.searchsorted(np.sort(w), thresholds, side="right")
    tp = np.searchsorted(np.sort(w[y]), thresholds, side="right")
    n_noisy = int(y.sum())
    return pd.DataFrame({
        "threshold": thresholds,
        "flagged": flagged,
        "flagged_pct": flagged / w.size * 100.0,
        "true_positives": tp,
        "precision": tp / flagged,
        "recall": tp / n_noisy if n_noisy else np.full(thresholds.shape, np.nan),
    })


def detection_summary(frame: pd.DataFrame, lowest_pct: float = 5.0) -> dict[str, float]:
    """How well the lowest SAT weights find the noisy labels of ``frame`` (:func:`load_sat_weights`
    with annotations). Keys:

    - ``epoch``, ``n_train``, ``n_noisy``, ``noisy_pct`` (the base rate, %);
    - ``mean_weight_clean`` / ``mean_weight_noisy``, ``median_weight_clean`` / ``median_weight_noisy``;
    - ``auc``: ROC AUC of ``-weight`` for "noisy" (0.5 = chance; NaN without noisy or clean images);
    - with a ``label`` column (the given label), two companions of ``auc``: ``auc_label_only``, the AUC of a
      detector that sees only the given label (each image scored by its label's share of noisy images: the
      most any image-blind rule can reach, e.g. when every noisy label is ``good``), and
      ``auc_within_noisy_labels``, the AUC of ``-weight`` among the images whose given label has noisy ones
      (a loss that keeps the other labels' weights at 1, like SAT bad 1, gains ``auc`` from them for free);
    - ``average_precision``: area under the precision-recall curve of ``-weight`` (chance = base rate);
    - ``precision_at_n_noisy`` / ``recall_at_n_noisy``: flagging as many images as there are noisy ones;
    - ``recall_at_lowest_pct``: share of noisy images among the lowest ``lowest_pct`` % of weights;
    - ``median_rank_pct_noisy``: median rank of the noisy images as % of the training set (lower is better;
      50 = chance);
    - ``noisy_relabelled``: noisy images whose soft target's argmax left the given label;
      ``noisy_corrected``: ... and is the true class; ``clean_relabelled``: clean images whose argmax
      left their (correct) label.
    """
    need = {"weight", "noisy", "weight_rank"}
    if not need <= set(frame.columns):
        raise DataError(f"detection_summary needs the columns {sorted(need)} (load_sat_weights with annotations)")
    w, y = _weights_and_flags(frame["weight"], frame["noisy"])
    n, n_noisy = w.size, int(y.sum())
    both = 0 < n_noisy < n
    out: dict[str, float] = {
        "epoch": int(frame["epoch"].iloc[0]) if "epoch" in frame.columns and n else float("nan"),
        "n_train": n,
        "n_noisy": n_noisy,
        "noisy_pct": n_noisy / n * 100.0 if n else float("nan"),
        "mean_weight_clean": float(w[~y].mean()) if (~y).any() else float("nan"),
        "mean_weight_noisy": float(w[y].mean()) if n_noisy else float("nan"),
        "median_weight_clean": float(np.median(w[~y])) if (~y).any() else float("nan"),
        "median_weight_noisy": float(np.median(w[y])) if n_noisy else float("nan"),
        "auc": float(roc_auc_score(y, -w)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, -w)) if both else float("nan"),
    }
    if "label" in frame.columns:
        out.update(_label_companions(frame["label"].to_numpy(), w, y, both))
    flagged = flag_lowest(w, n_noisy)
    out["precision_at_n_noisy"] = float((flagged & y).sum() / flagged.sum()) if n_noisy else float("nan")
    out["recall_at_n_noisy"] = float((flagged & y).sum() / n_noisy) if n_noisy else float("nan")
    lowest = flag_lowest(w, math.ceil(lowest_pct / 100.0 * n))
    out["recall_at_lowest_pct"] = float((lowest & y).sum() / n_noisy) if n_noisy else float("nan")
    ranks = frame["weight_rank"].to_numpy(dtype=float)
    out["median_rank_pct_noisy"] = float(np.median(ranks[y]) / n * 100.0) if n_noisy else float("nan")
    relabelled = frame["relabelled"].to_numpy(dtype=bool) if "relabelled" in frame.columns else np.zeros(n, bool)
    corrected = frame["corrected"].to_numpy(dtype=bool) if "corrected" in frame.columns else np.zeros(n, bool)
    out["noisy_relabelled"] = int((relabelled & y).sum())
    out["noisy_corrected"] = int((corrected & y).sum())
    out["clean_relabelled"] = int((relabelled & ~y).sum())
    return out


def _label_companions(label: np.ndarray, w: np.ndarray, y: np.ndarray, both: bool) -> dict[str, float]:
    """``auc_label_only`` and ``auc_within_noisy_labels`` of :func:`detection_summary` (``both``: the
    frame has noisy and clean images)."""
    share = pd.Series(y).groupby(label).transform("mean").to_numpy()
    within = share > 0
    return {
        "auc_label_only": float(roc_auc_score(y, share)) if both else float("nan"),
        "auc_within_noisy_labels": (float(roc_auc_score(y[within], -w[within]))
                                    if both and (~y[within]).any() else float("nan")),
    }


def detection_table(summaries: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """One row per run label (e.g. the loss) of :func:`detection_summary` values."""
    if not summaries:
        raise DataError("detection_table needs at least one summary")
    table = pd.DataFrame.from_dict(dict(summaries), orient="index")
    table.index.name = "run"
    return table


def noisy_ranks(frame: pd.DataFrame) -> pd.DataFrame:
    """The noisy training images, lowest weight first, with their rank (and rank in % of the set)."""
    if "noisy" not in frame.columns:
        raise DataError("noisy_ranks needs annotations: load_sat_weights(..., annotations=exp.annotations())")
    cols = [c for c in ("image_id", "label", "true_class", "severity", "weight", "weight_rank", "label_mass",
                        "target_class", "corrected") if c in frame.columns]
    out = frame.loc[frame["noisy"], cols].sort_values("weight", kind="mergesort").reset_index(drop=True)
    out["rank_pct"] = out["weight_rank"] / len(frame) * 100.0
    return out

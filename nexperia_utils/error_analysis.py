"""Error analysis of a trained run (report sections 1, 4.2, Table 5, Figure 10): which defects the
model misses, which good devices it rejects, why (Grad-CAM), and which labels are probably wrong.

Operating points
----------------
A device is *rejected* (flagged as defect) when its defect score ``1 - p(good)`` is at or above a
threshold. The thresholds used here:

* ``defect score >= 0.5``: the default cut of a probability.
* ``TPR >= t`` (t = 99.1 ... 100 %): the threshold of the first operating point of the ROC curve
  (decreasing thresholds, tied scores together, as :func:`nexperia_utils.metrics.fpr_at_tpr` uses)
  whose TPR reaches ``t``. At ``TPR = 100 %`` the threshold is the *lowest defect score*, so no
  defect escapes by definition and the FPR at TPR = 100 % is set by that single image: the
  galleries therefore show the lowest-scoring defects (the report's Figure 10), the *escapes* at
  the 0.5 cut and at TPR >= 99.1 % (defects scored below that threshold) and the highest-scoring
  good images (the false alarms that are likely mislabels, report section 4.2).

Suspected mislabels
-------------------
Good-labelled images ranked by a *suspicion* score, highest first: the defect score of the
analysed checkpoint; for the training part, when a SAT run's per-sample state is available
(``sat/epoch_NNN.npz``: ``weights`` ``(N,)`` = ``max_j t_ij`` and ``soft_targets`` ``(N, C)`` in the
training part's row order, read with :mod:`nexperia_utils.noisy_labels`), the mean of the defect
score and the SAT soft target's defect mass ``1 - t_i[good]`` (SAT's running belief that the image
is a defect; the weight ``max_j t_ij`` is listed too). A model's defect score on its own *training*
images is biased towards the filed label (it was fitted to it), so training images rank lower than
they should; that is why SAT helps there.

Table 5
-------
The top-K good-labelled *test* images of the ranking are relabelled from a corrections CSV
(``image_id, corrected_label``): only rows for those K images whose corrected label differs from
the filed one change anything. The run's top-k checkpoints are then evaluated on the original and
the corrected test labels (same predictions, two label vectors).

Embeddings
----------
The penultimate-layer activations (the input of the final linear layer, read with a forward
pre-hook on :func:`nexperia_utils.models.classifier_head`; works for every architecture of
:data:`nexperia_utils.models.ARCHITECTURES`) projected to 2-D with PCA and t-SNE (scikit-learn).
"""
from __future__ import annotations

import logging
import math
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import average_precision_score, confusion_matrix
from torch.utils.data import DataLoader

from nexperia_utils import explain, metrics
from nexperia_utils.dataset import SplitData
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.checkpoints import prediction_file
from nexperia_utils.evaluation import (check_part_fits, checkpoint_fingerprint, predict_proba, predictions_frame,
                                       read_prediction_cache)
from nexperia_utils.models import resolve_device
from nexperia_utils.io import atomic_write_csv
from nexperia_utils.metrics import threshold_at_tpr  # re-exported: it lived here before it moved to metrics
from nexperia_utils.transforms import denormalise, eval_transform, resize_size_for

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointAnalysis",
    "Heatmaps",
    "apply_corrections",
    "box_lookup",
    "checkpoint_predictions",
    "compute_gallery_heatmaps",
    "confusion_frame",
    "corrections_from_annotations",
    "corrections_template",
    "embed_2d",
    "format_fraction_columns",
    "gallery_figure",
    "input_boxes",
    "localisation_table",
    "noisy_ids",
    "open_checkpoint",
    "operating_points",
    "penultimate_features",
    "plot_confusion",
    "plot_embeddings",
    "plot_precision_recall_at_k",
    "plot_score_distributions",
    "precision_recall_at_k",
    "rank_by_score",
    "ranking_quality",
    "read_boxes",
    "read_corrections",
    "relabel_results",
    "sat_train_scores",
    "select_gallery",
    "suspected_mislabels",
    "threshold_at_tpr",
    "write_plain_table",
]

#: The default cut of the defect score (a plain probability threshold).
DEFAULT_THRESHOLD = 0.5


# --------------------------------------------------------------------------- checkpoint and predictions
@dataclass
class CheckpointAnalysis:
    """The checkpoint being analysed: its model and metadata and the run it comes from."""

    run_dir: Path
    epoch: int
    path: Path
    model: torch.nn.Module
    meta: dict
    top_k_entries: list[dict]

    @property
    def arch(self) -> str:
        return str(self.meta["config"]["arch"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def negative_class(self) -> str:
        return str(self.meta["negative_class"])

    @property
    def negative_index(self) -> int:
        return self.classes.index(self.negative_class)

    @property
    def image_size(self) -> int:
        return int(self.meta["config"]["image_size"])

    @property
    def display_name(self) -> str:
        return str(self.meta.get("display_name", self.arch))

    @property
    def val_auc(self) -> float:
        return float(next(e["val_auc"] for e in self.top_k_entries if e["epoch"] == self.epoch))

    @property
    def loss(self) -> str:
        return str(self.meta["config"].get("loss", "ce"))


def open_checkpoint(run_dir: Path, checkpoint: str | int = "best", device: str | torch.device = "cpu",
                    split_hash: str | None = None) -> CheckpointAnalysis:
    """Load checkpoint ``"best"`` (highest validation AUC) or the kept checkpoint of epoch ``checkpoint``.

    ``split_hash`` (the experiment's) is compared with the run's: analysing a model on a split it
    was not trained on would put training images into the test part.
    """
    from nexperia_utils.checkpoints import list_checkpoints, load_checkpoint

    run_dir = Path(run_dir)
    entries = list_checkpoints(run_dir)
    if not entries:
        raise DataError(f"no checkpoints in {run_dir / 'checkpoints'}: train the run first "
                        f"(notebooks/02_baseline.ipynb, e.g. `make baseline-resnet18`)")
    if checkpoint in ("best", None, ""):
        entry = entries[0]
    else:
        try:
            epoch = int(checkpoint)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"checkpoint must be 'best' or an epoch number, got {checkpoint!r}") from exc
        matches = [e for e in entries if e["epoch"] == epoch]
        if not matches:
            raise ConfigError(f"{run_dir.name} keeps no checkpoint of epoch {epoch}; kept epochs: "
                              f"{[e['epoch'] for e in entries]} (pass one of them or 'best')")
        entry = matches[0]
    model, meta = load_checkpoint(entry["path"], device=device)
    if split_hash is not None and meta.get("split_hash") not in (None, split_hash):
        raise DataError(f"{run_dir.name} was trained on another split (hash {meta.get('split_hash')}, this "
                        f"experiment's is {split_hash}); retrain it on this split or open the experiment "
                        f"with the data/split it was trained on")
    return CheckpointAnalysis(run_dir, int(entry["epoch"]), Path(entry["path"]), model, meta, entries)


def checkpoint_predictions(analysis: CheckpointAnalysis, part: SplitData, crop: str = "center",
                           epoch: int | None = None, device: str | torch.device = "cpu",
                           batch_size: int = 128) -> pd.DataFrame:
    """Per-image predictions of a kept checkpoint (default: the analysed one) on ``part``.

    Reads the prediction cache that :func:`nexperia_utils.evaluation.evaluate_run` writes when the
    same weights made it for exactly the part's images, otherwise predicts and writes it; a part the
    checkpoint does not fit is refused. Adds ``part`` and ``rank`` (1 = highest defect score).
    """
    from nexperia_utils.checkpoints import load_checkpoint

    epoch = analysis.epoch if epoch is None else int(epoch)
    if epoch == analysis.epoch:
        path = analysis.path
    else:
        entry = [e for e in analysis.top_k_entries if e["epoch"] == epoch]
        if not entry:
            raise ConfigError(f"no kept checkpoint of epoch {epoch} in {analysis.run_dir}")
        path = Path(entry[0]["path"])
    check_part_fits(analysis.meta, part, path)
    fingerprint = checkpoint_fingerprint(path)
    file = prediction_file(analysis.run_dir, part.name, crop, epoch)
    frame = read_prediction_cache(file, part, fingerprint)
    if frame is not None:
        frame["label"] = part.frame["label"].to_numpy()
    else:
        model = analysis.model if epoch == analysis.epoch else load_checkpoint(path, device=device)[0]
        probs = predict_proba(model, part, analysis.image_size, crop, batch_size, device)
        frame = predictions_frame(part, probs, analysis.classes, analysis.negative_index, fingerprint)
        atomic_write_csv(file, frame)
    frame = frame.copy()
    frame["image_id"] = frame["image_id"].astype(str)
    frame["part"] = part.name
    frame["rank"] = rank_by_score(frame["defect_score"].to_numpy())
    return frame


def rank_by_score(score: Sequence[float]) -> np.ndarray:
    """Rank of each score, 1 = highest; ties share the best (lowest) rank (``method="min"``)."""
    values = pd.Series(np.asarray(score, dtype=float))
    if values.isna().any():
        raise DataError("scores contain NaN; check the model outputs")
    return values.rank(ascending=False, method="min").astype(int).to_numpy()


# --------------------------------------------------------------------------- operating points
def operating_points(y_defect: Sequence[bool], score: Sequence[float],
                     tpr_levels: Sequence[float] = metrics.TPR_LEVELS,
                     default_threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """One row per operating point: the 0.5 cut, then ``TPR >= t`` for each level.

    Columns: ``operating_point``, ``threshold``, ``tpr``, ``fpr`` (fractions), ``missed_defects``
    (defects scored below the threshold: the escapes), ``false_alarms`` (good images at or above it),
    ``n_defects``, ``n_good``.
    """
    y = np.asarray(y_defect, dtype=bool)
    s = np.asarray(score, dtype=float)
    points = [(f"defect score >= {default_threshold:g}", float(default_threshold))]
    for level in tpr_levels:
        name = "TPR = 100 %" if float(level) == 1.0 else f"TPR >= {float(level) * 100:g} %"
        points.append((name, metrics.threshold_at_tpr(y, s, level)))
    rows = []
    for name, threshold in points:
        rejected = s >= threshold
        rows.append({
            "operating_point": name,
            "threshold": threshold,
            "tpr": float(rejected[y].mean()),
            "fpr": float(rejected[~y].mean()),
            "missed_defects": int((~rejected & y).sum()),
            "false_alarms": int((rejected & ~y).sum()),
            "n_defects": int(y.sum()),
            "n_good": int((~y).sum()),
        })
    return pd.DataFrame(rows)


def confusion_frame(labels: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> pd.DataFrame:
    """Confusion matrix (rows: filed label, columns: predicted class) over ``classes`` (sklearn)."""
    matrix = confusion_matrix(list(labels), list(predicted), labels=list(classes))
    return pd.DataFrame(matrix, index=pd.Index(classes, name="label"), columns=pd.Index(classes, name="predicted"))


# --------------------------------------------------------------------------- annotations and boxes
def noisy_ids(annotations: pd.DataFrame | None) -> set[str]:
    """Ids of images whose filed label differs from the annotated true class (synthetic data)."""
    if annotations is None:
        return set()
    differs = annotations["label"].astype(str) != annotations["true_class"].astype(str)
    return set(annotations.loc[differs, "image_id"].astype(str))


def read_boxes(path: Path) -> pd.DataFrame:
    """Defect boxes from a CSV: ``image_id, x, y, w, h`` (original pixels) or the Kaggle stage-2
    ``defect_area.csv`` layout (``id, x_1, y_1, x_2, y_2``). Several boxes of one image are merged
    into their enclosing box."""
    from nexperia_utils.kaggle import read_defect_area

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


def box_lookup(boxes: pd.DataFrame | None) -> dict[str, tuple[float, float, float, float]]:
    """``image_id -> (x, y, w, h)`` for the rows of ``boxes`` (annotations or :func:`read_boxes`) with a box."""
    if boxes is None:
        return {}
    frame = boxes.dropna(subset=["x", "y", "w", "h"])
    return {str(r.image_id): (float(r.x), float(r.y), float(r.w), float(r.h)) for r in frame.itertuples()}


def input_boxes(part: SplitData, data_root: Path, boxes: Mapping[str, Sequence[float]], image_size: int
                ) -> list[tuple[float, float, float, float] | None]:
    """Each image's box mapped to the model input (Resize(image_size * 255/224) -> CenterCrop), or None.

    The original image size is read from the file header (no decoding). The decoded-image cache
    fits every image to the Nexperia aspect ratio; for images of that ratio the mapping is exact to
    a pixel.
    """
    out: list[tuple[float, float, float, float] | None] = []
    resize = resize_size_for(image_size)
    for image_id, rel in zip(part.frame["image_id"].astype(str), part.frame["path"]):
        box = boxes.get(image_id)
        if box is None:
            out.append(None)
            continue
        with Image.open(Path(data_root) / rel) as image:
            width, height = image.size
        out.append(explain.map_box_to_input(box, (height, width), resize, image_size))
    return out


# --------------------------------------------------------------------------- heatmaps and galleries
@dataclass
class Heatmaps:
    """Grad-CAM heatmaps of some images of a part, at the size they were computed."""

    indices: np.ndarray
    images: np.ndarray  # (n, H, W) grey in [0, 1]
    maps: np.ndarray  # (n, H, W) in [0, 1]
    image_size: int
    method: str

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        position = int(np.flatnonzero(self.indices == index)[0])
        return self.images[position], self.maps[position]

    def __contains__(self, index: int) -> bool:
        return bool((self.indices == index).any())


def compute_gallery_heatmaps(analysis: CheckpointAnalysis, part: SplitData, indices: Iterable[int],
                             image_size: int, method: str = "gradcam", device: str | torch.device = "cpu",
                             batch_size: int = 16) -> Heatmaps:
    """Grad-CAM heatmaps (:func:`nexperia_utils.explain.compute_heatmaps`) of the defect score for the
    images ``indices`` of ``part``, on their centre crops of ``image_size`` (``part`` decoded for that
    size: ``exp.part(name, image_size)``)."""
    indices = np.array(sorted(set(int(i) for i in indices)), dtype=int)
    if part.images.shape[1] != resize_size_for(image_size):
        raise ConfigError(f"the {part.name} part is decoded at {part.images.shape[1]} px, not for {image_size} px crops "
                          f"({resize_size_for(image_size)} px); pass exp.part({part.name!r}, {image_size})")
    if len(indices) == 0:
        empty = np.zeros((0, image_size, image_size), dtype=np.float32)
        return Heatmaps(indices, empty, empty.copy(), image_size, method)
    dataset = part.dataset(eval_transform(image_size, "center"))
    batch = torch.stack([dataset[int(i)][0] for i in indices])
    maps = explain.compute_heatmaps(analysis.model, batch, analysis.arch, analysis.negative_index,
                                    method=method, batch_size=batch_size, device=resolve_device(device))
    return Heatmaps(indices, denormalise(batch), maps, image_size, method)


def select_gallery(predictions: pd.DataFrame, negative_class: str, kind: str, n: int,
                   threshold: float | None = None) -> pd.DataFrame:
    """Rows of ``predictions`` for a gallery, in display order.

    ``kind``: ``"lowest_defects"`` (defect-labelled, lowest scores first), ``"missed"`` (defect-labelled
    with score below ``threshold``, lowest first), ``"highest_good"`` (good-labelled, highest first),
    ``"false_alarms"`` (good-labelled with score >= ``threshold``, highest first). At most ``n`` rows.
    """
    is_good = predictions["label"] == negative_class
    if kind in ("missed", "false_alarms") and threshold is None:
        raise ConfigError(f"gallery kind {kind!r} needs a threshold")
    if kind == "lowest_defects":
        rows = predictions[~is_good].sort_values("defect_score", kind="stable")
    elif kind == "missed":
        rows = predictions[~is_good & (predictions["defect_score"] < threshold)].sort_values("defect_score", kind="stable")
    elif kind == "highest_good":
        rows = predictions[is_good].sort_values("defect_score", ascending=False, kind="stable")
    elif kind == "false_alarms":
        rows = predictions[is_good & (predictions["defect_score"] >= threshold)].sort_values(
            "defect_score", ascending=False, kind="stable")
    else:
        raise ConfigError(f"unknown gallery kind {kind!r}; use lowest_defects, missed, highest_good or false_alarms")
    return rows.head(max(0, int(n)))


def gallery_figure(rows: pd.DataFrame, heatmaps: Heatmaps, boxes: Sequence[tuple | None], title: str,
                   flags: Mapping[str, str] | None = None, columns: int = 6, n_total: int | None = None) -> Figure:
    """A gallery (:func:`nexperia_utils.galleries.plot_gallery`) of ``rows`` (predictions with their
    position in the part as index): image, heatmap, box, and caption ``id / label / score / rank``.

    ``boxes`` are the part's input boxes (by position); ``flags`` adds a line per image id (e.g. the
    annotated true class of a mislabelled image); ``n_total`` (the part's size) is shown after the
    rank. A constant (flat) heatmap is not overlaid and the caption says so.
    """
    from nexperia_utils.galleries import plot_gallery

    images, maps, captions, shown_boxes = [], [], [], []
    for index, row in rows.iterrows():
        image, heat = heatmaps.get(int(index))
        flat = bool(heat.max() == heat.min())
        images.append(image)
        maps.append(np.full(heat.shape, np.nan, dtype=np.float32) if flat else heat)  # NaN: drawn transparent
        shown_boxes.append(boxes[int(index)])
        rank = f"{int(row['rank'])}/{n_total}" if n_total else f"{int(row['rank'])}"
        caption = f"{str(row['image_id'])[:8]}  {row['label']}\nscore {row['defect_score']:.3g}  rank {rank}"
        if flags and str(row["image_id"]) in flags:
            caption += f"\n{flags[str(row['image_id'])]}"
        if flat:
            caption += "\n(flat heatmap: no evidence)"
        captions.append(caption)
    title = textwrap.fill(title, width=int(18 * columns))
    fig = plot_gallery(images, captions, heatmaps=maps, boxes=shown_boxes, columns=columns, title=title)
    # room for multi-line captions above every row (plot_gallery sizes rows for two lines)
    rows = max(1, math.ceil(len(images) / columns))
    lines = max([c.count("\n") + 1 for c in captions] or [1])
    fig.set_size_inches(2.2 * columns, rows * (2.25 + 0.13 * lines) + 0.3 + 0.2 * title.count("\n"))
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- localisation
def localisation_table(heatmaps: Heatmaps, boxes: Sequence[tuple | None], groups: Sequence[str],
                       scores: Sequence[float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pointing game and heatmap mass in the box over the images of ``heatmaps`` that have a box.

    Args:
        heatmaps: heatmaps of some images of a part (``heatmaps.indices`` index the part).
        boxes: the part's boxes in the heatmaps' pixels (by position), None where there is none.
        groups: the part's class per image (annotated true class, or the label).
        scores: the part's defect scores (for the per-image table).

    Returns:
        ``(summary, per_image)``: ``summary`` has one row per class and ``all``: ``n``,
        ``pointing_game``, ``mass_in_box`` (:func:`nexperia_utils.explain.localisation_scores`) and
        ``chance`` (the mean share of the image the boxes cover: what a uniform heatmap scores on
        both measures) and ``constant_maps`` (heatmaps without localisation, e.g. all-zero because
        no positive evidence for the defect score was found; they count as misses with no mass);
        ``per_image`` one row per scored image.
    """
    rows = []
    for position, index in enumerate(heatmaps.indices):
        box = boxes[int(index)]
        if box is None or box[2] <= 0 or box[3] <= 0:
            continue
        heat = heatmaps.maps[position]
        rows.append({
            "index": int(index),
            "class": str(groups[int(index)]),
            "pointing_hit": explain.pointing_game(heat, box),
            "mass_in_box": explain.mass_in_box(heat, box),
            "box_fraction": explain.mass_in_box(np.ones_like(heat), box),
            "constant_map": bool(heat.max() == heat.min()),
            "defect_score": float(scores[int(index)]) if scores is not None else float("nan"),
        })
    per_image = pd.DataFrame(rows, columns=["index", "class", "pointing_hit", "mass_in_box", "box_fraction",
                                            "constant_map", "defect_score"])
    summary = []
    for name, part in [*per_image.groupby("class", sort=True), ("all", per_image)]:
        positions = [int(np.flatnonzero(heatmaps.indices == i)[0]) for i in part["index"]]
        scores_ = explain.localisation_scores(heatmaps.maps[positions] if positions else np.zeros((0, 1, 1)),
                                              [boxes[int(i)] for i in part["index"]])
        summary.append({"class": name, "n": int(scores_["n"]), "pointing_game": scores_["pointing_game"],
                        "mass_in_box": scores_["mass_in_box"],
                        "chance": float(part["box_fraction"].mean()) if len(part) else float("nan"),
                        "constant_maps": int(part["constant_map"].sum())})
    return pd.DataFrame(summary).set_index("class"), per_image


# --------------------------------------------------------------------------- SAT state
def sat_train_scores(sat_run_dir: Path, split: pd.DataFrame, negative_class: str) -> pd.DataFrame | None:
    """Per good-labelled training image: ``sat_weight`` (``max_j t_ij``) and ``sat_defect_mass``
    (``1 - t_i[good]``) from the last SAT snapshot of ``sat_run_dir``
    (:func:`nexperia_utils.noisy_labels.load_sat_weights`, which checks that the run, its snapshot and
    ``split`` belong together); None when the run has no snapshot."""
    from nexperia_utils import noisy_labels

    if not noisy_labels.sat_epochs(sat_run_dir):
        return None
    frame = noisy_labels.load_sat_weights(sat_run_dir, split)
    good = frame[frame["label"] == negative_class]
    logger.info("SAT state of %s, epoch %d", Path(sat_run_dir).name, int(frame["epoch"].iloc[0]))
    return pd.DataFrame({
        "image_id": good["image_id"].astype(str).to_numpy(),
        "sat_weight": good["weight"].to_numpy(dtype=float),
        "sat_defect_mass": 1.0 - good["label_mass"].to_numpy(dtype=float),
        "sat_epoch": good["epoch"].to_numpy(dtype=int),
    })


# --------------------------------------------------------------------------- suspected mislabels
def suspected_mislabels(predictions: pd.DataFrame, negative_class: str, sat: pd.DataFrame | None = None
                        ) -> pd.DataFrame:
    """Good-labelled images ranked by suspicion (highest first).

    Args:
        predictions: per-image predictions of one or more parts (``image_id, part, label,
            defect_score, predicted``, optionally ``rank``).
        negative_class: the good class.
        sat: :func:`sat_train_scores` for the training part, or None.

    Returns:
        ``rank`` (1 = most suspicious), ``image_id``, ``part``, ``label``, ``defect_score``,
        ``predicted``, ``p_predicted``, ``rank_in_part``, ``sat_weight``, ``sat_defect_mass``,
        ``suspicion`` (the defect score; for training images with SAT state the mean of the defect
        score and the SAT defect mass). Ties keep part order (train, val, test) and image id.
    """
    for column in ("image_id", "part", "label", "defect_score", "predicted"):
        if column not in predictions.columns:
            raise DataError(f"predictions lack the column {column!r}")
    good = predictions[predictions["label"] == negative_class].copy()
    good["image_id"] = good["image_id"].astype(str)
    prob_columns = [c for c in good.columns if c.startswith("p_")]
    if prob_columns and good["predicted"].map(lambda c: f"p_{c}" in prob_columns).all():
        column = [prob_columns.index(f"p_{c}") for c in good["predicted"]]
        good["p_predicted"] = good[prob_columns].to_numpy()[np.arange(len(good)), column]
    else:
        good["p_predicted"] = np.nan
    good["sat_weight"] = np.nan
    good["sat_defect_mass"] = np.nan
    if sat is not None:
        lookup = sat.set_index("image_id")
        train_rows = good["part"] == "train"
        ids = good.loc[train_rows, "image_id"]
        known = ids.isin(lookup.index)
        if not known.all():
            raise DataError(f"{int((~known).sum())} training images have no SAT state (e.g. {ids[~known].iloc[0]}): "
                            f"the SAT run belongs to another split")
        good.loc[train_rows, "sat_weight"] = lookup.loc[ids, "sat_weight"].to_numpy()
        good.loc[train_rows, "sat_defect_mass"] = lookup.loc[ids, "sat_defect_mass"].to_numpy()
    has_sat = good["sat_defect_mass"].notna()
    good["suspicion"] = np.where(has_sat, (good["defect_score"] + good["sat_defect_mass"].fillna(0.0)) / 2.0,
                                 good["defect_score"])
    part_order = {"train": 0, "val": 1, "test": 2}
    good["_part_order"] = good["part"].map(part_order).fillna(3)
    good = good.sort_values(["suspicion", "_part_order", "image_id"], ascending=[False, True, True], kind="stable")
    good["rank"] = np.arange(1, len(good) + 1)
    good["rank_in_part"] = good.groupby("part").cumcount() + 1
    columns = ["rank", "image_id", "part", "label", "defect_score", "predicted", "p_predicted", "rank_in_part",
               "sat_weight", "sat_defect_mass", "suspicion"]
    return good[columns].reset_index(drop=True)


def precision_recall_at_k(ranked_ids: Sequence[str], positives: Iterable[str], ks: Iterable[int]) -> pd.DataFrame:
    """Precision and recall of the first ``k`` ids of a ranking against a set of true positives.

    Returns one row per ``k`` (clipped to the ranking's length): ``k``, ``hits``, ``precision``
    (``hits / k``), ``recall`` (``hits / positives in the ranking``; NaN when there are none),
    ``n_positive``.
    """
    ranked = [str(i) for i in ranked_ids]
    truth = set(str(p) for p in positives) & set(ranked)
    hits_so_far = np.cumsum([i in truth for i in ranked]) if ranked else np.zeros(0, dtype=int)
    rows = []
    for k in ks:
        k = int(k)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        k = min(k, len(ranked))
        hits = int(hits_so_far[k - 1]) if k else 0
        rows.append({"k": k, "hits": hits, "precision": hits / k if k else float("nan"),
                     "recall": hits / len(truth) if truth else float("nan"), "n_positive": len(truth)})
    return pd.DataFrame(rows)


def ranking_quality(ranking: pd.DataFrame, positives: Iterable[str], k: int) -> pd.DataFrame:
    """Precision/recall at ``k`` and average precision of the suspicion ranking, over all ranked
    images and per part (``scope``). Average precision (sklearn) is NaN without positives."""
    positives = set(str(p) for p in positives)
    rows = []
    scopes = [("all", ranking)] + [(name, ranking[ranking["part"] == name]) for name in ("train", "val", "test")
                                   if (ranking["part"] == name).any()]
    for scope, frame in scopes:
        frame = frame.sort_values("rank")
        if frame.empty:
            continue
        at_k = precision_recall_at_k(frame["image_id"], positives, [k]).to_dict("records")[0]
        y = frame["image_id"].isin(positives).to_numpy()
        ap = float(average_precision_score(y, frame["suspicion"])) if y.any() else float("nan")
        rows.append({"scope": scope, "n_ranked": len(frame), **at_k, "average_precision": ap,
                     "base_rate": float(y.mean())})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- corrections and Table 5
def corrections_from_annotations(annotations: pd.DataFrame, image_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """``image_id, corrected_label`` for annotated images whose true class differs from the filed label
    (restricted to ``image_ids`` when given)."""
    frame = annotations[annotations["label"].astype(str) != annotations["true_class"].astype(str)]
    if image_ids is not None:
        frame = frame[frame["image_id"].astype(str).isin(set(str(i) for i in image_ids))]
    return pd.DataFrame({"image_id": frame["image_id"].astype(str).to_numpy(),
                         "corrected_label": frame["true_class"].astype(str).to_numpy()})


def read_corrections(path: Path, classes: Sequence[str]) -> pd.DataFrame:
    """A corrections CSV (``image_id, corrected_label``; blank labels mean "keep"), validated."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"corrections CSV {path} does not exist; fill in the template the notebook writes "
                        f"(corrections_template.csv) or leave corrections_csv empty")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("image_id", "corrected_label") if c not in frame.columns]
    if missing:
        raise DataError(f"corrections CSV {path} lacks the column(s) {missing}; it needs image_id,corrected_label")
    frame = frame[["image_id", "corrected_label"]].apply(lambda c: c.str.strip())
    frame = frame[frame["corrected_label"] != ""]
    unknown = sorted(set(frame["corrected_label"]) - set(classes))
    if unknown:
        raise DataError(f"corrections CSV {path} names unknown class(es) {unknown}; use one of {list(classes)}")
    duplicated = frame["image_id"][frame["image_id"].duplicated()].tolist()
    if duplicated:
        raise DataError(f"corrections CSV {path} lists image(s) {duplicated[:5]} more than once; keep one row each")
    return frame.reset_index(drop=True)


def corrections_template(ranking: pd.DataFrame, k: int) -> pd.DataFrame:
    """The top-``k`` test rows of the ranking with an empty ``corrected_label`` column to fill in."""
    test = ranking[ranking["part"] == "test"].sort_values("rank").head(k)
    return pd.DataFrame({"image_id": test["image_id"].to_numpy(), "rank_in_test": test["rank_in_part"].to_numpy(),
                         "label": test["label"].to_numpy(), "defect_score": test["defect_score"].to_numpy(),
                         "corrected_label": ""})


def apply_corrections(frame: pd.DataFrame, corrections: pd.DataFrame, top_ids: Sequence[str]
                      ) -> tuple[np.ndarray, pd.DataFrame]:
    """Relabel the images ``top_ids`` of ``frame`` (``image_id, label``) from ``corrections``.

    Only corrections for ids in ``top_ids`` whose corrected label differs from the filed one are
    applied; corrections of other images are ignored (logged). Returns the new label array (in
    ``frame``'s order) and the applied corrections (``image_id, label, corrected_label``).
    """
    ids = frame["image_id"].astype(str).to_numpy()
    top = [str(i) for i in top_ids]
    unknown = sorted(set(top) - set(ids))
    if unknown:
        raise DataError(f"top ids {unknown[:5]} are not in the part being relabelled")
    lookup = dict(zip(corrections["image_id"].astype(str), corrections["corrected_label"].astype(str)))
    ignored = sorted(set(lookup) - set(top))
    if ignored:
        logger.info("%d corrections are for images outside the top %d and are not applied", len(ignored), len(top))
    labels = frame["label"].astype(str).to_numpy().copy()
    position = {image_id: i for i, image_id in enumerate(ids)}
    applied = []
    for image_id in top:
        new = lookup.get(image_id)
        i = position[image_id]
        if new is not None and new != labels[i]:
            applied.append({"image_id": image_id, "label": labels[i], "corrected_label": new})
            labels[i] = new
    return labels, pd.DataFrame(applied, columns=["image_id", "label", "corrected_label"])


def relabel_results(analysis: CheckpointAnalysis, part: SplitData, corrected_labels: Sequence[str],
                    crop: str = "center", top_k: int | None = None, device: str | torch.device = "cpu",
                    batch_size: int = 128) -> pd.DataFrame:
    """Metrics of the run's top-k checkpoints on ``part`` with the filed and the corrected labels.

    One row per (checkpoint, labels): ``model`` (``"ResNet18"`` / ``"ResNet18 (corrected)"``, the
    columns of the report's Table 5), ``labels`` (``original`` / ``corrected``), ``crop``, ``epoch``,
    ``val_auc`` and :func:`nexperia_utils.metrics.summarize`'s metrics as fractions.
    """
    from nexperia_utils.dataset import encode_labels

    classes = analysis.classes
    original = np.asarray(part.labels)
    corrected = encode_labels(list(corrected_labels), classes)
    if len(corrected) != len(original):
        raise DataError(f"{len(corrected)} corrected labels for a part of {len(original)} images")
    entries = analysis.top_k_entries[:top_k] if top_k else analysis.top_k_entries
    rows = []
    for which, labels in (("original", original), ("corrected", corrected)):
        for entry in entries:
            pred = checkpoint_predictions(analysis, part, crop, entry["epoch"], device, batch_size)
            probs = pred[[f"p_{c}" for c in classes]].to_numpy()
            name = analysis.display_name if which == "original" else f"{analysis.display_name} (corrected)"
            rows.append({"model": name, "labels": which, "crop": crop, "epoch": int(entry["epoch"]),
                         "val_auc": float(entry["val_auc"]),
                         **metrics.summarize(probs, labels, analysis.negative_index)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- embeddings
@torch.no_grad()
def penultimate_features(model: torch.nn.Module, arch: str, part: SplitData, image_size: int,
                         device: str | torch.device = "cpu", batch_size: int = 128) -> np.ndarray:
    """Activations feeding the final linear layer, ``(N, D)`` (ResNet18/34: 512, ResNet50: 2048,
    VGG19_bn: 4096, ResNet_att_2: 1024), for the centre crops of ``part``."""
    from nexperia_utils.models import classifier_head

    head = classifier_head(model, arch)
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(f"the classifier of {arch} is not a linear layer; cannot read its input")
    device = resolve_device(device)
    captured: list[torch.Tensor] = []

    def hook(_module, inputs):
        captured.append(inputs[0].detach().flatten(1).float().cpu())

    handle = head.register_forward_pre_hook(hook)
    was_training = model.training
    parameter = next(model.parameters())
    original_device = parameter.device
    model.eval().to(device)
    try:
        loader = DataLoader(part.dataset(eval_transform(image_size, "center")), batch_size=batch_size, shuffle=False)
        for images, _, _ in loader:
            model(images.to(device))
    finally:
        handle.remove()
        model.to(original_device)
        model.train(was_training)
    if not captured:
        return np.zeros((0, head.in_features), dtype=np.float32)
    return torch.cat(captured).numpy().astype(np.float32)


def embed_2d(features: np.ndarray, method: str = "pca", seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D projection of ``features`` ``(N, D)``: ``"pca"`` or ``"tsne"`` (perplexity clipped to
    ``(N - 1) / 3`` for small sets, PCA initialisation)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise DataError(f"embedding needs a (N, D) array with N >= 3, got shape {x.shape}")
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        perplexity = float(min(perplexity, max(1.0, (len(x) - 1) / 3.0)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    raise ConfigError(f"unknown embedding method {method!r}; use 'pca' or 'tsne'")


# --------------------------------------------------------------------------- figures
def _figure(size: tuple[float, float]) -> Figure:
    return Figure(figsize=size, layout="constrained")


def plot_confusion(confusion: pd.DataFrame, title: str = "") -> Figure:
    """Confusion matrix heatmap (seaborn): colour = share of the row (log scale), numbers = counts."""
    import seaborn as sns

    counts = confusion.to_numpy()
    share = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    n = len(confusion)
    fig = _figure((1.0 + 0.75 * n, 0.8 + 0.65 * n))
    ax = fig.add_subplot(1, 1, 1)
    shown = np.where(share > 0, share, np.nan)
    # the colour scale spans at least 1 % .. 100 %: a model that predicts one class for every image
    # (every share 0 or 1) would otherwise get a collapsed scale
    smallest = np.nanmin(shown) if np.isfinite(shown).any() else 1e-3
    sns.heatmap(pd.DataFrame(shown, index=confusion.index, columns=confusion.columns), ax=ax, cmap="Blues",
                norm=LogNorm(vmin=max(1e-3, min(0.01, smallest)), vmax=1.0),
                annot=counts, fmt="d", annot_kws={"fontsize": 8}, cbar_kws={"label": "share of the row (log)"},
                linewidths=0.5, linecolor="0.9", square=True)
    ax.set_xlabel("predicted class (argmax)")
    ax.set_ylabel("filed label")
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    ax.tick_params(axis="y", rotation=0, labelsize=8)
    ax.set_title(title or "Confusion matrix (counts)", fontsize=10)
    return fig


def plot_score_distributions(predictions: pd.DataFrame, classes: Sequence[str], thresholds: Mapping[str, float],
                             marked: Iterable[str] = (), marked_label: str = "annotated mislabel",
                             title: str = "") -> Figure:
    """Defect score per filed class (seaborn box + strip plot, logit axis) with the operating points'
    thresholds as vertical lines; images in ``marked`` (ids) are drawn as red stars."""
    import seaborn as sns

    eps = 1e-5
    frame = predictions.assign(score=predictions["defect_score"].clip(eps, 1 - eps))
    order = [c for c in classes if (frame["label"] == c).any()]
    fig = _figure((9.0, 0.55 * len(order) + 1.6))
    ax = fig.add_subplot(1, 1, 1)
    with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11's deprecated `vert`
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        sns.boxplot(data=frame, x="score", y="label", order=order, ax=ax, color="0.85", fliersize=0, width=0.6)
    sns.stripplot(data=frame, x="score", y="label", order=order, ax=ax, size=3, alpha=0.6, jitter=0.25,
                  color="tab:blue")
    marked = set(str(m) for m in marked)
    hits = frame[frame["image_id"].astype(str).isin(marked)]
    if len(hits):
        ax.scatter(hits["score"], [order.index(lab) for lab in hits["label"]], marker="*", s=140, color="red",
                   edgecolor="black", linewidth=0.6, zorder=5, label=marked_label)
    styles = ["--", ":", "-.", (0, (1, 3)), (0, (5, 2, 1, 2)), (0, (3, 1))]
    for (name, value), style in zip(thresholds.items(), styles):
        ax.axvline(min(max(value, eps), 1 - eps), color="tab:red", lw=1.0, ls=style, label=f"{name} (t = {value:.3g})")
    _logit_axis(ax, np.concatenate([frame["score"].to_numpy(), list(thresholds.values())]), eps)
    ax.set_xlabel("defect score 1 - p(good) (logit scale)")
    ax.set_ylabel("filed label")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    ax.set_title(title or "Defect score per class", fontsize=10)
    return fig


def _logit_axis(ax, values: np.ndarray, eps: float) -> None:
    """A logit x axis fitted to ``values`` with plain tick labels (0.01, 0.5, 0.99 ...)."""
    from matplotlib.ticker import NullFormatter
    from scipy.special import expit, logit

    values = np.clip(np.asarray(values, dtype=float), eps, 1 - eps)
    lo = float(max(eps / 2, expit(logit(values.min()) - 0.7)))
    hi = float(min(1 - eps / 2, expit(logit(values.max()) + 0.7)))
    ax.set_xscale("logit")
    ax.set_xlim(lo, hi)
    ticks = [t for t in (1e-5, 1e-4, 1e-3, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999) if lo <= t <= hi]
    if len(ticks) < 4:
        ticks = sorted(set(ticks) | {t for t in (0.2, 0.3, 0.4, 0.6, 0.7, 0.8) if lo <= t <= hi})
    ax.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_precision_recall_at_k(ranking: pd.DataFrame, positives: Iterable[str], k_marker: int | None = None,
                               title: str = "") -> Figure:
    """Precision and recall at every K of the suspicion ranking, over all parts and per part."""
    positives = set(str(p) for p in positives)
    fig = _figure((9.0, 3.6))
    axes = fig.subplots(1, 2)
    scopes = [("all parts", ranking)] + [(p, ranking[ranking["part"] == p]) for p in ("train", "val", "test")
                                         if (ranking["part"] == p).any()]
    for name, frame in scopes:
        frame = frame.sort_values("rank")
        if frame.empty:
            continue
        curve = precision_recall_at_k(frame["image_id"], positives, range(1, len(frame) + 1))
        label = f"{name} ({int(curve['n_positive'].iloc[0])} mislabelled of {len(frame)})"
        axes[0].plot(curve["k"], curve["precision"] * 100, label=label)
        axes[1].plot(curve["k"], curve["recall"] * 100, label=label)
    for ax, what in zip(axes, ("precision", "recall")):
        if k_marker:
            ax.axvline(k_marker, color="0.5", ls=":", lw=1, label=f"K = {k_marker}")
        ax.set_xscale("log")
        ax.set_xlabel("K (top-K good-labelled images)")
        ax.set_ylabel(f"{what} at K (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title or "Suspected mislabels against the annotations", fontsize=10)
    return fig


def plot_embeddings(coords: Mapping[str, np.ndarray], labels: Sequence[str], classes: Sequence[str],
                    negative_class: str, marked: Mapping[int, str] | None = None,
                    ringed: Iterable[int] = (), title: str = "") -> Figure:
    """Scatter plots of 2-D embeddings (one panel per method), coloured by filed class.

    ``marked``: position -> note (e.g. the annotated true class of a mislabelled image), drawn as a
    black-edged star with the note; ``ringed``: positions circled (e.g. the top-K suspects).
    """
    import seaborn as sns

    labels = np.asarray(labels, dtype=object)
    palette = dict(zip(classes, sns.color_palette("tab10" if len(classes) <= 10 else "husl", len(classes))))
    palette[negative_class] = (0.72, 0.72, 0.72)
    fig = _figure((6.0 * len(coords) + 1.8, 5.6))
    axes = np.atleast_1d(fig.subplots(1, len(coords)))
    marked = dict(marked or {})
    ringed = sorted(set(int(i) for i in ringed))
    for ax, (method, xy) in zip(axes, coords.items()):
        order = [negative_class] + [c for c in classes if c != negative_class]
        for name in order:
            mask = labels == name
            if mask.any():
                ax.scatter(xy[mask, 0], xy[mask, 1], s=10 if name == negative_class else 16, color=palette[name],
                           label=f"{name} ({int(mask.sum())})", alpha=0.7 if name == negative_class else 0.9,
                           linewidths=0)
        if ringed:
            ax.scatter(xy[ringed, 0], xy[ringed, 1], s=70, facecolors="none", edgecolors="black", linewidths=0.8,
                       label="top-K suspects")
        if marked:
            positions = sorted(marked)
            ax.scatter(xy[positions, 0], xy[positions, 1], marker="*", s=180, color="red", edgecolor="black",
                       linewidth=0.7, label="annotated mislabel", zorder=5)
            if len(positions) <= 30:  # beyond that the notes hide the points
                for p in positions:
                    ax.annotate(marked[p], xy[p], xytext=(4, 4), textcoords="offset points", fontsize=7)
        ax.set_title(method, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0, markerscale=1.5)
    fig.suptitle(title or "Penultimate-layer activations", fontsize=11)
    return fig


def write_plain_table(table: pd.DataFrame, out_dir: Path, name: str, caption: str, index_header: str) -> Path:
    """Write ``<name>.csv`` and ``<name>.md`` (table + caption) for a table that is not in the report's
    mean (std) shape; ``index_header`` heads the row-label column. Returns the Markdown path."""
    from nexperia_utils.io import atomic_write_text
    from nexperia_utils.reporting import to_markdown

    if not isinstance(table, pd.DataFrame) or table.empty:
        raise DataError(f"write_plain_table({name!r}) needs a non-empty DataFrame")
    markdown = to_markdown(table.astype(object), caption, row_labels={}, index_header=index_header)  # ints stay ints
    atomic_write_text(Path(out_dir) / f"{name}.csv", table.to_csv(index=True))
    return atomic_write_text(Path(out_dir) / f"{name}.md", markdown)


def format_fraction_columns(frame: pd.DataFrame, columns: Sequence[str], decimals: int = 2) -> pd.DataFrame:
    """A copy with ``columns`` (fractions) shown as percentages; NaN stays NaN."""
    out = frame.copy()
    for column in columns:
        out[column] = (out[column].astype(float) * 100).round(decimals)
    return out


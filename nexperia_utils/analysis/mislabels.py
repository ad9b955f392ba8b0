"""Suspected mislabels, their ranking quality, corrections and Table 5 (report section 4.2).

Suspected mislabels
-------------------
Good-labelled images ranked by a *suspicion* score, highest first: the defect score of the
analysed checkpoint; for the training part, when a SAT run's per-sample state is available
(``sat/epoch_NNN.npz``: ``weights`` ``(N,)`` = ``max_j t_ij`` and ``soft_targets`` ``(N, C)`` in the
training part's row order, read with :mod:`nexperia_utils.analysis.sat_weights`), the mean of the defect
score and the SAT soft target's defect mass ``1 - t_i[good]`` (SAT's running belief that the image
is a defect; the weight ``max_j t_ij`` is listed too). A model's defect score on its own *training*
images is biased towards the filed label (it was fitted to it), so training images rank lower than
they should; that is why SAT helps there. :func:`ranking_quality` measures the ranking against the
annotated noisy labels (precision and recall at k, average precision).

Table 5
-------
The top-K good-labelled *test* images of the ranking are relabelled from a corrections CSV
(``image_id, corrected_label``): only rows for those K images whose corrected label differs from
the filed one change anything. The run's top-k checkpoints are then evaluated on the original and
the corrected test labels (same predictions, two label vectors): :func:`relabel_results`.

(:mod:`nexperia_utils.analysis.sat_weights` is the other half: SAT's weights as a detector of the noisy
*training* labels, Figure 8.)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score

from nexperia_utils.evaluation import metrics
from nexperia_utils.data.dataset import SplitData
from nexperia_utils.analysis.interpretation import CheckpointAnalysis, Interpretation, checkpoint_predictions
from nexperia_utils.errors import ConfigError, DataError, preview
from nexperia_utils.reporting.figures import new_figure

logger = logging.getLogger(__name__)


def _scopes(ranking: pd.DataFrame, all_name: str) -> list[tuple[str, pd.DataFrame]]:
    """The whole ranking and each part present in it, each sorted by rank (the views of ranking quality)."""
    scopes = [(all_name, ranking)] + [(name, ranking[ranking["part"] == name]) for name in ("train", "val", "test")
                                      if (ranking["part"] == name).any()]
    return [(name, frame.sort_values("rank")) for name, frame in scopes if not frame.empty]


def noisy_ids(annotations: pd.DataFrame | None) -> set[str]:
    """Ids of images whose filed label differs from the annotated true class (synthetic data)."""
    if annotations is None:
        return set()
    differs = annotations["label"].astype(str) != annotations["true_class"].astype(str)
    return set(annotations.loc[differs, "image_id"].astype(str))


def sat_train_scores(sat_run_dir: Path, split: pd.DataFrame, negative_class: str) -> pd.DataFrame | None:
    """Per good-labelled training image: ``sat_weight`` (``max_j t_ij``) and ``sat_defect_mass``
    (``1 - t_i[good]``) from the last SAT snapshot of ``sat_run_dir``
    (:func:`nexperia_utils.analysis.sat_weights.load_sat_weights`, which checks that the run, its snapshot and
    ``split`` belong together); None when the run has no snapshot."""
    from nexperia_utils.analysis import sat_weights as noisy_labels

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
    for scope, frame in _scopes(ranking, "all"):
        at_k = precision_recall_at_k(frame["image_id"], positives, [k]).to_dict("records")[0]
        y = frame["image_id"].isin(positives).to_numpy()
        ap = float(average_precision_score(y, frame["suspicion"])) if y.any() else float("nan")
        rows.append({"scope": scope, "n_ranked": len(frame), **at_k, "average_precision": ap,
                     "base_rate": float(y.mean())})
    return pd.DataFrame(rows)


def plot_precision_recall_at_k(ranking: pd.DataFrame, positives: Iterable[str], k_marker: int | None = None,
                               title: str = "") -> Figure:
    """Precision and recall at every K of the suspicion ranking, over all parts and per part."""
    positives = set(str(p) for p in positives)
    fig = new_figure((9.0, 3.6))
    axes = fig.subplots(1, 2)
    for name, frame in _scopes(ranking, "all parts"):
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
        raise DataError(f"corrections CSV {path} lists image(s) {preview(duplicated)} more than once; keep one row each")
    return frame.reset_index(drop=True)


def corrections_template(ranking: pd.DataFrame, k: int) -> pd.DataFrame:
    """The top-``k`` test rows of the ranking with an empty ``corrected_label`` column to fill in."""
    test = _top_test_rows(ranking, k)
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
        raise DataError(f"top ids {preview(unknown)} are not in the part being relabelled")
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
    ``val_auc`` and :func:`nexperia_utils.evaluation.metrics.summarize`'s metrics as fractions.
    """
    from nexperia_utils.data.dataset import encode_labels

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


@dataclass
class Relabelling:
    """Table 5's inputs: the top-K suspected test images, where their corrections come from, the ones
    applied (``image_id, label, corrected_label``) and the metrics with both label sets."""

    top_ids: list[str]
    source: str
    applied: pd.DataFrame
    results: pd.DataFrame


def _top_test_rows(ranking: pd.DataFrame, k: int) -> pd.DataFrame:
    return ranking[ranking["part"] == "test"].sort_values("rank").head(int(k))


def top_test_ids(ranking: pd.DataFrame, k: int) -> list[str]:
    """The ``k`` highest-ranked good-labelled test images of a :func:`suspected_mislabels` ranking
    (the images :func:`corrections_template` lists)."""
    return _top_test_rows(ranking, k)["image_id"].astype(str).tolist()


def relabel_top_k(interp: Interpretation, ranking: pd.DataFrame, k: int, top_k: int | None = None,
                  annotations: pd.DataFrame | None = None,
                  corrections_csv: str | Path | None = None) -> Relabelling | None:
    """Relabel the top-``k`` suspected test images and score the run's ``top_k`` checkpoints both ways.

    Corrections come from ``corrections_csv`` (``image_id, corrected_label``) when given, else from
    the synthetic ``annotations``; with neither, ``None`` (fill in :func:`corrections_template` first).
    """
    top_ids = top_test_ids(ranking, k)
    if corrections_csv:
        corrections, source = read_corrections(Path(corrections_csv), interp.checkpoint.classes), f"`{corrections_csv}`"
    elif annotations is not None:
        corrections, source = corrections_from_annotations(annotations, top_ids), "the synthetic annotations"
    else:
        return None
    corrected, applied = apply_corrections(interp.part.frame, corrections, top_ids)
    results = relabel_results(interp.checkpoint, interp.part, corrected, interp.crop, top_k, interp.device)
    return Relabelling(top_ids, source, applied, results)

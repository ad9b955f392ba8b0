"""Error analysis of a trained run (report sections 1, 4.2, Table 5, Figure 10): which defects the
model misses, which good devices it rejects, where it looks, and how its features cluster.

Operating points
----------------
A device is *rejected* (flagged as defect) when its defect score (the summed defect probabilities) is at or above a
threshold. The thresholds used here:

* ``defect score >= 0.5``: the default cut of a probability.
* ``TPR >= t`` (t = 99.1 ... 100 %): the threshold of the first operating point of the ROC curve
  (decreasing thresholds, tied scores together, as :func:`nexperia_utils.evaluation.metrics.fpr_at_tpr` uses)
  whose TPR reaches ``t``. At ``TPR = 100 %`` the threshold is the *lowest defect score*, so no
  defect escapes by definition and the FPR at TPR = 100 % is set by that single image: the
  galleries therefore show the lowest-scoring defects (the report's Figure 10), the *escapes* at
  the 0.5 cut and at TPR >= 99.1 % (defects scored below that threshold) and the highest-scoring
  good images (the false alarms that are likely mislabels, report section 4.2).

Suspected mislabels, corrections and Table 5 are in :mod:`nexperia_utils.analysis.mislabels`; defect boxes in
:mod:`nexperia_utils.data.boxes`; Grad-CAM heatmaps and their localisation score in :mod:`nexperia_utils.analysis.explain`;
the galleries in :mod:`nexperia_utils.analysis.galleries`.

Embeddings
----------
The penultimate-layer activations (the input of the final linear layer, read with a forward
pre-hook on :func:`nexperia_utils.models.builders.classifier_head`; works for every architecture of
:data:`nexperia_utils.models.builders.ARCHITECTURES`) projected to 2-D with PCA and t-SNE (scikit-learn).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from scipy.stats import spearmanr
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import confusion_matrix
from torch.utils.data import DataLoader

from nexperia_utils.evaluation import metrics
from nexperia_utils.data.dataset import SplitData
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.training.checkpoints import prediction_file
from nexperia_utils.evaluation.predict import (check_part_fits, checkpoint_fingerprint, predict_proba, predictions_frame,
                                       read_prediction_cache)
from nexperia_utils.models.builders import resolve_device
from nexperia_utils.io import atomic_write_csv
from nexperia_utils.evaluation.metrics import threshold_at_tpr  # re-exported: it lived here before it moved to metrics
from nexperia_utils.data.transforms import eval_transform
from nexperia_utils.analysis.error_figures import plot_confusion, plot_embeddings, plot_score_distributions
from nexperia_utils.analysis.explain import (Heatmaps, cam_layers, compute_gallery_heatmaps,
                                            feature_map_side, localisation_table, resolve_cam_layer)
from nexperia_utils.analysis.localisation import pointing_bound
from nexperia_utils.analysis.galleries import select_gallery

if TYPE_CHECKING:
    from nexperia_utils.experiment import Experiment

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointAnalysis",
    "Interpretation",
    "checkpoint_predictions",
    "confusion_frame",
    "embed_2d",
    "open_checkpoint",
    "operating_points",
    "penultimate_features",
    "plot_confusion",
    "plot_embeddings",
    "plot_score_distributions",
    "rank_by_score",
    "threshold_at_tpr",
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


def requested_epoch(checkpoint: str | int | None) -> int | None:
    """The epoch a ``checkpoint`` argument asks for: None for ``"best"`` (also None or ""), else its number."""
    if checkpoint in ("best", None, ""):
        return None
    try:
        return int(checkpoint)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"checkpoint must be 'best' or an epoch number, got {checkpoint!r}") from exc


def open_checkpoint(run_dir: Path, checkpoint: str | int = "best", device: str | torch.device = "cpu",
                    split_hash: str | None = None) -> CheckpointAnalysis:
    """Load checkpoint ``"best"`` (highest validation AUC) or the kept checkpoint of epoch ``checkpoint``.

    ``split_hash`` (the experiment's) is compared with the run's: analysing a model on a split it
    was not trained on would put training images into the test part.
    """
    from nexperia_utils.training.checkpoints import list_checkpoints, load_checkpoint

    run_dir = Path(run_dir)
    entries = list_checkpoints(run_dir)
    if not entries:
        raise DataError(f"no checkpoints in {run_dir / 'checkpoints'}: train the run first "
                        f"(notebooks/02_baseline.ipynb, e.g. `make baseline-resnet18`)")
    epoch = requested_epoch(checkpoint)
    if epoch is None:
        entry = entries[0]
    else:
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

    Reads the prediction cache that :func:`nexperia_utils.evaluation.predict.evaluate_run` writes when the
    same weights made it for exactly the part's images, otherwise predicts and writes it; a part the
    checkpoint does not fit is refused. Adds ``part`` and ``rank`` (1 = highest defect score).
    """
    from nexperia_utils.training.checkpoints import load_checkpoint

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


def output_tag(run: str, checkpoint: str | int | None = "best", crop: str = "center", cam_method: str = "gradcam",
               cam_layer: str | None = None) -> str:
    """The file-name tag of an error analysis's tables and figures: ``run``, then whatever differs from the defaults.

    ``resnet18-ce`` for the best checkpoint, centre crop, Grad-CAM at the profile's layer;
    ``resnet18-ce-epoch011-ten-layercam-layer1`` when all four are changed, so analyses of other checkpoints,
    crops or CAM settings of one run do not overwrite each other.
    """
    if not run:
        raise ConfigError("run must be a non-empty run name")
    parts = [str(run)]
    epoch = requested_epoch(checkpoint)
    if epoch is not None:
        parts.append(f"epoch{epoch:03d}")
    if crop != "center":
        parts.append(str(crop))
    if cam_method != "gradcam":
        parts.append(str(cam_method))
    if cam_layer is not None:
        parts.append(str(cam_layer))
    return "-".join(parts)


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


# --------------------------------------------------------------------------- embeddings
@torch.no_grad()
def penultimate_features(model: torch.nn.Module, arch: str, part: SplitData, image_size: int,
                         device: str | torch.device = "cpu", batch_size: int = 128) -> np.ndarray:
    """Activations feeding the final linear layer, ``(N, D)`` (ResNet18/34: 512, ResNet50: 2048,
    VGG19_bn: 4096, ResNet_att_2: 1024), for the centre crops of ``part``."""
    from nexperia_utils.models.builders import classifier_head

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


# --------------------------------------------------------------------------- the interpretation object
@dataclass
class Interpretation:
    """One checkpoint of a run on one part, predicted once; the error analysis's views hang off it.

    In the spirit of fastai's ``ClassificationInterpretation``: :meth:`from_experiment` opens the
    checkpoint and reads (or makes) its predictions; :meth:`confusion`, :meth:`most_confused`,
    :meth:`top_losses`, :meth:`operating_points`, the galleries, :meth:`heatmaps` (computed once per
    size and method, then only for images not seen yet) and :meth:`features` all use them.
    """

    checkpoint: CheckpointAnalysis
    part: SplitData
    predictions: pd.DataFrame
    crop: str = "center"
    device: str | torch.device = "cpu"
    _points: pd.DataFrame | None = field(default=None, repr=False)
    _heatmaps: dict[tuple[int, str], Heatmaps] = field(default_factory=dict, repr=False)

    @classmethod
    def from_experiment(cls, exp: "Experiment", run: str, part_name: str = "test", checkpoint: str | int = "best",
                        crop: str = "center", device: str | torch.device = "cpu") -> "Interpretation":
        """The checkpoint ``checkpoint`` of ``exp``'s run ``run`` on the part ``part_name`` at its input size."""
        analysis = open_checkpoint(exp.run_dir(run), checkpoint, device=device, split_hash=exp.split_hash)
        part = exp.part(part_name, analysis.image_size)
        return cls(analysis, part, checkpoint_predictions(analysis, part, crop, device=device), crop, device)

    # ---- the predictions
    @property
    def y_defect(self) -> np.ndarray:
        return (self.predictions["label"].astype(str) != self.checkpoint.negative_class).to_numpy()

    @property
    def scores(self) -> np.ndarray:
        return self.predictions["defect_score"].to_numpy(dtype=float)

    @property
    def auc(self) -> float:
        return metrics.roc_auc(self.y_defect, self.scores)

    def confusion(self) -> pd.DataFrame:
        """Confusion matrix, rows the filed label, columns the argmax class."""
        return confusion_frame(self.predictions["label"], self.predictions["predicted"], self.checkpoint.classes)

    def plot_confusion(self, title: str = "") -> Figure:
        return plot_confusion(self.confusion(), title=title)

    def most_confused(self, min_count: int = 1) -> pd.DataFrame:
        """The off-diagonal cells of the confusion matrix with at least ``min_count`` images, largest first."""
        cells = self.confusion().stack().rename("count").reset_index()
        cells = cells[(cells["label"] != cells["predicted"]) & (cells["count"] >= int(min_count))]
        return cells.sort_values("count", ascending=False, kind="stable").reset_index(drop=True)

    def top_losses(self, k: int | None = None) -> pd.DataFrame:
        """The images with the highest cross-entropy of their filed label, ``-log p(label)``, highest first."""
        probs = np.stack([self.predictions[f"p_{c}"].to_numpy(dtype=float) for c in self.checkpoint.classes], axis=1)
        filed = np.array([self.checkpoint.classes.index(str(c)) for c in self.predictions["label"]])
        out = self.predictions.assign(loss=-np.log(np.clip(probs[np.arange(len(filed)), filed], 1e-12, None)))
        out = out.sort_values("loss", ascending=False, kind="stable")
        return out if k is None else out.head(int(k))

    # ---- operating points
    def operating_points(self) -> pd.DataFrame:
        """:func:`operating_points` of the defect scores (computed once)."""
        if self._points is None:
            self._points = operating_points(self.y_defect, self.scores)
        return self._points

    def thresholds(self) -> dict[str, float]:
        points = self.operating_points()
        return dict(zip(points["operating_point"], points["threshold"]))

    def escapes(self, threshold: float) -> list[str]:
        """Ids of the defect-labelled images scored below ``threshold``, lowest score first."""
        return select_gallery(self.predictions, self.checkpoint.negative_class, "missed", len(self.predictions),
                              threshold=threshold)["image_id"].tolist()

    def false_alarms(self, threshold: float) -> list[str]:
        """Ids of the good-labelled images scored at or above ``threshold``, highest first."""
        return select_gallery(self.predictions, self.checkpoint.negative_class, "false_alarms",
                              len(self.predictions), threshold=threshold)["image_id"].tolist()

    def plot_score_distributions(self, marked: Iterable[str] = (), marked_label: str = "annotated mislabel",
                                 title: str = "") -> Figure:
        """Defect scores per filed class with the 0.5 cut, the first TPR threshold and TPR = 100 %."""
        points = self.operating_points()
        shown = points.iloc[[0, 1, len(points) - 1]]
        return plot_score_distributions(self.predictions, self.checkpoint.classes,
                                        dict(zip(shown["operating_point"], shown["threshold"])),
                                        marked=marked, marked_label=marked_label, title=title)

    def galleries(self, n: int, threshold: float = DEFAULT_THRESHOLD) -> dict[str, pd.DataFrame]:
        """The three galleries of the report: escapes at ``threshold``, lowest-scoring defects, highest-scoring good."""
        negative = self.checkpoint.negative_class
        return {"missed": select_gallery(self.predictions, negative, "missed", n, threshold=threshold),
                "lowest_defects": select_gallery(self.predictions, negative, "lowest_defects", n),
                "highest_good": select_gallery(self.predictions, negative, "highest_good", n)}

    # ---- heatmaps and features
    def heatmaps(self, part: SplitData, indices: Iterable[int], image_size: int,
                 method: str = "gradcam", layer: str | None = "auto") -> Heatmaps:
        """Grad-CAM heatmaps of the images ``indices`` of ``part`` on their ``image_size`` centre crops
        (``part`` decoded for that size: ``exp.part(name, image_size)``), read at ``layer``
        (:func:`~nexperia_utils.analysis.explain.compute_heatmaps`); each image's map is computed
        once per size, method and layer, so later calls pay only for images not seen yet."""
        layer = resolve_cam_layer(self.checkpoint.arch, layer, int(image_size))
        key = (int(image_size), method, layer)
        have = self._heatmaps.get(key)
        new = sorted(set(int(i) for i in indices) - (set() if have is None else set(have.indices.tolist())))
        if new or have is None:
            made = compute_gallery_heatmaps(self.checkpoint, part, new, int(image_size), method,
                                           device=self.device, layer=layer)
            have = made if have is None else _merge_heatmaps(have, made)
            self._heatmaps[key] = have
        return have

    def localisation_by_layer(self, part: SplitData, boxes: Sequence[tuple | None], groups: Sequence[str],
                              image_size: int, methods: Sequence[str] = ("gradcam", "layercam"),
                              layer: str = "auto") -> pd.DataFrame:
        """The pointing game and mass in the box (the ``all`` row of
        :func:`~nexperia_utils.analysis.explain.localisation_table`) of every layer Grad-CAM can read
        (:func:`~nexperia_utils.analysis.explain.cam_layers`) and every method of ``methods``, over the
        images of ``part`` with a box (``boxes`` in ``image_size`` pixels): how much the choice of layer
        and method matters at this input size. One row per (layer, method) with the layer's feature-map
        size; ``chosen`` marks ``layer`` (the layer of the notebook's heatmaps; ``"auto"``: :func:`auto_cam_layer`'s
        choice); ``pointing_bound`` is the most any heatmap of
        that layer could score (:func:`~nexperia_utils.analysis.localisation.pointing_bound`)."""
        arch = self.checkpoint.arch
        with_box = [i for i, b in enumerate(boxes) if b is not None]
        chosen = resolve_cam_layer(arch, layer, int(image_size))
        rows = []
        for name in cam_layers(arch):
            side = feature_map_side(arch, name, int(image_size))
            bound = pointing_bound(boxes, max(side, 1), int(image_size))
            for method in methods:
                heat = self.heatmaps(part, with_box, image_size, method, layer=name)
                summary, _ = localisation_table(heat, boxes, groups)
                rows.append({"layer": name, "method": method, "feature_map": f"{side}x{side}", "chosen": name == chosen,
                             **summary.loc["all", ["n", "pointing_game", "mass_in_box", "chance"]].to_dict(),
                             "pointing_bound": bound})
        return pd.DataFrame(rows)

    def cam_score_agreement(self, part: SplitData, heatmaps: Heatmaps) -> float | None:
        """Spearman correlation between the defect scores at ``part``'s size and at the training size over
        the heatmapped images; None when ``part`` is at the training size or fewer than 3 images have maps."""
        cam_size = heatmaps.image_size
        if cam_size == self.checkpoint.image_size or len(heatmaps.indices) < 3:
            return None
        probs = predict_proba(self.checkpoint.model, part, cam_size, "center", device=self.device)
        cam_scores = metrics.defect_score(probs, self.checkpoint.negative_index)
        return float(spearmanr(cam_scores[heatmaps.indices], self.scores[heatmaps.indices]).statistic)

    def predictions_of(self, part: SplitData) -> pd.DataFrame:
        """The same checkpoint's predictions on another part (at the training size)."""
        if part.name == self.part.name:
            return self.predictions
        return checkpoint_predictions(self.checkpoint, part, self.crop, device=self.device)

    def features(self, parts: Sequence[SplitData]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Penultimate-layer activations of ``parts`` (centre crops) with their image ids and filed labels."""
        c = self.checkpoint
        feats = np.concatenate([penultimate_features(c.model, c.arch, p, c.image_size, device=self.device)
                                for p in parts])
        ids = np.concatenate([p.frame["image_id"].astype(str).to_numpy() for p in parts])
        labels = np.concatenate([p.frame["label"].astype(str).to_numpy() for p in parts])
        return feats, ids, labels


def _merge_heatmaps(a: Heatmaps, b: Heatmaps) -> Heatmaps:
    order = np.argsort(np.concatenate([a.indices, b.indices]), kind="stable")
    return Heatmaps(np.concatenate([a.indices, b.indices])[order], np.concatenate([a.images, b.images])[order],
                    np.concatenate([a.maps, b.maps])[order], a.image_size, a.method, a.layer)

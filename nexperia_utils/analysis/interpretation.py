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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
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
from nexperia_utils.reporting.figures import new_figure

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointAnalysis",
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


# --------------------------------------------------------------------------- figures
def plot_confusion(confusion: pd.DataFrame, title: str = "") -> Figure:
    """Confusion matrix heatmap (seaborn): colour = share of the row (log scale), numbers = counts."""
    import seaborn as sns

    counts = confusion.to_numpy()
    share = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    n = len(confusion)
    fig = new_figure((1.0 + 0.75 * n, 0.8 + 0.65 * n))
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
    fig = new_figure((9.0, 0.55 * len(order) + 1.6))
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
    fig = new_figure((6.0 * len(coords) + 1.8, 5.6))
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

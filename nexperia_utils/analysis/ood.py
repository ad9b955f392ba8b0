"""Flagging the unknown: out-of-distribution (OOD) scores of a trained classifier, and a detector.

A line model meets images it was never trained for: another machine's batch, camera glitches, a new
kind of foreign material. Three scores say how unfamiliar an image looks to a model (higher = more
unfamiliar):

* ``max_softmax``: ``1 - max_c p_c`` (Hendrycks & Gimpel, 2017);
* ``energy``: ``-T logsumexp(logits / T)`` (Liu et al., 2020), ``T = 1``;
* ``mahalanobis``: the smallest squared Mahalanobis distance of the penultimate-layer features to a
  class mean, with one shared covariance (Lee et al., 2018) fitted on the training images
  (scikit-learn's Ledoit-Wolf estimate, well conditioned with 512 features and a few thousand images).

:class:`OodDetector` holds one score and its threshold, the ``quantile`` of the validation images'
scores (0.99: one in a hundred familiar images is flagged), and is saved beside the run's
checkpoints (``ood_detector.npz``). The inspector routes flagged images to review; the drift check
(:mod:`nexperia_utils.line.drift`) compares the flagged share of a new folder with the expected one.
"""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from scipy.special import logsumexp, softmax
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from nexperia_utils.data.dataset import SplitData
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.io import atomic_write
from nexperia_utils.models.builders import resolve_device
from nexperia_utils.data.transforms import eval_transform

logger = logging.getLogger(__name__)

OOD_METHODS: tuple[str, ...] = ("max_softmax", "energy", "mahalanobis")
DETECTOR_FILE = "ood_detector.npz"


def _last_linear(model: torch.nn.Module) -> torch.nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no linear classification layer to take features from")
    return linears[-1]


@torch.inference_mode()
def logits_and_features(model: torch.nn.Module, part: SplitData, image_size: int, batch_size: int = 128,
                        device: str | torch.device = "cpu", amp: bool = True,
                        progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N, C)`` and penultimate features ``(N, D)`` (the classifier's input), centre crop, float64."""
    device = resolve_device(device)
    features: list[torch.Tensor] = []
    handle = _last_linear(model).register_forward_hook(lambda _m, inputs, _out: features.append(inputs[0].float()))
    loader = DataLoader(part.dataset(eval_transform(image_size, "center")), batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    logits: list[torch.Tensor] = []
    try:
        for images, _, _ in tqdm(loader, desc=f"features {part.name}", disable=not progress, leave=False):
            images = images.to(device)
            if amp:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                logits.append(model(images).float())
    finally:
        handle.remove()
        model.train(was_training)
    return (torch.cat(logits).cpu().numpy().astype(np.float64),
            torch.cat(features).flatten(1).cpu().numpy().astype(np.float64))


class ModelOutputs:
    """:func:`logits_and_features` of one model at one input size, computed once per part.

    Parts are told apart by name and image ids, so the OOD table, the detector and the score plot
    of notebook 09 share one forward pass per part instead of one each.
    """

    def __init__(self, model: torch.nn.Module, image_size: int, device: str | torch.device = "cpu",
                 progress: bool = False) -> None:
        self.model, self.image_size, self.device, self.progress = model, int(image_size), device, progress
        self._done: dict[tuple[str, tuple[str, ...]], tuple[np.ndarray, np.ndarray]] = {}
        self.passes = 0  # forward passes over a part so far

    def __call__(self, part: SplitData) -> tuple[np.ndarray, np.ndarray]:
        key = (part.name, tuple(part.frame["image_id"].astype(str)))
        if key not in self._done:
            self._done[key] = logits_and_features(self.model, part, self.image_size, device=self.device,
                                                  progress=self.progress)
            self.passes += 1
        return self._done[key]


def max_softmax_score(logits: np.ndarray) -> np.ndarray:
    """``1 - max_c softmax(logits)_c``: 0 for a confident prediction, up to ``1 - 1/C``."""
    return 1.0 - softmax(np.asarray(logits, dtype=np.float64), axis=1).max(axis=1)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``-T logsumexp(logits / T)``: low (very negative) for familiar images."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    return -temperature * logsumexp(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


@dataclass
class Mahalanobis:
    """Class means and one shared precision matrix of the training features."""

    means: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> "Mahalanobis":
        features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
        if features.ndim != 2 or len(features) != len(labels):
            raise DataError(f"features {features.shape} and labels {labels.shape} do not match")
        classes = np.unique(labels[labels >= 0])
        if len(classes) == 0:
            raise DataError("Mahalanobis.fit needs labelled features (labels >= 0)")
        means = np.stack([features[labels == c].mean(axis=0) for c in classes])
        centred = np.concatenate([features[labels == c] - means[i] for i, c in enumerate(classes)])
        return cls(means, LedoitWolf().fit(centred).precision_)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Smallest squared Mahalanobis distance to a class mean, per row."""
        features = np.asarray(features, dtype=np.float64)
        left = features @ self.precision
        # (f - m)^T P (f - m) = f^T P f - 2 f^T P m + m^T P m for every class mean m at once.
        quad = np.einsum("nd,nd->n", left, features)[:, None] - 2 * left @ self.means.T + \
            np.einsum("cd,dk,ck->c", self.means, self.precision, self.means)[None, :]
        return quad.min(axis=1)


def ood_scores(method: str, logits: np.ndarray, features: np.ndarray | None = None,
               mahalanobis: Mahalanobis | None = None) -> np.ndarray:
    """The ``method`` score of every image (higher = more unfamiliar)."""
    if method == "max_softmax":
        return max_softmax_score(logits)
    if method == "energy":
        return energy_score(logits)
    if method == "mahalanobis":
        if features is None or mahalanobis is None:
            raise ConfigError("the mahalanobis score needs the features and a fitted Mahalanobis")
        return mahalanobis.score(features)
    raise ConfigError(f"unknown OOD method {method!r}; choose one of {list(OOD_METHODS)}")


def ood_auroc(familiar: np.ndarray, unfamiliar: np.ndarray) -> float:
    """AUROC of telling ``unfamiliar`` scores (positive) from ``familiar`` ones (scikit-learn)."""
    familiar, unfamiliar = np.asarray(familiar, float), np.asarray(unfamiliar, float)
    if len(familiar) == 0 or len(unfamiliar) == 0:
        return float("nan")
    y = np.r_[np.zeros(len(familiar)), np.ones(len(unfamiliar))]
    return float(roc_auc_score(y, np.r_[familiar, unfamiliar]))


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@dataclass
class OodDetector:
    """One OOD score with its threshold (the ``quantile`` of the validation scores)."""

    method: str
    threshold: float
    quantile: float
    fingerprint: str
    mahalanobis: Mahalanobis | None = None
    val_defect_scores: np.ndarray | None = None
    """The validation images' defect scores (the drift check's reference distribution)."""

    def score(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        return ood_scores(self.method, logits, features, self.mahalanobis)

    def flag(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        return self.score(logits, features) >= self.threshold

    def save(self, path: Path) -> None:
        """Write the detector to ``path`` (``.npz``, no pickles), atomically."""
        arrays = {"header": np.array(json.dumps({"method": self.method, "threshold": self.threshold,
                                                 "quantile": self.quantile, "fingerprint": self.fingerprint}))}
        if self.mahalanobis is not None:
            arrays.update(means=self.mahalanobis.means, precision=self.mahalanobis.precision)
        if self.val_defect_scores is not None:
            arrays["val_defect_scores"] = self.val_defect_scores
        atomic_write(Path(path), lambda tmp: tmp.write_bytes(_npz_bytes(arrays)))

    @classmethod
    def load(cls, path: Path) -> "OodDetector":
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                maha = Mahalanobis(data["means"], data["precision"]) if "means" in data else None
                val = data["val_defect_scores"] if "val_defect_scores" in data else None
        except (OSError, KeyError, ValueError) as err:
            raise DataError(f"{path} is not an OOD detector file ({err}); delete it to fit the detector again") from err
        return cls(header["method"], float(header["threshold"]), float(header["quantile"]), header["fingerprint"],
                   maha, val)


def fit_detector(model: torch.nn.Module, train_part: SplitData, val_part: SplitData, image_size: int,
                 negative_index: int, fingerprint: str = "", method: str = "mahalanobis", quantile: float = 0.99,
                 device: str | torch.device = "cpu", progress: bool = False,
                 outputs: ModelOutputs | None = None) -> OodDetector:
    """Fit ``method`` on the training features and set its threshold at the validation ``quantile``.

    ``outputs`` (a :class:`ModelOutputs` of this model and size) reuses forward passes already made."""
    from nexperia_utils.evaluation import metrics

    if method not in OOD_METHODS:
        raise ConfigError(f"unknown OOD method {method!r}; choose one of {list(OOD_METHODS)}")
    if not 0.5 <= quantile < 1:
        raise ConfigError(f"quantile must be in [0.5, 1), got {quantile}")
    outputs = outputs or ModelOutputs(model, image_size, device, progress)
    maha = None
    if method == "mahalanobis":
        maha = Mahalanobis.fit(outputs(train_part)[1], train_part.labels)
    val_logits, val_features = outputs(val_part)
    val_scores = ood_scores(method, val_logits, val_features, maha)
    val_defect = metrics.defect_score(softmax(val_logits, axis=1), negative_index)
    return OodDetector(method, float(np.quantile(val_scores, quantile)), float(quantile), fingerprint, maha,
                       val_defect)


def ood_table(model: torch.nn.Module, train_part: SplitData, val_part: SplitData, familiar: SplitData,
              unfamiliar: Mapping[str, SplitData], image_size: int, quantile: float = 0.99,
              device: str | torch.device = "cpu", progress: bool = False,
              outputs: ModelOutputs | None = None) -> pd.DataFrame:
    """Per OOD method: AUROC (percent) of each ``unfamiliar`` group against ``familiar``, and shares flagged.

    The Mahalanobis score is fitted on ``train_part``'s features; every method's threshold is the
    ``quantile`` of its ``val_part`` scores, as :func:`fit_detector` sets it. ``outputs`` (a
    :class:`ModelOutputs` of this model and size) reuses forward passes already made.
    """
    outputs = outputs or ModelOutputs(model, image_size, device, progress)
    maha = Mahalanobis.fit(outputs(train_part)[1], train_part.labels)
    val, fam = outputs(val_part), outputs(familiar)
    groups = {name: outputs(part) for name, part in unfamiliar.items()}
    rows = {}
    for method in OOD_METHODS:
        threshold = np.quantile(ood_scores(method, *val, maha), quantile)
        fam_scores = ood_scores(method, *fam, maha)
        row = {f"flagged {familiar.name}": 100 * float((fam_scores >= threshold).mean())}
        for name, (logits, features) in groups.items():
            scores = ood_scores(method, logits, features, maha)
            row[f"AUROC {name}"] = 100 * ood_auroc(fam_scores, scores)
            row[f"flagged {name}"] = 100 * float((scores >= threshold).mean())
        rows[method] = row
    return pd.DataFrame.from_dict(rows, orient="index")

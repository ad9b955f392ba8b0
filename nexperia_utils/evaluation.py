"""Prediction with a crop style and evaluation of a run's top-k checkpoints on a split part.

Crops: ``center`` (one crop), ``five`` (corners + centre) and ``ten`` (five + their horizontal
flips) of the resized image. For several crops the softmax probabilities of the crops are averaged
(the report says it averages the outputs; the original code averaged the logits before the
softmax; we average probabilities so the defect score stays an average of per-crop scores).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from nexperia_utils import metrics
from nexperia_utils.dataset import SplitData
from nexperia_utils.errors import DataError
from nexperia_utils.io import atomic_write_csv
from nexperia_utils.transforms import CROP_STYLES, eval_transform

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.inference_mode()
def predict_proba(
    model: torch.nn.Module,
    part: SplitData,
    image_size: int,
    crop: str = "center",
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    progress: bool = False,
    num_workers: int = 0,
    amp: bool = True,
) -> np.ndarray:
    """Softmax probabilities ``(N, C)`` of every image of ``part``, averaged over the crops.

    ``amp``: the forward pass under bf16 autocast with channels_last inputs (2-3x faster on this
    CPU); the softmax is always taken in float32 of the logits. ``amp=False`` is plain float32.
    """
    device = resolve_device(device)
    n_crops = {"center": 1, "five": 5, "ten": 10}[crop]
    loader = DataLoader(
        part.dataset(eval_transform(image_size, crop)),
        batch_size=max(1, batch_size // n_crops),
        shuffle=False,
        num_workers=num_workers,
    )
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    use_amp = bool(amp)
    for images, _, _ in tqdm(loader, desc=f"predict {part.name} ({crop})", disable=not progress, leave=False):
        images = images.to(device, non_blocking=True)
        if images.ndim == 5:  # (B, n_crops, 3, S, S)
            b, n = images.shape[:2]
            images = images.flatten(0, 1)
        else:
            b, n = images.shape[0], 1
        if use_amp:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(images)
        probs = F.softmax(logits.float(), dim=1).view(b, n, -1).mean(dim=1)
        out.append(probs.cpu().numpy())
    model.train(was_training)
    return np.concatenate(out).astype(np.float64)


def predictions_frame(part: SplitData, probs: np.ndarray, classes: Sequence[str], negative_index: int) -> pd.DataFrame:
    """Per-image predictions: image id, label, one probability column per class, defect score."""
    frame = pd.DataFrame({"image_id": part.frame["image_id"], "label": part.frame["label"]})
    for i, name in enumerate(classes):
        frame[f"p_{name}"] = probs[:, i]
    frame["defect_score"] = metrics.defect_score(probs, negative_index)
    frame["predicted"] = [classes[i] for i in probs.argmax(axis=1)]
    return frame


def evaluate_run(
    run_dir: Path,
    part: SplitData,
    crops: Sequence[str] = ("center",),
    top_k: int | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 128,
    progress: bool = True,
    save_predictions: bool = True,
) -> pd.DataFrame:
    """Evaluate the best ``top_k`` checkpoints of a run on ``part`` with each crop style.

    Returns one row per (checkpoint, crop) with the metrics of :func:`metrics.summarize` as
    fractions, plus ``model``, ``arch``, ``crop``, ``checkpoint``, ``epoch`` and ``val_auc``. Per-image
    predictions go to ``run_dir/predictions/<part>-<crop>-epoch<NNN>.csv``; results already
    computed for the same checkpoint are read back instead of recomputed.
    """
    from nexperia_utils.training import list_checkpoints, load_checkpoint, read_checkpoint_meta  # training imports this module

    for crop in crops:
        if crop not in CROP_STYLES:
            raise DataError(f"unknown crop style {crop!r}; choose from {list(CROP_STYLES)}")
    device = resolve_device(device)
    entries = list_checkpoints(run_dir)
    if top_k is not None:
        entries = entries[:top_k]
    if not entries:
        raise DataError(f"no checkpoints in {run_dir / 'checkpoints'}: train the model first (02_baseline.ipynb)")
    rows = []
    for entry in tqdm(entries, desc=f"evaluate {Path(run_dir).name}", disable=not progress):
        meta = read_checkpoint_meta(entry["path"])
        classes = meta["classes"]
        neg = classes.index(meta["negative_class"])
        labels = np.asarray(part.labels)
        model = None
        for crop in crops:
            pred_file = Path(run_dir) / "predictions" / f"{part.name}-{crop}-epoch{entry['epoch']:03d}.csv"
            if pred_file.exists():
                frame = pd.read_csv(pred_file)
                probs = frame[[f"p_{c}" for c in classes]].to_numpy()
            else:
                if model is None:  # load the weights only when something must be predicted
                    model, meta = load_checkpoint(entry["path"], device=device)
                probs = predict_proba(model, part, meta["config"]["image_size"], crop, batch_size, device)
                if save_predictions:
                    atomic_write_csv(pred_file, predictions_frame(part, probs, classes, neg))
            summary = metrics.summarize(probs, labels, neg)
            rows.append({
                "model": meta.get("display_name", meta["config"]["arch"]),
                "arch": meta["config"]["arch"],
                "loss": meta["config"].get("loss", "ce"),
                "run": Path(run_dir).name,
                "crop": crop,
                "checkpoint": Path(entry["path"]).name,
                "epoch": entry["epoch"],
                "val_auc": entry["val_auc"],
                **summary,
            })
    return pd.DataFrame(rows)

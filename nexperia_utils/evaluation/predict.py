"""Prediction with a crop style and evaluation of a run's top-k checkpoints on a split part.

Crops: ``center`` (one crop), ``five`` (corners + centre) and ``ten`` (five + their horizontal
flips) of the resized image. For several crops the softmax probabilities of the crops are averaged
(the report says it averages the outputs; the original code averaged the logits before the
softmax; we average probabilities so the defect score stays an average of per-crop scores).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from nexperia_utils.evaluation import metrics
from nexperia_utils.training.checkpoints import list_checkpoints, load_checkpoint, prediction_file, read_checkpoint_meta
from nexperia_utils.data.dataset import SplitData, encode_labels
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.io import atomic_write_csv
from nexperia_utils.models.builders import resolve_device
from nexperia_utils.data.transforms import CROP_STYLES, eval_transform, resize_size_for

logger = logging.getLogger(__name__)


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


def predictions_frame(part: SplitData, probs: np.ndarray, classes: Sequence[str], negative_index: int,
                      checkpoint: str = "") -> pd.DataFrame:
    """Per-image predictions: image id, label, one probability column per class, defect score.

    ``checkpoint``: the :func:`checkpoint_fingerprint` of the weights that made them (kept in the
    prediction cache so that a cache is never read back for other weights).
    """
    frame = pd.DataFrame({"image_id": part.frame["image_id"], "label": part.frame["label"]})
    for i, name in enumerate(classes):
        frame[f"p_{name}"] = probs[:, i]
    frame["defect_score"] = metrics.defect_score(probs, negative_index)
    frame["predicted"] = [classes[i] for i in probs.argmax(axis=1)]
    if checkpoint:
        frame["checkpoint"] = checkpoint
    return frame


def checkpoint_fingerprint(path: Path) -> str:
    """First 16 hex digits of the SHA-256 of a checkpoint file (about 0.1 s per 100 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def read_prediction_cache(file: Path, part: SplitData, fingerprint: str) -> pd.DataFrame | None:
    """The cached predictions in ``file`` if they were made by these weights for exactly ``part``'s images.

    Returns ``None`` (predict again) when the file is missing, was written by other weights (or by a
    version without the ``checkpoint`` column), or lists other images; the reason is logged.
    """
    if not file.exists():
        return None
    frame = pd.read_csv(file, dtype={"image_id": str, "checkpoint": str})
    written_by = str(frame["checkpoint"].iloc[0]) if "checkpoint" in frame.columns and len(frame) else ""
    if written_by != fingerprint:
        logger.warning("%s was written by other weights (checkpoint %s, now %s); predicting again",
                       file, written_by or "unknown", fingerprint)
        return None
    if frame["image_id"].tolist() != part.frame["image_id"].astype(str).tolist():
        logger.warning("%s lists other images than the %s part; predicting again", file, part.name)
        return None
    return frame


def check_part_fits(meta: dict, part: SplitData, source: str | Path) -> None:
    """Refuse to score ``part`` with a checkpoint (``meta``, from ``source``) it does not fit.

    Checks that the part's labels mean the same classes for the checkpoint, that its images are
    decoded for the checkpoint's input size, and that it comes from the split the checkpoint was
    trained on (when both know their split). Each mismatch is an error naming both sides.
    """
    classes = list(meta["classes"])
    names = part.frame["label"].astype(str).tolist()
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DataError(f"{source} was trained on the classes {classes}; the {part.name} part has the "
                        f"label(s) {unknown} it does not know: evaluate it on data with the same classes")
    if not np.array_equal(encode_labels(names, classes), np.asarray(part.labels)):
        raise DataError(f"the {part.name} part numbers its classes in another order than {source} "
                        f"({classes}); open the experiment on the data the checkpoint was trained on")
    size = int(meta["config"]["image_size"])
    decoded = int(min(part.images.shape[1:3]))
    if decoded != resize_size_for(size):
        raise ConfigError(f"the {part.name} part is decoded at {decoded} px (for {decoded * 224 / 255:.0f} px crops) "
                          f"but {source} takes {size} px inputs ({resize_size_for(size)} px decoded); pass "
                          f"exp.part({part.name!r}, {size})")
    trained_on = meta.get("split_hash") or ""
    if part.split_hash and trained_on and part.split_hash != trained_on:
        raise DataError(f"{source} was trained on the split {trained_on}, but the {part.name} part comes from "
                        f"the split {part.split_hash}: its images may have been training images; open the "
                        f"experiment with the data and split seed the run used")


def evaluate_run(
    run_dir: Path,
    part: SplitData,
    crops: Sequence[str] = ("center",),
    top_k: int | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 128,
    progress: bool = True,
    save_predictions: bool = True,
    num_workers: int = 0,
) -> pd.DataFrame:
    """Evaluate the best ``top_k`` checkpoints of a run on ``part`` with each crop style.

    ``num_workers`` loader processes crop the images (worth it on a GPU, where ten crops of a
    224-px test part otherwise keep one CPU core busy while the GPU waits).

    Returns one row per (checkpoint, crop) with the metrics of :func:`metrics.summarize` as
    fractions, plus ``model``, ``arch``, ``crop``, ``checkpoint``, ``epoch`` and ``val_auc``. Per-image
    predictions go to :func:`prediction_file`; predictions already made by the same weights for
    the same images are read back instead of recomputed. A part the checkpoints do not fit (other
    classes, image size or split) raises an error (:func:`check_part_fits`).
    """

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
        check_part_fits(meta, part, entry["path"])
        classes = meta["classes"]
        neg = classes.index(meta["negative_class"])
        labels = np.asarray(part.labels)
        fingerprint = checkpoint_fingerprint(entry["path"])
        model = None
        for crop in crops:
            pred_file = prediction_file(run_dir, part.name, crop, entry["epoch"])
            cached = read_prediction_cache(pred_file, part, fingerprint)
            if cached is not None:
                probs = cached[[f"p_{c}" for c in classes]].to_numpy()
            else:
                if model is None:  # load the weights only when something must be predicted
                    model, meta = load_checkpoint(entry["path"], device=device)
                probs = predict_proba(model, part, meta["config"]["image_size"], crop, batch_size, device,
                                      num_workers=num_workers)
                if save_predictions:
                    atomic_write_csv(pred_file, predictions_frame(part, probs, classes, neg, fingerprint))
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


def best_checkpoint_predictions(results: pd.DataFrame, part: SplitData,
                                runs_root: Path) -> dict[tuple[str, str], pd.DataFrame]:
    """The cached ``part`` predictions of each model's best checkpoint, per crop style.

    ``results`` is an :func:`evaluate_run` result (several runs concatenated is fine); for each
    (model, crop) the row with the highest validation AUC names the run and epoch, whose prediction
    cache under ``runs_root/<run>`` is read back only if those weights wrote it for exactly
    ``part``'s images. Returns ``{(model, crop): predictions}`` in the order of ``results``.
    """
    missing = {"model", "crop", "run", "epoch", "val_auc"} - set(results.columns)
    if missing:
        raise DataError(f"best_checkpoint_predictions needs an evaluate_run result; missing columns {sorted(missing)}")
    out: dict[tuple[str, str], pd.DataFrame] = {}
    for (model, crop), group in results.groupby(["model", "crop"], sort=False):
        best = group.sort_values("val_auc", ascending=False, kind="stable").iloc[0]
        run_dir = Path(runs_root) / str(best["run"])
        entry = next((e for e in list_checkpoints(run_dir) if e["epoch"] == int(best["epoch"])), None)
        if entry is None:
            raise DataError(f"{run_dir.name} no longer keeps the checkpoint of epoch {int(best['epoch'])}; "
                            f"evaluate the run again (evaluate_run)")
        file = prediction_file(run_dir, part.name, str(crop), int(best["epoch"]))
        cached = read_prediction_cache(file, part, checkpoint_fingerprint(entry["path"]))
        if cached is None:
            raise DataError(f"{file} is missing or was not written by {entry['path'].name} for the {part.name} "
                            f"part: run evaluate_run({run_dir.name}, part, crops=[{crop!r}]) first")
        out[(str(model), str(crop))] = cached
    return out

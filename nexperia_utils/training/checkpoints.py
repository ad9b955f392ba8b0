"""The run folder: where a training run keeps its state, and the one place that knows its file names.

A run folder (``outputs/<profile>/runs/<run>``) holds::

    config.json                 the TrainConfig, the split's hash, the class list (:func:`read_run_meta`)
    history.csv                 one row per epoch (1-based ``epoch`` column)
    checkpoints/epoch_NNN.pt    the ``top_k`` checkpoints with the best validation AUC (:func:`list_checkpoints`)
    checkpoints/index.csv       epoch and validation AUC of the kept checkpoints, best first
    checkpoints/last.pt         the latest state, while training (removed once finished)
    checkpoints/final.pt        once finished: the last epoch's model and loss state
    sat/epoch_NNN.npz           per-sample SAT weights and soft targets (SAT losses only)
    predictions/<part>-<crop>-epochNNN.csv   cached predictions of a kept checkpoint
    done.json                   written last: training time, peak memory, device (:func:`load_result`)

Epochs are numbered from 1 everywhere: in file names, ``history.csv``, ``index.csv`` and the
``epoch`` of every checkpoint payload (the number of epochs trained when it was saved).

:func:`prepare_run_dir` decides whether a run is new, resumes or is done, and refuses to mix runs
of different configurations. Checkpoints hold only tensors and plain values, so they load with
``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.io import atomic_write, atomic_write_csv, atomic_write_text
from nexperia_utils.models.builders import build_model, resolve_device

#: Payload keys that are training state, not metadata (left out of :func:`load_checkpoint`'s meta).
STATE_KEYS = ("model", "optimizer", "scheduler", "loss", "rng", "rng_ranks")

#: Settings that do not change the weights a run produces: a run may resume or be reused with other
#: values (on another device, with another evaluation batch size). The loader's ``num_workers`` is not
#: among them: the augmentation draws its random numbers in the worker processes, so another number
#: of workers gives other augmented images.
RESULT_NEUTRAL = ("device", "eval_batch_size")


# --------------------------------------------------------------------------- file names
def config_file(run_dir: Path) -> Path:
    return Path(run_dir) / "config.json"


def history_file(run_dir: Path) -> Path:
    return Path(run_dir) / "history.csv"


def done_file(run_dir: Path) -> Path:
    return Path(run_dir) / "done.json"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def last_checkpoint(run_dir: Path) -> Path:
    return checkpoint_dir(run_dir) / "last.pt"


def final_checkpoint(run_dir: Path) -> Path:
    return checkpoint_dir(run_dir) / "final.pt"


def checkpoint_name(epoch: int) -> str:
    """``epoch_NNN.pt`` of a kept checkpoint (``epoch`` from 1)."""
    return f"epoch_{int(epoch):03d}.pt"


def sat_dir(run_dir: Path) -> Path:
    """``sat/``: the SAT snapshots of a run (SAT losses only)."""
    return Path(run_dir) / "sat"


def sat_snapshot_file(run_dir: Path, epoch: int) -> Path:
    """``sat/epoch_NNN.npz``: the SAT weights and soft targets after ``epoch`` (from 1)."""
    return sat_dir(run_dir) / f"epoch_{int(epoch):03d}.npz"


def prediction_file(run_dir: Path, part_name: str, crop: str, epoch: int) -> Path:
    """The prediction cache of a kept checkpoint: ``run_dir/predictions/<part>-<crop>-epoch<NNN>.csv``."""
    return Path(run_dir) / "predictions" / f"{part_name}-{crop}-epoch{int(epoch):03d}.csv"


def prediction_files(run_dir: Path, part_name: str, crop: str) -> dict[int, Path]:
    """The cached prediction files of ``part_name`` with ``crop`` under ``run_dir``, by epoch."""
    found: dict[int, Path] = {}
    for file in sorted((Path(run_dir) / "predictions").glob(f"{part_name}-{crop}-epoch*.csv")):
        digits = file.stem.rsplit("epoch", 1)[1]
        if digits.isdigit() and file == prediction_file(run_dir, part_name, crop, int(digits)):
            found[int(digits)] = file
    return found


def is_finished(run_dir: Path) -> bool:
    return done_file(run_dir).exists()


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, payload: dict) -> None:
    """Write ``payload`` with ``torch.save`` atomically (a reader never sees half a file)."""
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model of a checkpoint and load its weights (``weights_only=True``); model and meta."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    config = payload["config"]
    model = build_model(config["arch"], len(payload["classes"]), weights="none",
                        stn_transform=config.get("stn_transform", "affine"),
                        input_norm=config.get("input_norm", "imagenet"))
    model.load_state_dict(payload["model"])
    model.to(resolve_device(device)).eval()
    if config.get("amp", False):
        model.to(memory_format=torch.channels_last)
    return model, {k: v for k, v in payload.items() if k not in STATE_KEYS}


def read_checkpoint_meta(path: Path) -> dict:
    """Class list, configuration and split hash of a checkpoint, without building the model.

    The kept checkpoints store the same metadata as the run's ``config.json``, which is read instead
    of the (large) weights file when it is there.
    """
    file = config_file(Path(path).parent.parent)
    if file.exists():
        return json.loads(file.read_text())
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    return {k: v for k, v in payload.items() if k not in STATE_KEYS}


def read_run_meta(run_dir: Path) -> dict:
    """The run's ``config.json``: ``config`` (the TrainConfig), ``classes``, ``negative_class``, ``split_hash``."""
    file = config_file(run_dir)
    if not file.exists():
        raise DataError(f"{file} does not exist: {run_dir} is not a training run (train it first, e.g. "
                        f"`make baseline-resnet18` or 05_sat.ipynb)")
    return json.loads(file.read_text())


def list_checkpoints(run_dir: Path) -> list[dict]:
    """The kept top-k checkpoints, best validation AUC first: dicts with epoch, val_auc, path."""
    index = checkpoint_dir(run_dir) / "index.csv"
    if not index.exists():
        return []
    frame = pd.read_csv(index)
    return [{"epoch": int(r.epoch), "val_auc": float(r.val_auc), "path": checkpoint_dir(run_dir) / r.file}
            for r in frame.itertuples()]


def _nan_low(value: float | None) -> float:
    return -math.inf if value is None or math.isnan(value) else value


def update_top_k(run_dir: Path, epoch: int, val_auc: float, top_k: int, payload: dict) -> None:
    """Keep ``payload`` as ``epoch_NNN.pt`` if it is among the ``top_k`` by validation AUC (ties: earlier
    epoch first), rewrite ``index.csv`` and delete the checkpoint that dropped out."""
    folder = checkpoint_dir(run_dir)
    entries = [{"epoch": e["epoch"], "val_auc": e["val_auc"], "file": e["path"].name} for e in list_checkpoints(run_dir)]
    entries = [e for e in entries if e["epoch"] != epoch]
    candidate = {"epoch": epoch, "val_auc": val_auc, "file": checkpoint_name(epoch)}
    ranked = sorted(entries + [candidate], key=lambda e: (-_nan_low(e["val_auc"]), e["epoch"]))
    keep, drop = ranked[:top_k], ranked[top_k:]
    if candidate in keep:
        save_checkpoint(folder / candidate["file"], payload)
    atomic_write_csv(folder / "index.csv", pd.DataFrame(keep, columns=["epoch", "val_auc", "file"]))
    for entry in drop:
        (folder / entry["file"]).unlink(missing_ok=True)


# --------------------------------------------------------------------------- run identity
def run_meta(config: dict, classes: Sequence[str], negative_class: str, split_hash: str, display_name: str) -> dict:
    """What ``config.json`` and every checkpoint store about the run."""
    return {"config": dict(config), "classes": list(classes), "negative_class": negative_class,
            "split_hash": split_hash, "display_name": display_name}


def run_identity(meta: dict) -> dict:
    """``meta`` without the settings of :data:`RESULT_NEUTRAL` (what must match for a resume)."""
    identity = json.loads(json.dumps(meta))
    for key in RESULT_NEUTRAL:
        identity.get("config", {}).pop(key, None)
    identity.get("config", {}).setdefault("world_size", 1)  # runs saved before distributed training existed
    return identity


def prepare_run_dir(run_dir: Path, meta: dict, overwrite: bool) -> str:
    """'done', 'resume' or 'new'; refuses to mix runs of different configurations.

    Settings in :data:`RESULT_NEUTRAL` are not compared; ``config.json`` keeps the values the run
    started with.
    """
    run_dir = Path(run_dir)
    file = config_file(run_dir)
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    if file.exists():
        saved = json.loads(file.read_text())
        if run_identity(saved) != run_identity(meta):
            changed = sorted(key for key in set(saved.get("config", {})) | set(meta["config"])
                             if saved.get("config", {}).get(key) != meta["config"].get(key)
                             and key not in RESULT_NEUTRAL)
            changed += [key for key in ("classes", "negative_class", "split_hash") if saved.get(key) != meta.get(key)]
            raise ConfigError(
                f"{run_dir} holds a run with a different configuration or split (differs in: "
                f"{', '.join(changed) or 'metadata'}); pass overwrite=True to retrain it, or choose another run name"
            )
        if is_finished(run_dir):
            return "done"
        if last_checkpoint(run_dir).exists():
            return "resume"
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(file, json.dumps(meta, indent=2))
    return "new"


# --------------------------------------------------------------------------- results
@dataclass
class TrainResult:
    """What a finished (or stopped) training call returns."""

    run_dir: Path
    history: pd.DataFrame
    best_epoch: int
    best_val_auc: float
    train_time_s: float
    peak_memory_mb: float
    device: str


def write_done(run_dir: Path, result: TrainResult) -> None:
    """``done.json``: written last, it marks the run finished."""
    done = {"best_epoch": result.best_epoch, "best_val_auc": result.best_val_auc,
            "train_time_s": result.train_time_s, "peak_memory_mb": result.peak_memory_mb,
            "device": result.device, "epochs": len(result.history)}
    atomic_write_text(done_file(run_dir), json.dumps(done, indent=2))


def load_result(run_dir: Path) -> TrainResult:
    """The result of a finished run, read from its files."""
    run_dir = Path(run_dir)
    if not is_finished(run_dir):
        raise DataError(f"{done_file(run_dir)} does not exist: the run is not finished (train or resume it)")
    done = json.loads(done_file(run_dir).read_text())
    return TrainResult(run_dir, pd.read_csv(history_file(run_dir)), done["best_epoch"], done["best_val_auc"],
                       done["train_time_s"], done["peak_memory_mb"], done["device"])

"""What a profile's outputs hold, for the HTML report (:mod:`nexperia_utils.reporting.html`): which expected
pieces have been run (:func:`piece_status`) and an index of the trained runs, one row per ``runs/*`` with its
model, loss, data, epochs, cost, best validation AUC and, when it was evaluated, its test metrics
(:func:`runs_index`)."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from nexperia_utils.training import checkpoints as ckpt

__all__ = ["EXPECTED_PIECES", "Piece", "RUN_COLUMNS", "piece_status", "run_row", "runs_index", "split_data_roots",
           "test_metrics"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Piece:
    """An expected output: done when any of ``patterns`` (globs relative to the outputs folder) matches."""

    label: str
    patterns: tuple[str, ...]
    command: str


#: What ``make all`` produces; shown as done or "not run yet".
EXPECTED_PIECES: tuple[Piece, ...] = (
    Piece("Table 2 (models)", ("tables/table2.md",), "make reproduce-table2"),
    Piece("Table 3 (crop styles)", ("tables/table3.md",), "make reproduce-table3"),
    Piece("Table 4 (losses)", ("tables/table4.md",), "make reproduce-table4"),
    Piece("Error analysis", ("notebooks/*error*.ipynb",), "make error-analysis"),
    Piece("Distribution shift (batch 3)", ("tables/shift.md",), "make reproduce-shift"),
    Piece("Kaggle submission", ("submission.csv",), "make submission"),
)

RUN_COLUMNS: tuple[str, ...] = (
    "run", "model", "loss", "profile", "data", "classes", "image size", "epochs", "status", "training time (min)",
    "peak memory (MB)", "device", "best val AUC", "best epoch", "test AUC", "test FPR@100", "test checkpoints",
)


# --------------------------------------------------------------------------------------------
# Collecting
# --------------------------------------------------------------------------------------------

def piece_status(outputs_dir: Path, pieces: Sequence[Piece] = EXPECTED_PIECES) -> pd.DataFrame:
    """One row per expected piece: ``piece``, ``status`` ("done" / "not run yet"), ``files``, ``command``."""
    outputs_dir = Path(outputs_dir)
    rows = []
    for piece in pieces:
        found = sorted({p for pattern in piece.patterns for p in outputs_dir.glob(pattern)})
        rows.append({
            "piece": piece.label,
            "status": "done" if found else "not run yet",
            "files": ", ".join(p.relative_to(outputs_dir).as_posix() for p in found),
            "command": piece.command,
        })
    return pd.DataFrame(rows, columns=["piece", "status", "files", "command"])


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        if path.exists():
            logger.warning("cannot read %s (%s); the report leaves its fields empty", path, err)
        return None
    return value if isinstance(value, dict) else None


def split_data_roots(splits_dir: Path) -> dict[str, str]:
    """Split hash -> name of its data root, from the split sidecars ``<splits_dir>/*.json``."""
    roots: dict[str, str] = {}
    for sidecar in sorted(Path(splits_dir).glob("*.json")):
        info = _read_json(sidecar)
        if info and info.get("hash"):
            root = info.get("data_root")
            roots[str(info["hash"])] = Path(root).name if root else sidecar.stem
    return roots


def _kept_epochs(run_dir: Path) -> list[int]:
    """Epochs of the kept checkpoints; [] when the index is missing or unreadable (the report goes on)."""
    try:
        return [entry["epoch"] for entry in ckpt.list_checkpoints(run_dir)]
    except (AttributeError, KeyError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return []


def test_metrics(run_dir: Path, negative_class: str, crop: str = "center") -> dict[str, float | int]:
    """Mean test AUC and FPR at TPR = 100 % over the run's kept checkpoints that were evaluated.

    Reads ``predictions/test-<crop>-epochNNN.csv`` (written by :func:`evaluation.evaluate_run`) of
    the checkpoints in ``checkpoints/index.csv``; returns ``{}`` when none was evaluated.
    """
    from nexperia_utils.evaluation import metrics

    run_dir = Path(run_dir)
    kept = set(_kept_epochs(run_dir))
    aucs, fprs = [], []
    for epoch, file in ckpt.prediction_files(run_dir, "test", crop).items():
        if kept and epoch not in kept:
            continue
        try:
            frame = pd.read_csv(file)
            y = (frame["label"].astype(str) != negative_class).to_numpy()
            score = frame["defect_score"].to_numpy(dtype=float)
            aucs.append(metrics.roc_auc(y, score))
            fprs.append(metrics.fpr_at_tpr(y, score, 1.0))
        except (KeyError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            logger.warning("skipping %s in the report (%s)", file, err)
    if not aucs:
        return {}
    return {"test AUC": float(np.mean(aucs)), "test FPR@100": float(np.mean(fprs)), "test checkpoints": len(aucs)}


def run_row(run_dir: Path, profile: str, data_roots: dict[str, str]) -> dict:
    """The runs-index row of one run folder (fields it cannot read stay empty)."""
    run_dir = Path(run_dir)
    meta = _read_json(ckpt.config_file(run_dir)) or {}
    config = meta.get("config", {}) if isinstance(meta.get("config"), dict) else {}
    done = _read_json(ckpt.done_file(run_dir))
    history = None
    if ckpt.history_file(run_dir).is_file():
        try:
            history = pd.read_csv(ckpt.history_file(run_dir))
        except (pd.errors.ParserError, pd.errors.EmptyDataError):
            history = None
    epochs_done = len(history) if history is not None else 0
    planned = config.get("epochs")
    split_hash = str(meta.get("split_hash", ""))
    row: dict = {
        "run": run_dir.name,
        "model": meta.get("display_name") or config.get("arch", ""),
        "loss": config.get("loss", ""),
        "profile": profile,
        "data": data_roots.get(split_hash, f"split {split_hash[:8]}" if split_hash else ""),
        "classes": len(meta.get("classes", [])) or "",
        "image size": config.get("image_size", ""),
        "epochs": f"{epochs_done}/{planned}" if planned else str(epochs_done),
    }
    if not meta:
        row["status"] = "no config.json"
    elif done is not None:
        row["status"] = "finished"
        row.update({
            "training time (min)": done.get("train_time_s", math.nan) / 60.0,
            "peak memory (MB)": done.get("peak_memory_mb", math.nan),
            "device": done.get("device", ""),
            "best val AUC": done.get("best_val_auc", math.nan),
            "best epoch": done.get("best_epoch", ""),
        })
    else:
        row["status"] = "in progress" if epochs_done else "not started"
    if done is None and history is not None and "val_auc" in history and history["val_auc"].notna().any():
        best = int(history["val_auc"].idxmax())
        row.update({"best val AUC": float(history["val_auc"].iloc[best]),
                    "best epoch": int(history["epoch"].iloc[best]) if "epoch" in history else best + 1,
                    "training time (min)": float(history["time_s"].iloc[-1]) / 60 if "time_s" in history else math.nan})
    if meta.get("negative_class"):
        row.update(test_metrics(run_dir, str(meta["negative_class"])))
    return row


def runs_index(outputs_dir: Path, splits_dir: Path | None = None) -> pd.DataFrame:
    """One row per ``<outputs_dir>/runs/*`` folder with :data:`RUN_COLUMNS` (empty frame when none).

    ``splits_dir`` (default ``<work dir>/data/splits``, the work dir being two levels above
    ``outputs_dir``) names each run's data root through its split's hash.
    """
    outputs_dir = Path(outputs_dir)
    if splits_dir is None:
        splits_dir = outputs_dir.parent.parent / "data" / "splits"
    roots = split_data_roots(splits_dir)
    run_dirs = sorted(p for p in (outputs_dir / "runs").glob("*") if p.is_dir())
    rows = [run_row(p, outputs_dir.name, roots) for p in run_dirs]
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))



"""The run folder: file names, the top-k index, run identity and finished results."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from nexperia_utils.training import checkpoints as ckpt
from nexperia_utils.errors import ConfigError, DataError


def _meta(**config) -> dict:
    return ckpt.run_meta({"arch": "resnet18", "lr": 0.1, "device": "cpu", "eval_batch_size": 128, **config},
                         ["a", "good"], "good", "hash0", "ResNet18")


def test_file_names_count_epochs_from_one(tmp_path: Path) -> None:
    assert ckpt.checkpoint_name(7) == "epoch_007.pt"
    assert ckpt.sat_snapshot_file(tmp_path, 12) == tmp_path / "sat" / "epoch_012.npz"
    assert ckpt.prediction_file(tmp_path, "test", "five", 3) == tmp_path / "predictions" / "test-five-epoch003.csv"
    folder = tmp_path / "predictions"
    folder.mkdir()
    for name in ("test-center-epoch003.csv", "test-center-epoch012.csv", "test-five-epoch003.csv",
                 "val-center-epoch003.csv", "test-center-epochx.csv", "test-center-epoch3.csv"):
        (folder / name).write_text("image_id\n")
    # only the names prediction_file writes: not another crop or part, not a malformed or unpadded epoch
    assert ckpt.prediction_files(tmp_path, "test", "center") == {
        3: folder / "test-center-epoch003.csv", 12: folder / "test-center-epoch012.csv"}


def test_update_top_k_keeps_the_best_and_deletes_the_rest(tmp_path: Path) -> None:
    for epoch, auc in ((1, 0.6), (2, 0.8), (3, float("nan")), (4, 0.7), (5, 0.8)):
        ckpt.update_top_k(tmp_path, epoch, auc, 2, {"epoch": epoch})
    kept = ckpt.list_checkpoints(tmp_path)
    assert [(e["epoch"], e["val_auc"]) for e in kept] == [(2, 0.8), (5, 0.8)]  # ties: the earlier epoch first
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt")) == ["epoch_002.pt", "epoch_005.pt"]
    assert torch.load(kept[1]["path"], weights_only=True) == {"epoch": 5}
    assert ckpt.list_checkpoints(tmp_path / "nothing") == []


def test_prepare_run_dir_new_resume_done_and_refusal(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert ckpt.prepare_run_dir(run, _meta(), overwrite=False) == "new"
    assert json.loads(ckpt.config_file(run).read_text())["split_hash"] == "hash0"
    assert ckpt.prepare_run_dir(run, _meta(), overwrite=False) == "new"  # nothing saved yet
    ckpt.save_checkpoint(ckpt.last_checkpoint(run), {"epoch": 1})
    # the device and the evaluation batch size do not change the weights: no reason to refuse a resume
    assert ckpt.prepare_run_dir(run, _meta(device="cuda", eval_batch_size=512), overwrite=False) == "resume"
    with pytest.raises(ConfigError, match=r"differs in: lr\)"):
        ckpt.prepare_run_dir(run, _meta(lr=0.2), overwrite=False)
    result = ckpt.TrainResult(run, pd.DataFrame({"epoch": [1, 2]}), 2, 0.9, 12.5, 100.0, "cpu")
    ckpt.history_file(run).write_text("epoch\n1\n2\n")
    ckpt.write_done(run, result)
    assert ckpt.prepare_run_dir(run, _meta(), overwrite=False) == "done"
    loaded = ckpt.load_result(run)
    assert (loaded.best_epoch, loaded.best_val_auc, loaded.train_time_s, loaded.device) == (2, 0.9, 12.5, "cpu")
    assert json.loads(ckpt.done_file(run).read_text())["epochs"] == 2
    assert ckpt.prepare_run_dir(run, _meta(lr=0.2), overwrite=True) == "new"
    assert not ckpt.done_file(run).exists() and not ckpt.last_checkpoint(run).exists()


def test_missing_run_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="done.json does not exist"):
        ckpt.load_result(tmp_path)
    with pytest.raises(DataError, match="config.json does not exist"):
        ckpt.read_run_meta(tmp_path)

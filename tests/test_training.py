"""The training loop: checkpoints, top-k, resume identical to an uninterrupted run, weights_only loading."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from nexperia_utils.config import get_profile
from nexperia_utils.errors import ConfigError
from nexperia_utils.evaluation.predict import evaluate_run
from nexperia_utils.training.loop import TrainConfig, train
from nexperia_utils.training.checkpoints import list_checkpoints, load_checkpoint

from conftest import CLASSES, make_part, tiny_train_config


def _config(**kw) -> TrainConfig:
    return tiny_train_config(**kw)


@pytest.fixture(scope="module")
def parts():
    return make_part("train", 24, 0), make_part("val", 12, 1), make_part("test", 12, 2)


def _run(tmp_path, parts, name, config, **kw):
    train_part, val_part, test_part = parts
    return train(config, train_part, val_part, CLASSES, "good", "hash0", tmp_path / name, test_part=test_part,
                 progress=False, **kw)


def test_history_checkpoints_and_top_k(tmp_path, parts):
    result = _run(tmp_path, parts, "run", _config(eval_test_each_epoch=True))
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    for column in ("train_loss", "train_acc", "val_acc", "val_binary_acc", "val_loss", "val_auc", "val_fpr@100", "val_acc/scratch", "val_binary_loss/good",
                   "test_fpr@100", "lr", "time_s"):
        assert column in history.columns, column
    kept = list_checkpoints(tmp_path / "run")
    assert len(kept) == 2  # top_k
    assert [k["val_auc"] for k in kept] == sorted(history["val_auc"], reverse=True)[:2]
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("epoch_*.pt"))
    assert files == sorted(k["path"].name for k in kept)
    assert result.best_val_auc == kept[0]["val_auc"]
    done = json.loads((tmp_path / "run" / "done.json").read_text())
    assert done["epochs"] == 3 and done["peak_memory_mb"] > 0


def test_checkpoint_loads_with_weights_only_and_holds_metadata(tmp_path, parts):
    _run(tmp_path, parts, "run", _config(epochs=1))
    path = list_checkpoints(tmp_path / "run")[0]["path"]
    payload = torch.load(path, weights_only=True)
    assert payload["classes"] == CLASSES and payload["split_hash"] == "hash0"
    assert payload["config"]["arch"] == "resnet18"
    model, meta = load_checkpoint(path)
    assert meta["negative_class"] == "good"
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("loss,params", [("ce", {}), ("sat", {"sat_es": 1})])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, parts, loss, params):
    config = _config(loss=loss, loss_params=params)
    _run(tmp_path, parts, "straight", config)
    partial = _run(tmp_path, parts, "resumed", config, stop_after=1)
    assert len(partial.history) == 1 and not (tmp_path / "resumed" / "done.json").exists()
    assert (tmp_path / "resumed" / "checkpoints" / "last.pt").exists()
    _run(tmp_path, parts, "resumed", config)
    # once finished, the resume state (3x the model with AdamW) gives way to the final weights
    assert not (tmp_path / "resumed" / "checkpoints" / "last.pt").exists()
    model, meta = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "final.pt")
    assert meta["epoch"] == config.epochs  # epochs count from 1 in payloads as in history.csv and file names
    kept = list_checkpoints(tmp_path / "resumed")
    for entry in kept:
        assert torch.load(entry["path"], weights_only=True)["epoch"] == entry["epoch"]
        assert entry["path"].name == f"epoch_{entry['epoch']:03d}.pt"
    a = torch.load(tmp_path / "straight" / "checkpoints" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "final.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["loss"]:
        assert torch.equal(a["loss"][key], b["loss"][key]), key
    ha = pd.read_csv(tmp_path / "straight" / "history.csv").drop(columns="time_s")
    hb = pd.read_csv(tmp_path / "resumed" / "history.csv").drop(columns="time_s")
    pd.testing.assert_frame_equal(ha, hb)


def test_a_resume_state_that_counts_epochs_from_0_is_refused(tmp_path, parts):
    config = _config()
    _run(tmp_path, parts, "old", config, stop_after=1)
    last = tmp_path / "old" / "checkpoints" / "last.pt"
    payload = torch.load(last, weights_only=True)
    assert payload["epoch"] == 1 and payload["epoch_base"] == 1
    payload.pop("epoch_base")
    payload["epoch"] = 0  # what versions before the one-numbering change wrote after the first epoch
    torch.save(payload, last)
    with pytest.raises(ConfigError, match="counted epochs from 0"):
        _run(tmp_path, parts, "old", config)


def test_quick_recipe_resumes_identically_and_balances_batches(tmp_path, parts):
    """One-cycle (stepped per batch), binary-balanced sampling, per-image input norm, flips, bf16."""
    config = _config(optimizer="adamw", lr=3e-3, scheduler="onecycle", sampler="binary", input_norm="image",
                     augmentation="flip", amp=True)
    _run(tmp_path, parts, "straight", config)
    _run(tmp_path, parts, "resumed", config, stop_after=2)
    _run(tmp_path, parts, "resumed", config)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "final.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    history = pd.read_csv(tmp_path / "straight" / "history.csv")
    # one-cycle, stepped per batch: below the peak after the first epoch's warm-up, annealed towards 0
    assert history["lr"].is_monotonic_decreasing and history["lr"].iloc[0] < 3e-3
    assert history["lr"].iloc[-1] < 3e-3 / 10
    model, meta = load_checkpoint(tmp_path / "straight" / "checkpoints" / "final.pt")
    assert meta["config"]["input_norm"] == "image"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # the per-image standardisation is rebuilt with the model: gain/offset invariant
        torch.testing.assert_close(model(x), model(3.0 * x - 1.0), rtol=1e-4, atol=1e-4)


def test_binary_sampler_draws_half_defects():
    from nexperia_utils.training.loop import _make_sampler

    labels = np.array([1] * 90 + [0] * 6 + [2] * 4)  # class 1 is good
    sampler = _make_sampler(_config(sampler="binary"), labels, 1, torch.Generator())
    drawn = labels[sampler.indices()]
    assert len(drawn) == len(labels) and (drawn != 1).sum() == 50


def test_sat_exports_per_epoch_snapshots(tmp_path, parts):
    _run(tmp_path, parts, "sat", _config(epochs=2, loss="sat", loss_params={"sat_es": 1}))
    files = sorted((tmp_path / "sat" / "sat").glob("epoch_*.npz"))
    assert [f.name for f in files] == ["epoch_001.npz", "epoch_002.npz"]


def test_finished_run_is_not_retrained_and_a_different_config_is_refused(tmp_path, parts):
    _run(tmp_path, parts, "run", _config(epochs=1))
    mtime = (tmp_path / "run" / "checkpoints" / "final.pt").stat().st_mtime_ns
    again = _run(tmp_path, parts, "run", _config(epochs=1))
    assert (tmp_path / "run" / "checkpoints" / "final.pt").stat().st_mtime_ns == mtime
    assert len(again.history) == 1
    with pytest.raises(ConfigError, match="overwrite=True"):
        _run(tmp_path, parts, "run", _config(epochs=1, lr=0.5))
    _run(tmp_path, parts, "run", _config(epochs=1, lr=0.5), overwrite=True)


def test_evaluate_run_gives_one_row_per_checkpoint_and_crop(tmp_path, parts):
    _run(tmp_path, parts, "run", _config(epochs=2))
    results = evaluate_run(tmp_path / "run", parts[2], crops=["center", "five", "ten"], device="cpu", progress=False)
    assert len(results) == 2 * 3
    assert set(results["crop"]) == {"center", "five", "ten"}
    assert results[["auc", "fpr@100"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (tmp_path / "run" / "predictions" / "test-ten-epoch002.csv").exists() or \
        (tmp_path / "run" / "predictions" / "test-ten-epoch001.csv").exists()


def test_config_from_profile_and_validation():
    config = TrainConfig.from_profile(get_profile("smoke"), arch="resnet34", epochs=None)
    assert config.arch == "resnet34" and config.epochs == get_profile("smoke").epochs
    with pytest.raises(ConfigError, match="unknown training parameter"):
        TrainConfig.from_profile(get_profile("smoke"), bogus=1)
    with pytest.raises(ConfigError, match="train_crop"):
        TrainConfig(train_crop="seven").validate()
    with pytest.raises(ConfigError, match="SAT"):
        TrainConfig(loss="sat", train_crop="five").validate()
    for field, bad in (("scheduler", "linear"), ("augmentation", "heavy"), ("input_norm", "zca")):
        with pytest.raises(ConfigError, match=field):
            TrainConfig(**{field: bad}).validate()

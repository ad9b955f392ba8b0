"""Training on several processes: the rank sampler, the collectives, and DDP == one process (gloo, CPU)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import ddp_worker
from nexperia_utils.training.distributed import RankBatchShard, World, _parse_overrides, worker_arguments
from nexperia_utils.errors import ConfigError


class _ListSampler(torch.utils.data.Sampler):
    def __init__(self, order):
        self.order, self.epochs = list(order), []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __len__(self):
        return len(self.order)

    def __iter__(self):
        return iter(self.order)


def test_rank_shards_cover_each_global_batch_in_order():
    order = np.random.default_rng(0).permutation(23).tolist()
    base = _ListSampler(order)
    shards = [RankBatchShard(base, 8, World(rank=r, size=2)) for r in range(2)]
    got = [list(s) for s in shards]
    assert [len(s) for s in shards] == [8, 8]
    for b in range(2):  # two full global batches of 8; the last 7 indices are dropped, as one process drops them
        assert got[0][4 * b:4 * b + 4] + got[1][4 * b:4 * b + 4] == order[8 * b:8 * b + 8]
    shards[1].set_epoch(3)
    assert base.epochs == [3]


def test_rank_shard_rejects_a_batch_it_cannot_split():
    with pytest.raises(ConfigError, match="divisible"):
        RankBatchShard(_ListSampler(range(20)), 9, World(rank=0, size=2))
    with pytest.raises(ConfigError, match="fewer than one batch"):
        RankBatchShard(_ListSampler(range(5)), 8, World(rank=0, size=2))


def test_worker_arguments_round_trip():
    from nexperia_utils.config import get_profile

    args = worker_arguments(get_profile("smoke"), "resnet18", "sat", run="r", overwrite=True,
                            overrides={"epochs": 3, "loss_params": {"sat_es": 1}, "device": "cpu", "lr": None})
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert _parse_overrides(sets) == {"epochs": 3, "loss_params": {"sat_es": 1}, "device": "cpu"}
    assert "--overwrite" in args and args[args.index("--run-name") + 1] == "r"
    with pytest.raises(ConfigError, match="key=value"):
        _parse_overrides(["epochs"])


def test_a_multi_process_config_refuses_to_train_on_one(tmp_path):
    from conftest import CLASSES, make_part, tiny_train_config
    from nexperia_utils.training.loop import train

    with pytest.raises(ConfigError, match="world_size=2"):
        train(tiny_train_config(world_size=2), make_part("train", 12, 1), make_part("val", 6, 2), CLASSES, "good",
              "h", tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="divide batch_size"):
        tiny_train_config(world_size=3, batch_size=8).validate()


def test_gather_and_reduce_across_two_ranks(tmp_path):
    mp.spawn(ddp_worker.primitives_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["indices"] == [0, 1, 10, 11, 12]  # rank 0's two rows, then rank 1's three
        assert got["rows"] == [0.0, 0.0, 1.0, 1.0, 1.0]
        assert got["sums"] == [2.0, 1.0] and (got["rank"], got["size"]) == (rank, 2)


@pytest.mark.parametrize("loss", ["ce", "sat"])
def test_two_processes_train_what_one_process_trains(tmp_path, loss, one_torch_thread):
    """Same global batch of 8 (2 x 4 on two gloo ranks): same weights, history and SAT targets."""
    from nexperia_utils.training import loop as training

    one, two = tmp_path / "one", tmp_path / "two"
    original = training.build_model
    try:
        ddp_worker.train_once(one, 1, loss)
    finally:
        training.build_model = original
    mp.spawn(ddp_worker.train_worker, args=(2, str(tmp_path / "init"), str(two), loss), nprocs=2)

    assert json.loads((two / "config.json").read_text())["config"]["world_size"] == 2
    a = torch.load(one / "checkpoints" / "final.pt", weights_only=True)["model"]
    b = torch.load(two / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    import pandas as pd

    h1, h2 = pd.read_csv(one / "history.csv"), pd.read_csv(two / "history.csv")
    np.testing.assert_allclose(h2["train_loss"], h1["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(h2["val_auc"], h1["val_auc"], atol=1e-6)
    assert not (two / "checkpoints" / "last.pt").exists() and (two / "done.json").exists()
    if loss == "sat":
        for epoch in (1, 2):
            s1 = np.load(one / "sat" / f"epoch_{epoch:03d}.npz")["soft_targets"].astype(np.float32)
            s2 = np.load(two / "sat" / f"epoch_{epoch:03d}.npz")["soft_targets"].astype(np.float32)
            np.testing.assert_allclose(s2, s1, atol=2e-3)  # float16 files
        assert not np.allclose(s1, np.eye(3)[ddp_worker.parts()[0].labels], atol=1e-3)  # SAT moved the targets


def test_an_interrupted_two_process_run_resumes_to_the_same_weights(tmp_path, one_torch_thread):
    """With augmentation: every rank restores its own random streams from last.pt."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    mp.spawn(ddp_worker.train_worker, args=(2, str(tmp_path / "i1"), str(whole), "sat", True), nprocs=2)
    mp.spawn(ddp_worker.train_worker, args=(2, str(tmp_path / "i2"), str(split), "sat", True, 1), nprocs=2)
    assert (split / "checkpoints" / "last.pt").exists() and not (split / "done.json").exists()
    assert len(torch.load(split / "checkpoints" / "last.pt", weights_only=True)["rng_ranks"]) == 2
    mp.spawn(ddp_worker.train_worker, args=(2, str(tmp_path / "i3"), str(split), "sat", True), nprocs=2)
    a = torch.load(whole / "checkpoints" / "final.pt", weights_only=True)
    b = torch.load(split / "checkpoints" / "final.pt", weights_only=True)
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], msg=key)
    torch.testing.assert_close(b["loss"]["soft_targets"], a["loss"]["soft_targets"])


def test_train_model_launches_torchrun(smoke_workdir):
    """``train_model(world_size=2)`` on the smoke data: torchrun, 2 gloo ranks, rank 0's files, BatchNorm ResNet."""
    from nexperia_utils.config import get_profile
    from nexperia_utils.experiment import open_experiment, train_model

    exp = open_experiment(get_profile("smoke"), progress=False)
    result = train_model(exp, "resnet18", run="ddp", world_size=2, device="cpu", epochs=1)
    saved = json.loads((exp.run_dir("ddp") / "config.json").read_text())["config"]
    assert saved["world_size"] == 2 and saved["epochs"] == 1
    assert len(result.history) == 1 and (exp.run_dir("ddp") / "done.json").exists()
    assert 0.0 <= result.best_val_auc <= 1.0
    again = train_model(exp, "resnet18", run="ddp", world_size=2, device="cpu", epochs=1)  # finished: reused
    assert again.train_time_s == result.train_time_s

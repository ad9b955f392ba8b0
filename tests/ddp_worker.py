"""Worker processes of tests/test_distributed.py (spawned: they must live in an importable module)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from conftest import CLASSES, make_part, tiny_train_config


def groupnorm_resnet18(arch: str, num_classes: int, **_: object) -> nn.Module:
    """ResNet18 without batch statistics: N processes then compute exactly what one process does."""
    import torchvision

    return torchvision.models.resnet18(num_classes=num_classes, norm_layer=lambda c: nn.GroupNorm(1, c))


def parts():
    return make_part("train", 40, seed=1), make_part("val", 12, seed=2)


def train_once(run_dir: Path, world_size: int, loss: str, augment: bool = False, stop_after: int | None = None) -> None:
    """The equivalence run: the same data, config and global batch on ``world_size`` processes.

    SGD rather than AdamW: Adam divides by the gradients' running RMS, which turns float rounding of
    near-zero gradients (a sum over 2 ranks vs over 1 batch) into visible weight differences.
    """
    from nexperia_utils.training import loop as training
    from nexperia_utils.training.loop import train

    training.build_model = groupnorm_resnet18  # the loop's own reference (it imports build_model by name)
    train_part, val_part = parts()
    params = {"sat_es": 1, "alpha": 0.5} if loss == "sat" else {}
    config = tiny_train_config(epochs=2, batch_size=8, loss=loss, loss_params=params, augment=augment, amp=False,
                               scheduler="onecycle", sampler="binary",
                               world_size=world_size)
    train(config, train_part, val_part, CLASSES, "good", "h", run_dir, stop_after=stop_after, progress=False)


def _init(rank: int, world_size: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)


def train_worker(rank: int, world_size: int, init_file: str, run_dir: str, loss: str, augment: bool = False,
                 stop_after: int | None = None) -> None:
    _init(rank, world_size, init_file)
    try:
        train_once(Path(run_dir), world_size, loss, augment, stop_after)
    finally:
        dist.destroy_process_group()


def primitives_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    """all_gather_rows with a different row count per rank, and all_reduce_sum."""
    from nexperia_utils.training.distributed import all_gather_rows, all_reduce_sum, current_world

    _init(rank, world_size, init_file)
    try:
        n = 2 + rank
        indices = torch.arange(n) + 10 * rank
        rows = torch.full((n, 3), float(rank))
        got_idx, got_rows = all_gather_rows(indices, rows)
        sums = all_reduce_sum([1.0, rank], torch.device("cpu"))
        world = current_world()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({
            "indices": got_idx.tolist(), "rows": got_rows[:, 0].tolist(), "sums": sums,
            "rank": world.rank, "size": world.size}))
    finally:
        dist.destroy_process_group()

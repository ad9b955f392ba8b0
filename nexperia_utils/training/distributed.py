"""Training on several processes (GPUs) with ``torchrun`` and DistributedDataParallel.

The engine is PyTorch's: ``torch.distributed.run`` starts the processes, ``DistributedDataParallel``
averages the gradients. This module adds what the training loop needs on top:

- :class:`World`: this process's rank and the number of processes (1 when not distributed);
- :class:`RankBatchShard`: a sampler that gives each rank its slice of every *global* batch of the
  training sampler (any of them: shuffle, class-balanced, binary), so that N processes with a
  per-rank batch of ``B / N`` see exactly the batches one process sees with batch ``B``;
- :func:`all_gather_rows` and :func:`all_reduce_sum`: SAT's per-sample targets and the epoch's
  training sums, across ranks;
- a command line that is both the torchrun worker and a plain 1-process trainer::

      python -m torch.distributed.run --standalone --nproc_per_node=2 \\
          -m nexperia_utils.training.distributed --profile quick --arch resnet18 --loss ce

  (``make train ARCH=resnet18 LOSS=ce NPROC_PER_NODE=2``), and :func:`launch`, which runs it from
  Python (``experiment.train_model(..., world_size=2)``).

Rank 0 alone writes the run folder (config, history, checkpoints, SAT snapshots); every rank trains.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from nexperia_utils.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """The initialised process group's rank and size; a single process when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


class RankBatchShard(Sampler[int]):
    """This rank's share of every full global batch of ``base``.

    ``base`` yields the indices of one epoch for the whole world (every rank builds it with the same
    seed, so they agree). They are cut into global batches of ``global_batch``; rank ``r`` of ``N``
    yields ``batch[r*b:(r+1)*b]`` of each, with ``b = global_batch / N``. A last, partial global batch
    is dropped (a one-process run drops it too). Use it with a DataLoader of ``batch_size=b``.
    """

    def __init__(self, base: Sampler[int], global_batch: int, world: World) -> None:
        if global_batch % world.size:
            raise ConfigError(f"the batch size {global_batch} must be divisible by the number of processes "
                              f"{world.size} (each process takes batch_size / processes images of every batch)")
        if len(base) < global_batch:
            raise ConfigError(f"the sampler draws {len(base)} images an epoch, fewer than one batch of "
                              f"{global_batch}: use a smaller batch size")
        self.base, self.global_batch, self.world = base, global_batch, world
        self.per_rank = global_batch // world.size

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return (len(self.base) // self.global_batch) * self.per_rank

    def __iter__(self) -> Iterator[int]:
        indices = list(self.base)
        start = self.world.rank * self.per_rank
        for first in range(0, len(indices) - self.global_batch + 1, self.global_batch):
            yield from indices[first + start:first + start + self.per_rank]


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """The sums over all ranks of a few numbers (identity on one process)."""
    if not current_world().distributed:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_rows(indices: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, rows)`` of every rank, concatenated in rank order (ranks may hold different counts)."""
    world = current_world()
    if not world.distributed:
        return indices, rows
    count = torch.tensor([indices.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world.size)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    longest = max(sizes)
    padded_idx = torch.zeros(longest, dtype=indices.dtype, device=rows.device)
    padded_rows = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded_idx[:sizes[world.rank]] = indices.to(rows.device)
    padded_rows[:sizes[world.rank]] = rows
    all_idx = [torch.empty_like(padded_idx) for _ in range(world.size)]
    all_rows = [torch.empty_like(padded_rows) for _ in range(world.size)]
    dist.all_gather(all_idx, padded_idx)
    dist.all_gather(all_rows, padded_rows)
    return (torch.cat([t[:n] for t, n in zip(all_idx, sizes)]),
            torch.cat([t[:n] for t, n in zip(all_rows, sizes)]))


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if not current_world().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if current_world().distributed:
        dist.barrier()


# --------------------------------------------------------------------------- the worker


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON when they parse (numbers, true/false, dicts)."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text
    return overrides


def worker_arguments(profile: Any, arch: str, loss: str, data_root: str | Path | None = None,
                     split_csv: str | Path | None = None, manifest: str | Path | None = None,
                     negative_class: str | None = None, run: str | None = None, overwrite: bool = False,
                     overrides: dict[str, Any] | None = None) -> list[str]:
    """The command-line arguments of :func:`main` for one training run."""
    args = ["--profile-json", json.dumps(profile.to_dict()), "--arch", arch, "--loss", loss]
    for flag, value in (("--data-root", data_root), ("--split-csv", split_csv), ("--manifest", manifest),
                        ("--negative-class", negative_class), ("--run-name", run)):
        if value not in (None, ""):
            args += [flag, str(value)]
    if overwrite:
        args.append("--overwrite")
    for key, value in (overrides or {}).items():
        if value is not None:
            args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def launch(world_size: int, arguments: Sequence[str], env: dict[str, str] | None = None) -> None:
    """Run :func:`main` on ``world_size`` local processes with ``torch.distributed.run``; waits for it."""
    if world_size < 1:
        raise ConfigError(f"world_size must be >= 1, got {world_size}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}",
               "-m", "nexperia_utils.training.distributed", *arguments]
    logger.info("launching %d training processes: %s", world_size, " ".join(command[:6]))
    completed = subprocess.run(command, env={**os.environ, **(env or {})})
    if completed.returncode:
        raise RuntimeError(f"torchrun with {world_size} processes failed (exit {completed.returncode}); "
                           f"its ranks' errors are printed above")


def _init_process_group() -> World:
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo")
    return current_world()


def main(argv: Sequence[str] | None = None) -> int:
    from nexperia_utils.config import PROFILES, Profile, get_profile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", help=f"{'|'.join(PROFILES)} (ignored with --profile-json)")
    parser.add_argument("--profile-json", help="a whole profile as JSON (what train_model passes)")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--loss", default="ce")
    parser.add_argument("--data-root")
    parser.add_argument("--split-csv")
    parser.add_argument("--manifest")
    parser.add_argument("--negative-class")
    parser.add_argument("--run-name", help="run folder name (default: from arch, loss and crop)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a training parameter, e.g. --set epochs=3 --set lr=0.01")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from nexperia_utils.experiment import open_experiment, train_model

    profile = Profile(**json.loads(args.profile_json)) if args.profile_json else get_profile(args.profile)
    overrides = _parse_overrides(args.set)
    overrides.pop("world_size", None)  # the number of processes torchrun started
    world = _init_process_group()
    try:
        progress = world.is_main and not args.no_progress
        # Rank 0 first: it may generate the data, draw the split or decode the cache; the others read them.
        if not world.is_main:
            barrier()
        exp = open_experiment(profile, args.data_root, negative_class=args.negative_class, manifest=args.manifest,
                              split_csv=args.split_csv, progress=progress)
        size = overrides.get("image_size", profile.image_size)
        for name in ("train", "val", "test"):
            exp.part(name, size)
        if world.is_main:
            barrier()
        result = train_model(exp, args.arch, args.loss, overwrite=args.overwrite, run=args.run_name,
                             world_size=world.size, **overrides)
        if world.is_main:
            logger.info("%s: best validation AUC %.4f at epoch %d, %.0f s", result.run_dir, result.best_val_auc,
                        result.best_epoch, result.train_time_s)
    finally:
        if world.distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

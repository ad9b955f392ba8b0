"""The training loop: plain and explicit, in the style of torchvision's reference scripts.

One call of :func:`train` trains one model on the training part of a split and writes its run
folder (``config.json``, ``history.csv``, the top-k checkpoints, ``done.json``; the layout and every
file name are in :mod:`nexperia_utils.training.checkpoints`).

An interrupted run resumes from ``last.pt`` and ends with the same weights as an uninterrupted one
(the data order, augmentation and loss state are all restored). A finished run is not retrained
unless ``overwrite=True``. Checkpoints hold only tensors and plain values, so they load with
``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from nexperia_utils.training import checkpoints as ckpt
from nexperia_utils.evaluation import metrics
from nexperia_utils.training.checkpoints import TrainResult
from nexperia_utils.config import Profile
from nexperia_utils.data.dataset import SplitData
from nexperia_utils.training.distributed import (
    RankBatchShard, World, all_reduce_sum, barrier, broadcast_from_main, current_world,
)
from nexperia_utils.errors import ConfigError
from nexperia_utils.validation import check_choice, check_int, check_number
from nexperia_utils.evaluation.predict import predict_proba
from nexperia_utils.training.losses import build_loss
from nexperia_utils.io import atomic_write, atomic_write_csv
from nexperia_utils.models.builders import DISPLAY_NAMES, build_model, resolve_device
from nexperia_utils.data.transforms import AUGMENTATIONS, CROP_STYLES, train_crop_transform

logger = logging.getLogger(__name__)

SAMPLERS = ("none", "bootstrap", "without_replacement", "binary")
SCHEDULERS = ("step", "cosine", "onecycle")


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved with every checkpoint)."""

    arch: str = "resnet18"
    weights: str = "none"
    loss: str = "ce"
    loss_params: dict[str, Any] = field(default_factory=dict)
    #: "sgd" (the report) or "adamw" (the quick profile: from scratch, few epochs, no ImageNet weights)
    optimizer: str = "sgd"
    epochs: int = 50
    batch_size: int = 32
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    #: "step" and "cosine" step once per epoch; "onecycle" (from-scratch profiles) once per batch:
    #: linear warm-up over the first quarter of the steps to ``lr``, then cosine annealing
    scheduler: str = "step"
    step_size: int = 14
    gamma: float = 0.1
    image_size: int = 224
    augment: bool = True
    #: "report": the report's rotation/jitter/affine; "flip": horizontal flip, small affine, jitter
    augmentation: str = "report"
    #: "imagenet" (the report) or "image": per-image standardisation in the model's first step
    input_norm: str = "imagenet"
    train_crop: str = "center"
    #: "none" (shuffle), "bootstrap"/"without_replacement" (``sampler_per_class`` of every class) or
    #: "binary" (as many draws as training images, half of them good and half defects, with replacement)
    sampler: str = "none"
    sampler_per_class: int = 0
    seed: int = 0
    top_k: int = 10
    device: str = "auto"
    #: bf16 autocast and channels_last on CUDA and CPU (measured: 1.3-2.3x faster on this CPU)
    amp: bool = True
    num_workers: int = 0
    eval_batch_size: int = 128
    eval_test_each_epoch: bool = False
    stn_transform: str = "affine"
    #: learning rate of an STN's localisation network relative to ``lr`` (``*_stn`` models only)
    stn_lr_factor: float = 1.0
    #: number of processes (GPUs) training together with DistributedDataParallel; ``batch_size`` is the
    #: global batch, each process takes ``batch_size / world_size`` of it (see nexperia_utils.training.distributed)
    world_size: int = 1

    @classmethod
    def from_profile(cls, profile: Profile, **overrides: Any) -> "TrainConfig":
        """The profile's schedule and sizes; ``overrides`` (non-None) change single fields."""
        base = dict(
            weights=profile.weights, epochs=profile.epochs, batch_size=profile.batch_size,
            optimizer=profile.optimizer, lr=profile.lr,
            momentum=profile.momentum, weight_decay=profile.weight_decay, scheduler=profile.scheduler,
            step_size=profile.step_size, gamma=profile.gamma, image_size=profile.image_size,
            seed=profile.seed, top_k=profile.top_k, num_workers=profile.num_workers,
            eval_batch_size=profile.eval_batch_size, augmentation=profile.augmentation,
            input_norm=profile.input_norm, sampler=profile.sampler, amp=profile.amp,
        )
        base.update({k: v for k, v in overrides.items() if v is not None})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(base) - names)
        if unknown:
            raise ConfigError(f"unknown training parameter(s) {unknown}; valid: {sorted(names)}")
        config = cls(**base)
        config.validate()
        return config

    def validate(self) -> None:
        from nexperia_utils.models.builders import INPUT_NORMS

        for name in ("epochs", "batch_size", "top_k", "world_size"):
            check_int(name, getattr(self, name), 1)
        if self.batch_size % self.world_size:
            raise ConfigError(f"world_size must divide batch_size; got world_size {self.world_size}, "
                              f"batch_size {self.batch_size}")
        check_number("stn_lr_factor", self.stn_lr_factor, 0, include_low=False)
        choices = {"optimizer": ("sgd", "adamw"), "scheduler": SCHEDULERS, "augmentation": AUGMENTATIONS,
                   "input_norm": INPUT_NORMS, "train_crop": CROP_STYLES, "sampler": SAMPLERS}
        for name, valid in choices.items():
            check_choice(name, getattr(self, name), valid)
        if self.sampler in ("bootstrap", "without_replacement") and self.sampler_per_class < 1:
            raise ConfigError("a class-balanced sampler needs sampler_per_class >= 1")
        if self.train_crop != "center" and self.loss.startswith("sat"):
            raise ConfigError("SAT keeps one soft target per image; train it with train_crop='center'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parameter_groups(model: torch.nn.Module, config: TrainConfig) -> Any:
    """All parameters, or two groups when an STN's localisation network learns at its own rate."""
    stn = getattr(model, "stn", None)
    if stn is None or config.stn_lr_factor == 1.0:
        return model.parameters()
    stn_ids = {id(p) for p in stn.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) not in stn_ids]},
            {"params": list(stn.parameters()), "lr": config.lr * config.stn_lr_factor}]


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser of ``config`` (AdamW or SGD with momentum) over ``model``'s parameter groups."""
    params = _parameter_groups(model, config)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _make_optimizer(model: torch.nn.Module, config: TrainConfig, steps_per_epoch: int):
    optimizer = make_optimizer(model, config)
    if config.scheduler == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    elif config.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    else:
        max_lr = [group["lr"] for group in optimizer.param_groups]
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=max_lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.25)
    return optimizer, scheduler


def _make_sampler(config: TrainConfig, labels: np.ndarray, negative_index: int, generator: torch.Generator):
    if config.sampler == "none":
        return RandomSampler(range(len(labels)), generator=generator)
    from nexperia_utils.training.sampling import ClassBalancedSampler

    if config.sampler == "binary":
        is_defect = (np.asarray(labels) != negative_index).astype(np.int64)
        return ClassBalancedSampler(is_defect.tolist(), per_class=math.ceil(len(labels) / 2),
                                    replacement=True, seed=config.seed)

    return ClassBalancedSampler(labels.tolist(), per_class=config.sampler_per_class,
                                replacement=config.sampler == "bootstrap", seed=config.seed)


def epoch_metrics(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], negative_index: int, prefix: str) -> dict:
    """Loss, accuracies, AUC and FPRs of one evaluation, overall and per class, as history columns."""
    labels = np.asarray(labels)
    eps = 1e-12
    summary = metrics.summarize(probs, labels, negative_index)
    short = {"accuracy": "acc", "binary_accuracy": "binary_acc"}  # the names of the train_* columns
    row = {f"{prefix}_{short.get(k, k)}": v for k, v in summary.items()}
    nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0))
    p_good = probs[:, negative_index]
    is_good = labels == negative_index
    binary_nll = -np.log(np.clip(np.where(is_good, p_good, 1.0 - p_good), eps, 1.0))
    row[f"{prefix}_loss"] = float(nll.mean())
    row[f"{prefix}_binary_loss"] = float(binary_nll.mean())
    acc = metrics.per_class_accuracy(probs, labels, len(classes))
    bacc = metrics.per_class_binary_accuracy(probs, labels, negative_index, len(classes))
    for i, name in enumerate(classes):
        mask = labels == i
        row[f"{prefix}_acc/{name}"] = float(acc[i])
        row[f"{prefix}_binary_acc/{name}"] = float(bacc[i])
        row[f"{prefix}_loss/{name}"] = float(nll[mask].mean()) if mask.any() else float("nan")
        row[f"{prefix}_binary_loss/{name}"] = float(binary_nll[mask].mean()) if mask.any() else float("nan")
    return row


def train_step(model: torch.nn.Module, loss_fn, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, indices: torch.Tensor, epoch: int, device: torch.device,
               use_amp: bool = False, scheduler: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch; returns (loss, logits, labels) of the samples seen.

    ``use_amp``: bf16 autocast with channels_last inputs. ``scheduler``: a per-batch learning-rate
    schedule (one-cycle) stepped after the optimiser.

    A batch of several crops per image ``(B, n, 3, S, S)`` is flattened: each crop is a sample.
    """
    images, labels, indices = images.to(device), labels.to(device), indices.to(device)
    if images.ndim == 5:
        n = images.shape[1]
        images = images.flatten(0, 1)
        labels, indices = labels.repeat_interleave(n), indices.repeat_interleave(n)
    if use_amp:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
        logits = model(images)
    logits = logits.float()
    loss = loss_fn(logits, labels, indices, epoch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss.detach(), logits.detach(), labels


def _rng_state(generator: torch.Generator, worker_generator: torch.Generator | None = None) -> dict:
    state = {"torch": torch.get_rng_state(), "loader": generator.get_state()}
    if worker_generator is not None:
        state["workers"] = worker_generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, generator: torch.Generator, worker_generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loader"])
    if worker_generator is not None:
        worker_generator.set_state(state["workers"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _open_run_dir(run_dir: Path, meta: dict, overwrite: bool, world: World) -> str:
    """:func:`nexperia_utils.training.checkpoints.prepare_run_dir` on rank 0; its answer (or its error) on every rank."""
    answer: tuple[str, str] = ("ok", "")
    if world.is_main:
        try:
            answer = ("ok", ckpt.prepare_run_dir(run_dir, meta, overwrite))
        except Exception as error:  # every rank must hear of it, or the others wait forever
            if not world.distributed:
                raise
            answer = (type(error).__name__, str(error))
    kind, text = broadcast_from_main(answer)
    if kind == "ConfigError":
        raise ConfigError(text)
    if kind != "ok":
        raise RuntimeError(f"rank 0 could not prepare {run_dir}: {kind}: {text}")
    return text


def _gather_rng(world: World, generator: torch.Generator, worker_generator: torch.Generator | None) -> list | None:
    """Every rank's random-number state (saved in ``last.pt`` so each rank resumes its own streams)."""
    if not world.distributed:
        return None
    import torch.distributed as dist

    states: list = [None] * world.size
    dist.all_gather_object(states, _rng_state(generator, worker_generator))
    return states


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train(
    config: TrainConfig,
    train_part: SplitData,
    val_part: SplitData,
    classes: Sequence[str],
    negative_class: str,
    split_hash: str,
    run_dir: Path,
    test_part: SplitData | None = None,
    overwrite: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``config.arch`` on ``train_part``, validating each epoch on ``val_part``.

    ``stop_after`` ends the call after that many epochs in total (a deliberate interruption: the
    next call resumes). With ``config.eval_test_each_epoch`` the test part is also scored every epoch
    (Figures 6 and 9 plot it); the test part is never used to choose checkpoints.
    """
    config.validate()
    world = current_world()
    if config.world_size != world.size:
        raise ConfigError(f"the config trains on {config.world_size} process(es) but this is {world.size}: "
                          f"launch it with train_model(..., world_size={config.world_size}) or torchrun "
                          f"--nproc_per_node={config.world_size} (make train NPROC_PER_NODE={config.world_size})")
    progress = progress and world.is_main
    run_dir = Path(run_dir)
    negative_index = list(classes).index(negative_class)
    meta = ckpt.run_meta(config.to_dict(), classes, negative_class, split_hash, DISPLAY_NAMES.get(config.arch, config.arch))
    state = _open_run_dir(run_dir, meta, overwrite, world)
    if state == "done":
        logger.info("%s is already trained; pass overwrite=True to retrain", run_dir)
        return ckpt.load_result(run_dir)

    device = resolve_device(config.device)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = build_model(config.arch, len(classes), weights=config.weights, stn_transform=config.stn_transform,
                        input_norm=config.input_norm)
    worker_generator = None
    if world.distributed:
        # Same initial weights and data order on every rank; their own augmentation streams.
        torch.manual_seed(config.seed + world.rank)
        worker_generator = torch.Generator().manual_seed(config.seed + world.rank)
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    use_amp = config.amp
    if use_amp:
        model = model.to(memory_format=torch.channels_last)
    train_labels = torch.as_tensor(train_part.labels, dtype=torch.long)
    loss_fn = build_loss(config.loss, classes=list(classes), negative_class=negative_class,
                         train_labels=train_labels, **config.loss_params).to(device)
    sampler = _make_sampler(config, train_part.labels, negative_index, generator)
    batch_size, drop_last = config.batch_size, len(sampler) > config.batch_size
    if world.distributed:
        sampler = RankBatchShard(sampler, config.batch_size, world)
        batch_size, drop_last = sampler.per_rank, False
    augmentation = config.augmentation if config.augment else "none"
    loader = DataLoader(
        train_part.dataset(train_crop_transform(config.image_size, config.train_crop, augmentation)),
        batch_size=batch_size, sampler=sampler, num_workers=config.num_workers,
        generator=worker_generator or generator, drop_last=drop_last,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    optimizer, scheduler = _make_optimizer(model, config, len(loader))
    batch_scheduler = scheduler if config.scheduler == "onecycle" else None
    history: list[dict] = []
    start_epoch, elapsed = 0, 0.0
    if state == "resume":
        payload = torch.load(ckpt.last_checkpoint(run_dir), map_location="cpu", weights_only=True)
        if payload.get("epoch_base") != 1:
            raise ConfigError(f"{ckpt.last_checkpoint(run_dir)} was written by an older version that counted epochs "
                              f"from 0; retrain the run with overwrite=True")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        loss_fn.load_state_dict(payload["loss"])
        rng = payload["rng_ranks"][world.rank] if world.distributed else payload["rng"]
        _set_rng_state(rng, generator, worker_generator)
        start_epoch, elapsed = payload["epoch"], payload["elapsed_s"]
        history = pd.read_csv(ckpt.history_file(run_dir)).iloc[:start_epoch].to_dict("records")
        logger.info("resuming %s at epoch %d", run_dir.name, start_epoch)
    trained = model
    if world.distributed:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    last_epoch = config.epochs if stop_after is None else min(config.epochs, stop_after)
    epochs_bar = tqdm(range(start_epoch, last_epoch), desc=run_dir.name, disable=not progress, unit="epoch")
    for epoch in epochs_bar:
        t0 = time.perf_counter()
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        trained.train()
        total_loss, correct, binary_correct, seen = 0.0, 0, 0, 0
        for images, labels, indices in tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}",
                                            leave=False, disable=not progress, unit="batch"):
            loss, logits, labels = train_step(trained, loss_fn, optimizer, images, labels, indices, epoch, device,
                                              use_amp, batch_scheduler)
            with torch.no_grad():
                pred = logits.argmax(dim=1)
                correct += int((pred == labels).sum())
                binary_correct += int(((pred == negative_index) == (labels == negative_index)).sum())
                total_loss += float(loss) * len(labels)
                seen += len(labels)
        lr = optimizer.param_groups[0]["lr"]
        if batch_scheduler is None:
            scheduler.step()
        total_loss, correct, binary_correct, seen = all_reduce_sum([total_loss, correct, binary_correct, seen], device)
        if not world.is_main:  # rank 0 validates and writes; the others wait for it
            elapsed += time.perf_counter() - t0
            _gather_rng(world, generator, worker_generator)  # meets rank 0's call after its validation
            barrier()
            continue

        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": total_loss / seen,
                               "train_acc": correct / seen, "train_binary_acc": binary_correct / seen}
        eval_workers = config.num_workers if device.type == "cuda" else 0  # a GPU must not wait for one core
        val_probs = predict_proba(model, val_part, config.image_size, config.train_crop,
                                  config.eval_batch_size, device, amp=use_amp, num_workers=eval_workers)
        row.update(epoch_metrics(val_probs, val_part.labels, classes, negative_index, "val"))
        if config.eval_test_each_epoch and test_part is not None:
            test_probs = predict_proba(model, test_part, config.image_size, config.train_crop,
                                       config.eval_batch_size, device, amp=use_amp, num_workers=eval_workers)
            row.update(epoch_metrics(test_probs, test_part.labels, classes, negative_index, "test"))
        elapsed += time.perf_counter() - t0
        row["time_s"] = elapsed
        history.append(row)

        snapshot = loss_fn.epoch_snapshot()
        if snapshot is not None:
            atomic_write(ckpt.sat_snapshot_file(run_dir, epoch + 1),
                         lambda tmp: np.savez_compressed(tmp, **snapshot))
        weights = {"model": model.state_dict(), "epoch": epoch + 1, "epoch_base": 1, "val_auc": row["val_auc"], **meta}
        ckpt.update_top_k(run_dir, epoch + 1, row["val_auc"], config.top_k, weights)
        atomic_write_csv(ckpt.history_file(run_dir), pd.DataFrame(history))
        rng_ranks = _gather_rng(world, generator, worker_generator)  # after validation: its loader draws a seed
        ckpt.save_checkpoint(ckpt.last_checkpoint(run_dir), {
            **weights, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "loss": loss_fn.state_dict(), "rng": _rng_state(generator), "elapsed_s": elapsed,
            **({"rng_ranks": rng_ranks} if world.distributed else {}),
        })
        barrier()
        epochs_bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_auc=f"{row['val_auc']:.4f}")
        logger.info("%s epoch %d: train loss %.4f, val AUC %.4f, val FPR@100 %.4f", run_dir.name, epoch + 1,
                    row["train_loss"], row["val_auc"], row["val_fpr@100"])

    if not world.is_main:
        barrier()  # rank 0 writes final.pt and done.json
        history = pd.read_csv(ckpt.history_file(run_dir)).to_dict("records")
        best = ckpt.list_checkpoints(run_dir)[0]
        return TrainResult(run_dir, pd.DataFrame(history), best["epoch"], best["val_auc"], elapsed,
                           _peak_memory_mb(device), str(device))
    frame = pd.DataFrame(history)
    best = ckpt.list_checkpoints(run_dir)[0]
    result = TrainResult(run_dir, frame, best["epoch"], best["val_auc"], elapsed, _peak_memory_mb(device), str(device))
    if len(history) >= config.epochs:
        final = {"model": model.state_dict(), "loss": loss_fn.state_dict(), "epoch": len(history), "epoch_base": 1,
                 "val_auc": float(frame["val_auc"].iloc[-1]), **meta}
        ckpt.save_checkpoint(ckpt.final_checkpoint(run_dir), final)
        ckpt.write_done(run_dir, result)
        ckpt.last_checkpoint(run_dir).unlink(missing_ok=True)
    barrier()
    return result

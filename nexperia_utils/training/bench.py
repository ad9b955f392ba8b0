"""Training throughput: the model alone vs the real pipeline.

    python -m nexperia_utils.training.bench --profile quick --arch resnet18

(a) model alone: forward, loss, backward and optimiser step on a random batch already on the device;
(b) pipeline: the same steps fed by the real DataLoader (decoded-image cache, the profile's
augmentation, collation, pinned memory on CUDA). Both use :func:`nexperia_utils.training.loop.train_step`
with the profile's optimiser and its bf16 autocast + channels_last setting. It prints images/s of
both and their ratio; a ratio near 1 means data loading is not the bottleneck.
"""
from __future__ import annotations

import argparse
import logging
import time
from typing import Sequence

import torch
from torch.utils.data import DataLoader

from nexperia_utils.config import Profile, get_profile
from nexperia_utils.models.builders import resolve_device
from nexperia_utils.experiment import open_experiment
from nexperia_utils.training.losses import build_loss
from nexperia_utils.models.builders import build_model
from nexperia_utils.training.loop import TrainConfig, make_optimizer, train_step
from nexperia_utils.data.transforms import train_crop_transform

logger = logging.getLogger(__name__)


def _time_steps(step, batches, warmup: int, device: torch.device) -> tuple[float, int]:
    """(seconds, number) of the timed steps, after ``warmup`` untimed ones."""
    iterator = iter(batches)
    for _ in range(warmup):
        step(*next(iterator))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    n = 0
    for batch in iterator:
        step(*batch)
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, n


def run_benchmark(profile: str | Profile = "quick", arch: str = "resnet18", image_size: int | None = None,
                  batch_size: int | None = None, steps: int = 20, warmup: int = 3, num_workers: int | None = None,
                  device: str = "auto", data_root: str | None = None) -> dict[str, float]:
    """Images/s of (a) and (b) and their ratio, for ``profile`` (a name or a :class:`Profile`)."""
    base = get_profile(profile) if isinstance(profile, str) else profile
    P = base.replace(**{k: v for k, v in dict(image_size=image_size, batch_size=batch_size,
                                              num_workers=num_workers).items() if v is not None})
    dev = resolve_device(device)
    exp = open_experiment(P, data_root, progress=False)
    train_part = exp.part("train")
    labels = torch.as_tensor(train_part.labels)
    model = build_model(arch, len(exp.classes), input_norm=P.input_norm).to(dev)
    use_amp = P.amp
    if use_amp:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss("ce", classes=exp.classes, negative_class=exp.negative_class, train_labels=labels).to(dev)
    optimizer = make_optimizer(model, TrainConfig.from_profile(P))
    B, S = P.batch_size, P.image_size

    def step(images, y, idx):
        train_step(model, loss_fn, optimizer, images, y, idx, 0, dev, use_amp)

    total = warmup + steps
    x = torch.randn(B, 3, S, S, device=dev)
    y = labels[:B].to(dev)
    idx = torch.arange(B, device=dev)
    model_s, n_model = _time_steps(step, [(x, y, idx)] * total, warmup, dev)

    transform = train_crop_transform(S, "center", P.augmentation)
    loader = DataLoader(train_part.dataset(transform), batch_size=B, shuffle=True, drop_last=True,
                        num_workers=P.num_workers, pin_memory=dev.type == "cuda",
                        persistent_workers=P.num_workers > 0)
    needed = total
    if len(loader) < needed:
        raise ValueError(f"the training part has only {len(loader)} batches of {B}; use fewer --steps")

    def limited():
        for i, batch in enumerate(loader):
            if i >= needed:
                break
            yield batch

    pipe_s, n_pipe = _time_steps(step, limited(), warmup, dev)
    model_ips = n_model * B / model_s
    pipe_ips = n_pipe * B / pipe_s
    return {"model_images_per_s": model_ips, "pipeline_images_per_s": pipe_ips, "ratio": pipe_ips / model_ips,
            "batch_size": B, "image_size": S, "steps": steps, "num_workers": P.num_workers,
            "threads": torch.get_num_threads(), "device": str(dev), "amp": use_amp,
            "augmentation": P.augmentation, "optimizer": P.optimizer}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    r = run_benchmark(args.profile, args.arch, args.image_size, args.batch_size, args.steps, args.warmup,
                      args.num_workers, args.device, args.data_root)
    print(f"arch {args.arch}, {r['image_size']} px, batch {r['batch_size']}, device {r['device']}, "
          f"bf16+channels_last {r['amp']}, augmentation {r['augmentation']}, {r['optimizer']}, "
          f"{r['threads']} threads, {r['num_workers']} loader workers, {r['steps']} timed steps")
    print(f"(a) model alone : {r['model_images_per_s']:8.1f} images/s")
    print(f"(b) pipeline    : {r['pipeline_images_per_s']:8.1f} images/s")
    print(f"ratio (b)/(a)   : {r['ratio']:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

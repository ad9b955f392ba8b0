"""Eager against ``torch.compile`` for the quick recipe's training step and inference (LEARNING.md, CPU efficiency).

    .venv/bin/python tools/bench_compile.py --arch resnet18

The model of the real pipeline (``build_model`` with the profile's input standardisation, bf16 autocast +
channels_last) and its training step (``train_step`` with ``build_loss("ce")`` and the profile's optimiser, ``make_optimizer``) on a random batch,
eager, compiled (inductor, default mode) and eager again, in one process so the ratio is fair on a noisy
machine; then inference (batch 128, ``torch.inference_mode``) eager and compiled. Prints images/s, the
compile (warm-up) seconds and the ratios. No data set is needed.
"""
from __future__ import annotations

import argparse
import time

import torch

from nexperia_utils.config import Profile, get_profile
from nexperia_utils.data.synthetic.spec import CLASSES, GOOD
from nexperia_utils.models.builders import build_model
from nexperia_utils.training.losses import build_loss
from nexperia_utils.training.loop import TrainConfig, make_optimizer, train_step


def _model(P: Profile, arch: str, compiled: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A fresh model (seed 0) in channels_last, and what to call: itself or its compiled wrapper."""
    torch.manual_seed(0)
    model = build_model(arch, len(CLASSES), input_norm=P.input_norm).to(memory_format=torch.channels_last)
    return model, torch.compile(model) if compiled else model


def _train(P: Profile, arch: str, compiled: bool, steps: int) -> tuple[float, float]:
    """(warm-up seconds for 3 steps, images/s over ``steps`` timed steps) of one fresh model."""
    model, forward = _model(P, arch, compiled)
    optimizer = make_optimizer(model, TrainConfig.from_profile(P))
    B, S = P.batch_size, P.image_size
    images = torch.randn(B, 3, S, S)
    labels = torch.randint(0, len(CLASSES), (B,))
    indices = torch.arange(B)
    loss_fn = build_loss("ce", classes=CLASSES, negative_class=GOOD, train_labels=labels)

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            train_step(forward, loss_fn, optimizer, images, labels, indices, 0, torch.device("cpu"), P.amp)
        return time.perf_counter() - start

    warm = run(3)
    return warm, steps * B / run(steps)


def _infer(P: Profile, arch: str, compiled: bool, repeats: int = 10, batch: int = 128) -> tuple[float, float]:
    """(seconds of the first 2 batches, images/s over ``repeats`` batches) in evaluation mode."""
    model, forward = _model(P, arch, compiled)
    model.eval()
    S = P.image_size
    images = torch.randn(batch, 3, S, S).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=P.amp):
        start = time.perf_counter()
        forward(images), forward(images)
        warm = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(repeats):
            forward(images)
        return warm, repeats * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", help="recipe: size, batch, optimiser, input norm, amp")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=None, help="the profile's if unset")
    parser.add_argument("--batch-size", type=int, default=None, help="the profile's if unset")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    P = get_profile(args.profile, image_size=args.image_size, batch_size=args.batch_size)
    print(f"{args.arch}, profile {P.name}, {P.image_size} px, bf16 + channels_last {P.amp}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    rates = {}
    for name, compiled in (("eager", False), ("compiled", True), ("eager again", False)):
        warm, rate = _train(P, args.arch, compiled, args.steps)
        rates[name] = rate
        print(f"train batch {P.batch_size:3d} {name:11s}: {rate:7.1f} images/s (first 3 steps {warm:5.1f} s)", flush=True)
    eager = (rates["eager"] + rates["eager again"]) / 2
    print(f"train compiled / eager: {rates['compiled'] / eager:.2f}x")
    infer = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        warm, rate = _infer(P, args.arch, compiled)
        infer[name] = rate
        print(f"inference batch 128 {name:8s}: {rate:7.1f} images/s (first 2 batches {warm:5.1f} s)", flush=True)
    print(f"inference compiled / eager: {infer['compiled'] / infer['eager']:.2f}x")


if __name__ == "__main__":
    main()

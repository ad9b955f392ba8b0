"""Eager against ``torch.compile`` for the quick recipe's training step and inference (LEARNING.md, CPU efficiency).

    .venv/bin/python tools/bench_compile.py --arch resnet18

The model of the real pipeline (``build_model`` with per-image input standardisation, bf16 autocast +
channels_last) and its training step (``train_step``: the 10-class cross entropy, AdamW) on a random batch,
eager, compiled (inductor, default mode) and eager again, in one process so the ratio is fair on a noisy
machine; then inference (batch 128, ``torch.inference_mode``) eager and compiled. Prints images/s, the
compile (warm-up) seconds and the ratios. No data set is needed.
"""
from __future__ import annotations

import argparse
import time

import torch

from nexperia_utils.models.builders import build_model
from nexperia_utils.training.loop import train_step

CLASSES = 10


def _train(arch: str, compiled: bool, batch: int, size: int, steps: int) -> tuple[float, float]:
    """(warm-up seconds for 3 steps, images/s over ``steps`` timed steps) of one fresh model."""
    torch.manual_seed(0)
    model = build_model(arch, CLASSES, input_norm="image").to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    forward = torch.compile(model) if compiled else model
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, CLASSES, (batch,))
    indices = torch.arange(batch)
    cross_entropy = torch.nn.CrossEntropyLoss()

    def loss_fn(logits, y, idx, epoch):
        return cross_entropy(logits, y)

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            train_step(forward, loss_fn, optimizer, images, labels, indices, 0, torch.device("cpu"), True)
        return time.perf_counter() - start

    warm = run(3)
    return warm, steps * batch / run(steps)


def _infer(arch: str, compiled: bool, size: int, repeats: int = 10, batch: int = 128) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model(arch, CLASSES, input_norm="image").to(memory_format=torch.channels_last).eval()
    forward = torch.compile(model) if compiled else model
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        start = time.perf_counter()
        forward(images), forward(images)
        warm = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(repeats):
            forward(images)
        return warm, repeats * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    print(f"{args.arch}, {args.image_size} px, torch {torch.__version__}, {torch.get_num_threads()} threads")
    rates = {}
    for name, compiled in (("eager", False), ("compiled", True), ("eager again", False)):
        warm, rate = _train(args.arch, compiled, args.batch_size, args.image_size, args.steps)
        rates[name] = rate
        print(f"train batch {args.batch_size:3d} {name:11s}: {rate:7.1f} images/s (first 3 steps {warm:5.1f} s)", flush=True)
    eager = (rates["eager"] + rates["eager again"]) / 2
    print(f"train compiled / eager: {rates['compiled'] / eager:.2f}x")
    infer = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        warm, rate = _infer(args.arch, compiled, args.image_size)
        infer[name] = rate
        print(f"inference batch 128 {name:8s}: {rate:7.1f} images/s (first 2 batches {warm:5.1f} s)", flush=True)
    print(f"inference compiled / eager: {infer['compiled'] / infer['eager']:.2f}x")


if __name__ == "__main__":
    main()

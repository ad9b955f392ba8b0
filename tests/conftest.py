"""Shared fixtures: a work directory per test session so tests never touch the project's data/outputs."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from nexperia_utils.data.dataset import SplitData

CLASSES = ["chipping", "good", "scratch"]


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXPERIA_WORKDIR", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def smoke_workdir(tmp_path_factory) -> Iterator[Path]:
    """One work directory per test module, set as NEXPERIA_WORKDIR while the module runs.

    Removed when the module ends: the checkpoints of a module's trained runs take gigabytes (VGG19_bn
    has 140 M parameters), and a full disk fails the next module's ``torch.save``. Set
    ``NEXPERIA_KEEP_TEST_WORK=1`` to keep them for a look.
    """
    work = tmp_path_factory.mktemp("work")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEXPERIA_WORKDIR", str(work))
        yield work
    if not os.environ.get("NEXPERIA_KEEP_TEST_WORK"):
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: the test machine's few cores are shared with other jobs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def torch_seed() -> None:
    """Seed torch's global generator before each test."""
    torch.manual_seed(0)


def make_part(name: str, n: int, seed: int, size: int = 36) -> SplitData:
    """A small in-memory split part: images whose class is visible (a bright square for defects)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    labels = np.array([1 if i % 3 else (0 if i % 2 else 2) for i in range(n)], dtype=np.int64)
    images = rng.integers(60, 120, size=(n, size, size + 1), dtype=np.uint8)
    for i, label in enumerate(labels):
        if label != 1:
            x, y = rng.integers(4, size - 12, size=2)
            images[i, y:y + 8, x:x + 8] = 230 if label == 0 else 10
    frame = pd.DataFrame({"image_id": [f"{name}{i:03d}" for i in range(n)], "path": [f"x/{name}{i}.png" for i in range(n)],
                          "label": [CLASSES[k] for k in labels], "split": name})
    return SplitData(name, frame, labels, images)


def tiny_train_config(**overrides):
    """A training config for the in-memory parts of :func:`make_part`: ResNet18 at 32 px on the CPU."""
    from nexperia_utils.training.loop import TrainConfig

    base = dict(arch="resnet18", epochs=3, batch_size=8, lr=0.05, image_size=32, top_k=2, device="cpu",
                eval_batch_size=32, scheduler="cosine")
    base.update(overrides)
    return TrainConfig(**base)

"""Decoded-image cache and the (image, label, index) data set."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nexperia_utils.data.dataset import ImageArrayDataset, encode_labels, load_images, load_split_part
from nexperia_utils.errors import DataError
from nexperia_utils.data.transforms import eval_transform


@pytest.fixture()
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        label = "good" if i % 2 else "scratch"
        (tmp_path / "data" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (267, 275), dtype=np.uint8)).save(tmp_path / "data" / label / f"img{i}.png")
        paths.append((f"img{i}", f"{label}/img{i}.png", label, "train" if i < 4 else "test"))
    return tmp_path / "data", pd.DataFrame(paths, columns=["image_id", "path", "label", "split"])


def test_cache_is_built_once_and_reused(image_folder, tmp_path):
    root, split = image_folder
    first = load_images(root, split["path"].tolist(), 36, tmp_path / "cache", progress=False)
    files = list((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 1 and first.shape == (6, 36, 37) and first.dtype == np.uint8
    mtime = files[0].stat().st_mtime_ns
    again = load_images(root, split["path"].tolist(), 36, tmp_path / "cache", progress=False)
    assert files[0].stat().st_mtime_ns == mtime and np.array_equal(first, again)
    other = load_images(root, split["path"].tolist()[:3], 36, tmp_path / "cache", progress=False)
    assert other.shape[0] == 3 and len(list((tmp_path / "cache").glob("*.npy"))) == 2
    assert np.array_equal(load_images(root, split["path"].tolist(), 36, None, progress=False), first)


def test_split_part_and_items(image_folder, tmp_path):
    root, split = image_folder
    part = load_split_part(split, "train", root, ["good", "scratch"], 36, tmp_path / "cache", progress=False)
    assert len(part) == 4 and list(part.labels) == [1, 0, 1, 0]
    image, label, index = part.dataset(eval_transform(32))[2]
    assert image.shape == (3, 32, 32) and label == 1 and index == 2
    with pytest.raises(DataError, match="no 'val' images"):
        load_split_part(split, "val", root, ["good", "scratch"], 36, None, progress=False)


def test_unknown_label_and_length_mismatch():
    with pytest.raises(DataError, match="not among the classes"):
        encode_labels(["good", "bent"], ["good", "scratch"])
    with pytest.raises(DataError, match="labels"):
        ImageArrayDataset(np.zeros((2, 4, 4), np.uint8), np.zeros(3), eval_transform(32))


def test_experiment_parts_carry_the_split_hash(workdir):
    from nexperia_utils.config import get_profile
    from nexperia_utils.experiment import open_experiment

    exp = open_experiment(get_profile("smoke"), progress=False)
    assert exp.split_hash and all(exp.part(name).split_hash == exp.split_hash for name in ("train", "test"))

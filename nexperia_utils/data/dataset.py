"""Torch data sets over a split, with a cache of decoded, resized images.

Decoding a PNG/JPEG/BMP and resizing it costs more than the augmentation of the small images the
quick profile trains on, so every image of a split is decoded once into a ``uint8`` array of shape
``(N, R, W)`` (``R`` the resize size) stored as ``.npy`` under ``data/cache/`` and memory-mapped.
The cache file name holds a hash of the image paths and the size, so a new split or size builds a
new cache and a stale one is never read.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from nexperia_utils.errors import DataError
from nexperia_utils.io import atomic_write
from nexperia_utils.data.transforms import resize_grayscale, resize_size_for

logger = logging.getLogger(__name__)

#: The label index of an image without a label (a competition's test image, a new image on the line).
UNLABELLED = -1

#: Width / height of the Nexperia images (267 x 275 pixels).
NEXPERIA_ASPECT = 275 / 267


def cache_width(resize: int) -> int:
    return int(round(resize * NEXPERIA_ASPECT))


def cache_key(paths: Sequence[str], resize: int) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.encode("utf-8"))
        digest.update(b"\0")
    digest.update(f"resize={resize}".encode())
    return digest.hexdigest()[:16]


def decode_images(
    data_root: Path, paths: Sequence[str], resize: int, progress: bool = True
) -> np.ndarray:
    """Decode and resize the images at ``data_root / path`` into one ``(N, R, W)`` uint8 array.

    Threads decode in parallel (Pillow releases the GIL while it decodes and resizes): one per core
    this process may use, at most 16; the result does not depend on their number.
    """
    from concurrent.futures import ThreadPoolExecutor

    from nexperia_utils.data.images import read_grayscale

    width = cache_width(resize)
    out = np.empty((len(paths), resize, width), dtype=np.uint8)

    def decode(i: int) -> None:
        out[i] = resize_grayscale(read_grayscale(Path(data_root) / paths[i]), resize, width)

    threads = max(1, min(16, len(os.sched_getaffinity(0))))
    with ThreadPoolExecutor(threads) as pool:
        for _ in tqdm(pool.map(decode, range(len(paths))), total=len(paths), desc=f"decode {resize}px",
                      disable=not progress, unit="img"):
            pass
    return out


def load_images(
    data_root: Path,
    paths: Sequence[str],
    resize: int,
    cache_dir: Path | None,
    progress: bool = True,
) -> np.ndarray:
    """The decoded images of ``paths``, from the cache when present (built on first use).

    ``cache_dir=None`` decodes into memory without caching.
    """
    paths = list(paths)
    if cache_dir is None:
        return decode_images(data_root, paths, resize, progress)
    cache_dir = Path(cache_dir)
    file = cache_dir / f"images-{cache_key(paths, resize)}-{resize}px.npy"
    if file.exists():
        images = np.load(file, mmap_mode="r")
        if images.shape[0] == len(paths) and images.shape[1] == resize:
            return images
        logger.warning("cache %s has shape %s, expected %d images; rebuilding", file, images.shape, len(paths))
    images = decode_images(data_root, paths, resize, progress)
    atomic_write(file, lambda tmp: np.save(tmp, images))
    logger.info("cached %d decoded images in %s (%.1f MB)", len(paths), file, images.nbytes / 1e6)
    return np.load(file, mmap_mode="r")


class ImageArrayDataset(Dataset):
    """Items ``(image, label, index)``; the index is the position in this data set (SAT needs it).

    ``images`` is an ``(N, H, W)`` uint8 array, ``labels`` class indices (``-1`` when unlabelled).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[[torch.Tensor], torch.Tensor]):
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = torch.from_numpy(np.array(self.images[index], copy=True)).unsqueeze(0)
        return self.transform(image), int(self.labels[index]), index


@dataclass
class SplitData:
    """One part (train, val or test) of a split, decoded: ids, labels and images.

    ``split_hash`` names the split the part comes from (:func:`nexperia_utils.data.split.split_hash`;
    empty for images outside a split, such as a competition's test folder).
    """

    name: str
    frame: pd.DataFrame
    labels: np.ndarray
    images: np.ndarray
    split_hash: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def dataset(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> ImageArrayDataset:
        return ImageArrayDataset(self.images, self.labels, transform)


def encode_labels(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Class names to indices; an unknown name raises a DataError that lists it."""
    lookup = {name: i for i, name in enumerate(classes)}
    unknown = sorted({label for label in labels if label not in lookup})
    if unknown:
        raise DataError(f"labels {unknown} are not among the classes {list(classes)}")
    return np.array([lookup[label] for label in labels], dtype=np.int64)


def load_split_part(
    split: pd.DataFrame,
    part: str,
    data_root: Path,
    classes: Sequence[str],
    resize: int,
    cache_dir: Path | None,
    progress: bool = True,
    split_hash: str = "",
) -> SplitData:
    """Rows of ``split`` whose ``split`` column is ``part``, with decoded images (cached).

    ``split_hash``: the split's :func:`nexperia_utils.data.split.split_hash`, recorded on the part.
    """
    frame = split[split["split"] == part].reset_index(drop=True)
    if frame.empty:
        raise DataError(f"the split has no {part!r} images")
    labels = encode_labels(frame["label"].tolist(), classes)
    images = load_images(data_root, frame["path"].tolist(), resize, cache_dir, progress)
    return SplitData(part, frame, labels, images, split_hash)


def unlabelled_part(name: str, data_root: Path, frame: pd.DataFrame, image_size: int,
                    cache_dir: Path | None = None, progress: bool = True) -> SplitData:
    """Images without labels as a :class:`SplitData` with labels :data:`UNLABELLED` (decoded, cached).

    ``frame`` lists ``image_id`` and ``path`` (relative to ``data_root``); images are resized like the
    training images (shorter side ``round(image_size * 255 / 224)``).
    """
    frame = frame[["image_id", "path"]].reset_index(drop=True).copy()
    frame["label"] = ""
    frame["split"] = name
    images = load_images(data_root, frame["path"].tolist(), resize_size_for(image_size), cache_dir, progress)
    return SplitData(name, frame, np.full(len(frame), UNLABELLED, dtype=np.int64), images)

"""Class-balanced sampling (the student project's 'B' bootstrap and 'S' without-replacement schemes).

Each epoch draws ``per_class`` training indices from every class present in the labels and
shuffles them together, so every class contributes equally to the epoch whatever its size.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.validation import check_int

__all__ = ["ClassBalancedSampler"]


class ClassBalancedSampler(Sampler[int]):
    """Yield ``per_class`` indices of each class per epoch, shuffled.

    - ``replacement=True`` ('B', bootstrap): ``per_class`` indices drawn with replacement from
      each class, so small classes are repeated and large ones subsampled.
    - ``replacement=False`` ('S'): ``per_class`` distinct indices of each class; **a class with
      fewer than ``per_class`` samples contributes all its samples once** (it is not
      over-sampled), so the epoch is shorter than ``per_class * num_classes``.

    The draw is a pure function of ``(seed, epoch)``: call :meth:`set_epoch` before each epoch
    (like ``DistributedSampler``) to get a new draw; iterating twice at the same epoch gives the
    same order, which makes resumed runs reproducible. Classes are the distinct values in
    ``labels``; a class with no sample simply does not appear.
    """

    def __init__(self, labels: Sequence[int], per_class: int, replacement: bool, seed: int) -> None:
        arr = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if arr.ndim != 1 or arr.size == 0:
            raise DataError(f"ClassBalancedSampler needs a non-empty 1-D sequence of labels, got shape {arr.shape}")
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"ClassBalancedSampler labels must be integer class indices, got dtype {arr.dtype}")
        check_int("per_class", per_class, 1, where="ClassBalancedSampler")
        if not isinstance(replacement, (bool, np.bool_)):
            raise ConfigError(f"ClassBalancedSampler replacement must be True ('B') or False ('S'), got {replacement!r}")
        check_int("seed", seed, 0, where="ClassBalancedSampler")
        self.per_class = int(per_class)
        self.replacement = bool(replacement)
        self.seed = int(seed)
        self.epoch = 0
        classes = np.unique(arr)
        self.classes: tuple[int, ...] = tuple(int(c) for c in classes)
        self._members: tuple[np.ndarray, ...] = tuple(np.flatnonzero(arr == c) for c in classes)

    def set_epoch(self, epoch: int) -> None:
        """Select the draw of ``epoch`` (0-based)."""
        check_int("epoch", epoch, 0, error=ValueError)
        self.epoch = int(epoch)

    def counts(self) -> dict[int, int]:
        """Number of indices each class contributes per epoch."""
        return {c: self._count(len(m)) for c, m in zip(self.classes, self._members)}

    def _count(self, size: int) -> int:
        return self.per_class if self.replacement else min(self.per_class, size)

    def __len__(self) -> int:
        return sum(self._count(len(m)) for m in self._members)

    def indices(self) -> np.ndarray:
        """The epoch's indices (int64), in the order :meth:`__iter__` yields them."""
        rng = np.random.default_rng([self.seed, self.epoch])
        parts = []
        for members in self._members:
            if self.replacement:
                parts.append(rng.choice(members, size=self.per_class, replace=True))
            elif len(members) <= self.per_class:
                parts.append(members)
            else:
                parts.append(rng.choice(members, size=self.per_class, replace=False))
        return rng.permutation(np.concatenate(parts)).astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

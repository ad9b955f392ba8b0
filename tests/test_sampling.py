"""Tests of nexperia_utils.training.sampling.ClassBalancedSampler."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.training.sampling import ClassBalancedSampler

# class 0: 50 samples, class 1: 5, class 3: 12 (class 2 absent)
LABELS = [0] * 50 + [1] * 5 + [3] * 12
LABELS = [LABELS[i] for i in np.random.default_rng(0).permutation(len(LABELS))]


def class_counts(indices) -> Counter:
    return Counter(LABELS[i] for i in indices)


def test_bootstrap_counts_and_repeats():
    s = ClassBalancedSampler(LABELS, per_class=20, replacement=True, seed=1)
    idx = list(s)
    assert len(idx) == len(s) == 60
    assert class_counts(idx) == {0: 20, 1: 20, 3: 20}
    assert s.counts() == {0: 20, 1: 20, 3: 20}
    # class 1 has 5 samples: 20 draws must repeat some
    ones = [i for i in idx if LABELS[i] == 1]
    assert len(set(ones)) <= 5 < len(ones)
    assert all(0 <= i < len(LABELS) for i in idx)


def test_bootstrap_draws_with_replacement_even_from_large_classes():
    # with replacement, 50 draws from a 50-sample class repeat some index in almost every epoch
    s = ClassBalancedSampler(LABELS, per_class=50, replacement=True, seed=2)
    repeats = 0
    for epoch in range(5):
        s.set_epoch(epoch)
        zeros = [i for i in s if LABELS[i] == 0]
        repeats += len(zeros) - len(set(zeros))
    assert repeats > 0


def test_without_replacement_distinct_and_small_classes_taken_whole():
    s = ClassBalancedSampler(LABELS, per_class=10, replacement=False, seed=3)
    idx = list(s)
    assert len(idx) == len(set(idx)) == len(s) == 10 + 5 + 10
    assert class_counts(idx) == {0: 10, 1: 5, 3: 10}
    assert {i for i in idx if LABELS[i] == 1} == {i for i, c in enumerate(LABELS) if c == 1}


def test_without_replacement_covers_a_class_when_per_class_exceeds_it():
    s = ClassBalancedSampler(LABELS, per_class=1000, replacement=False, seed=0)
    assert sorted(s) == list(range(len(LABELS)))


def test_deterministic_and_set_epoch_changes_draw():
    a = ClassBalancedSampler(LABELS, per_class=10, replacement=False, seed=7)
    b = ClassBalancedSampler(LABELS, per_class=10, replacement=False, seed=7)
    assert list(a) == list(b) == list(a)  # same (seed, epoch): same order, also when iterated again
    e0 = list(a)
    a.set_epoch(1)
    e1 = list(a)
    assert e1 != e0
    assert class_counts(e1) == class_counts(e0)
    b.set_epoch(1)
    assert list(b) == e1
    a.set_epoch(0)
    assert list(a) == e0
    c = ClassBalancedSampler(LABELS, per_class=10, replacement=False, seed=8)
    assert list(c) != e0


def test_order_is_shuffled_across_classes():
    s = ClassBalancedSampler(LABELS, per_class=12, replacement=False, seed=0)
    seq = [LABELS[i] for i in s]
    assert seq != sorted(seq)
    # not grouped in blocks by class: many class changes along the sequence
    changes = sum(1 for x, y in zip(seq, seq[1:]) if x != y)
    assert changes > 10


def test_works_with_dataloader_and_tensor_labels():
    labels = torch.tensor(LABELS)
    ds = TensorDataset(torch.arange(len(LABELS)), labels)
    s = ClassBalancedSampler(labels, per_class=4, replacement=True, seed=0)
    seen = torch.cat([y for _, y in DataLoader(ds, batch_size=5, sampler=s)])
    assert Counter(seen.tolist()) == {0: 4, 1: 4, 3: 4}


def test_validation():
    with pytest.raises(ConfigError, match="per_class"):
        ClassBalancedSampler(LABELS, per_class=0, replacement=True, seed=0)
    with pytest.raises(ConfigError, match="replacement"):
        ClassBalancedSampler(LABELS, per_class=3, replacement="B", seed=0)
    with pytest.raises(DataError, match="labels"):
        ClassBalancedSampler([], per_class=3, replacement=True, seed=0)
    with pytest.raises(DataError, match="integer"):
        ClassBalancedSampler([0.5, 1.0], per_class=3, replacement=True, seed=0)
    with pytest.raises(ValueError, match="epoch"):
        ClassBalancedSampler(LABELS, per_class=3, replacement=True, seed=0).set_epoch(-1)

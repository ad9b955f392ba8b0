"""Loss functions of the report: cross entropy, self-adaptive training (SAT) and its Nexperia
variants ``bad_1`` / ``bad_boost`` (sections 2.6, 3.6), and weighted binary cross entropy (WBCE,
sections 2.7, 3.7). Definitions follow ``reference/methods.md``.

Every loss is a :class:`torch.nn.Module` with the same call signature::

    loss = loss_fn(logits, targets, indices, epoch)

``logits`` ``(B, C)``, ``targets`` ``(B,)`` class indices, ``indices`` ``(B,)`` positions of the
samples in the training set (``0..N-1``, as the data set returns them), ``epoch`` 0-based. Their
state (SAT's soft targets) lives in buffers, so ``state_dict()`` holds tensors only and
``torch.load(..., weights_only=True)`` can read it back; ``.to(device)`` moves it.
Call the losses on training batches only: SAT updates its soft targets on every call.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.validation import check_choice, check_int, check_number

__all__ = [
    "LOSS_NAMES",
    "SAT_MODS",
    "DEFAULT_BOOST_CLASSES",
    "DEFAULT_BOOST_FACTOR",
    "DEFAULT_WBCE_START_EPOCHS",
    "DEFAULT_WBCE_START",
    "DEFAULT_WBCE_M",
    "CrossEntropy",
    "SelfAdaptiveTraining",
    "WeightedBinaryCE",
    "build_loss",
]

log = logging.getLogger(__name__)

LOSS_NAMES: tuple[str, ...] = ("ce", "sat", "sat_bad_1", "sat_bad_boost", "wbce")
SAT_MODS: tuple[str, ...] = ("none", "bad_1", "bad_boost")
_SAT_MOD_OF_NAME = {"sat": "none", "sat_bad_1": "bad_1", "sat_bad_boost": "bad_boost"}

DEFAULT_SAT_ALPHA = 0.9
DEFAULT_SAT_ES = 40  # the SAT code's default; the Nexperia scripts used 90
DEFAULT_BOOST_CLASSES: tuple[str, ...] = ("lead_defect", "marking_defect", "pocket_damage", "scratch")
DEFAULT_BOOST_FACTOR = 5.0
DEFAULT_WBCE_START = 200
DEFAULT_WBCE_START_EPOCHS: dict[str, int] = {"lead_defect": 70, "marking_defect": 35, "pocket_damage": 0}
DEFAULT_WBCE_M = 0.1


def _check_batch(logits: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None) -> None:
    """Shape checks only (no device synchronisation)."""
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (batch, classes), got {tuple(logits.shape)}")
    if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"targets must have shape ({logits.shape[0]},) to match logits {tuple(logits.shape)}, "
            f"got {tuple(targets.shape)}"
        )
    if indices is not None and (indices.ndim != 1 or indices.shape[0] != logits.shape[0]):
        raise ValueError(
            f"indices must have shape ({logits.shape[0]},) (one training-set position per sample), "
            f"got {tuple(indices.shape)}"
        )


def _check_epoch(epoch: int) -> None:
    check_int("epoch (0-based)", epoch, 0, error=ValueError)


class CrossEntropy(nn.Module):
    """Mean cross entropy; ``indices`` and ``epoch`` are accepted for a uniform call and ignored.

    ``label_smoothing`` in [0, 1): the target puts ``1 - label_smoothing`` on the labelled class and
    spreads ``label_smoothing`` evenly over all C classes (``torch.nn.functional.cross_entropy``'s
    definition; 0 is the report's plain cross entropy).
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        check_number("label_smoothing", label_smoothing, 0, 1, include_high=False, error=ConfigError)
        self.label_smoothing = float(label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None = None, epoch: int = 0
    ) -> torch.Tensor:
        _check_batch(logits, targets, indices)
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def epoch_snapshot(self) -> dict[str, np.ndarray] | None:
        """Stateless: nothing to export."""
        return None


class SelfAdaptiveTraining(nn.Module):
    """Self-adaptive training (Huang et al., 2020) with the Nexperia modifications.

    State: a soft target ``t_i`` per training sample (buffer ``soft_targets``, ``(N, C)`` float32),
    initialised to the one-hot label. For ``epoch < sat_es`` the loss is plain mean cross entropy
    and the state is untouched. From ``sat_es`` on, for each batch:

    1. ``t_i <- alpha * t_i + (1 - alpha) * softmax(logits_i)`` (detached), stored back;
    2. ``w_i = max_j t_ij``; for ``mod="bad_boost"`` times the multiplier of the sample's label;
    3. weights rescaled so that they sum to the batch size;
    4. loss ``= mean_i w_i * sum_j -t_ij * log_softmax(logits_i)_j``.

    ``mod="bad_1"`` updates soft targets only for samples labelled with the negative ("good")
    class: defect-labelled samples keep their one-hot target (so weight 1 before rescaling).
    ``mod="bad_boost"`` is ``bad_1`` plus per-class weight multipliers ``boost`` (class index ->
    factor), applied before the rescaling, so their real effect depends on the batch's make-up.

    A sample that appears twice in one batch (bootstrap sampling) is updated from the table as it
    was before the batch for both occurrences; the value of its last occurrence is stored.
    The sample's label is read from the stored training labels; ``targets`` must agree with them
    (checked on every SAT batch, which catches wrong ``indices``).
    """

    soft_targets: torch.Tensor
    labels: torch.Tensor
    class_multipliers: torch.Tensor

    def __init__(
        self,
        num_samples: int,
        num_classes: int,
        train_labels: torch.Tensor | Sequence[int],
        alpha: float = DEFAULT_SAT_ALPHA,
        sat_es: int = DEFAULT_SAT_ES,
        mod: str = "none",
        negative_index: int | None = None,
        boost: Mapping[int, float] | None = None,
    ) -> None:
        super().__init__()
        check_int("num_classes", num_classes, 2, where="SAT")
        check_int("num_samples", num_samples, 1, where="SAT")
        check_number("alpha (momentum of the soft targets)", alpha, 0, 1, include_high=False, where="SAT")
        check_int("sat_es (first SAT epoch, 0-based)", sat_es, 0, where="SAT")
        check_choice("mod", mod, SAT_MODS, where="SAT")
        labels = torch.as_tensor(train_labels).detach().to("cpu")
        if labels.ndim != 1 or labels.shape[0] != num_samples:
            raise DataError(
                f"SAT train_labels must be a 1-D sequence of num_samples={num_samples} labels, "
                f"got shape {tuple(labels.shape)}; pass the labels of the training set in index order"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise DataError(f"SAT train_labels must be integer class indices, got dtype {labels.dtype}")
        labels = labels.long()
        if labels.min() < 0 or labels.max() >= num_classes:
            raise DataError(
                f"SAT train_labels must lie in [0, {num_classes - 1}], "
                f"found [{int(labels.min())}, {int(labels.max())}]"
            )
        needs_negative = mod in ("bad_1", "bad_boost")
        if needs_negative:
            if negative_index is None or isinstance(negative_index, bool) or not 0 <= int(negative_index) < num_classes:
                raise ConfigError(
                    f"SAT mod={mod!r} needs negative_index (the index of the 'good' class) in "
                    f"[0, {num_classes - 1}], got {negative_index!r}"
                )
        multipliers = torch.ones(num_classes, dtype=torch.float32)
        if mod == "bad_boost":
            if not boost:
                raise ConfigError("SAT mod='bad_boost' needs boost={class_index: factor, ...} (non-empty)")
            for cls, factor in boost.items():
                check_int("boost class index", cls, 0, num_classes - 1, where="SAT")
                check_number(f"boost factor for class {cls}", factor, 0, include_low=False, where="SAT")
                multipliers[int(cls)] = float(factor)
        elif boost:
            raise ConfigError(f"SAT boost multipliers only apply to mod='bad_boost', not mod={mod!r}")

        self.num_samples = num_samples
        self.num_classes = num_classes
        self.alpha = float(alpha)
        self.sat_es = int(sat_es)
        self.mod = mod
        self.negative_index = None if negative_index is None else int(negative_index)
        self.register_buffer("soft_targets", F.one_hot(labels, num_classes).to(torch.float32))
        self.register_buffer("labels", labels)
        self.register_buffer("class_multipliers", multipliers)

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, num_classes={self.num_classes}, alpha={self.alpha}, "
            f"sat_es={self.sat_es}, mod={self.mod!r}, negative_index={self.negative_index}"
        )

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        _check_batch(logits, targets, indices)
        _check_epoch(epoch)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, SAT was built for {self.num_classes}")
        logits = logits.float()
        if epoch < self.sat_es:
            return F.cross_entropy(logits, targets)

        indices = indices.to(device=self.soft_targets.device, dtype=torch.long)
        labels = self.labels[indices]
        if not torch.equal(labels, targets.to(device=labels.device, dtype=torch.long)):
            raise DataError(
                "SAT: the batch targets differ from the stored training labels at the given indices; "
                "indices must be the samples' positions in the training set the loss was built with"
            )
        old = self.soft_targets[indices]
        probs = F.softmax(logits.detach(), dim=1)
        new = self.alpha * old + (1.0 - self.alpha) * probs
        if self.mod in ("bad_1", "bad_boost"):
            is_good = (labels == self.negative_index).unsqueeze(1)
            new = torch.where(is_good, new, old)
        # Under DistributedDataParallel every rank stores every rank's rows (in rank order, which is the
        # global batch's order) and the weights are normalised over the global batch: the same update
        # and the same gradient as one process with the whole batch.
        from nexperia_utils.training.distributed import all_gather_rows, all_reduce_sum, current_world

        self._store(*all_gather_rows(indices, new))

        weights = new.max(dim=1).values
        if self.mod == "bad_boost":
            weights = weights * self.class_multipliers[labels]
        if current_world().distributed:
            count, total = all_reduce_sum([weights.shape[0], float(weights.sum())], weights.device)
            weights = weights * (count / total)
        else:
            weights = weights * (weights.shape[0] / weights.sum())
        per_sample = torch.sum(-new * F.log_softmax(logits, dim=1), dim=1)
        return (weights * per_sample).mean()

    def _store(self, indices: torch.Tensor, rows: torch.Tensor) -> None:
        """Write ``rows`` to ``soft_targets[indices]``; for repeated indices the last occurrence wins."""
        unique, inverse = torch.unique(indices, return_inverse=True)
        if unique.shape[0] == indices.shape[0]:
            self.soft_targets[indices] = rows
            return
        positions = torch.arange(indices.shape[0], device=indices.device)
        last = torch.full_like(unique, -1).scatter_reduce(0, inverse, positions, reduce="amax")
        self.soft_targets[unique] = rows[last]

    @torch.no_grad()
    def sample_weights(self) -> torch.Tensor:
        """Current unnormalised weight ``max_j t_ij`` of every training sample, ``(N,)`` (no boost)."""
        return self.soft_targets.max(dim=1).values

    @torch.no_grad()
    def epoch_snapshot(self) -> dict[str, np.ndarray]:
        """Per-sample export: ``weights`` ``max_j t_ij`` float16 ``(N,)`` (before boost and batch
        rescaling) and ``soft_targets`` float16 ``(N, C)``."""
        return {
            "weights": self.sample_weights().to("cpu", torch.float16).numpy(),
            "soft_targets": self.soft_targets.to("cpu", torch.float16).numpy(),
        }


class WeightedBinaryCE(nn.Module):
    """Weighted binary cross entropy: ``(ce_i + b_i * bce_i) / (1 + b_i)``, mean over the batch.

    ``ce_i`` is the C-class cross entropy; ``bce_i`` the binary cross entropy of the defect
    probability against ``label != good``, computed from the live logits (so it has a gradient;
    the original code detached it): ``log p(defect) = logsumexp(defect logits) - logsumexp(all)``,
    ``log p(good) = logit_good - logsumexp(all)``. ``b_i = m * [epoch >= start_epochs[label_i]]``.
    With ``lambda = 1 / (1 + b)`` this is the report's ``lambda * CE + (1 - lambda) * BCE``.
    """

    start_epochs: torch.Tensor
    defect_mask: torch.Tensor

    def __init__(self, negative_index: int, start_epochs: Sequence[int], m: float = DEFAULT_WBCE_M) -> None:
        super().__init__()
        starts = list(start_epochs)
        num_classes = len(starts)
        if num_classes < 2:
            raise ConfigError(f"WBCE start_epochs needs one start epoch per class (>= 2 classes), got {starts!r}")
        for c, e in enumerate(starts):
            check_int(f"start epoch of class {c}", e, 0, where="WBCE")
        check_int("negative_index", negative_index, 0, num_classes - 1, where="WBCE")
        check_number("m (weight of the binary term)", m, 0, where="WBCE")
        self.num_classes = num_classes
        self.negative_index = int(negative_index)
        self.m = float(m)
        # configuration, not state: kept out of state_dict so a resumed run uses the current config
        self.register_buffer("start_epochs", torch.tensor(starts, dtype=torch.long), persistent=False)
        mask = torch.ones(num_classes, dtype=torch.bool)
        mask[self.negative_index] = False
        self.register_buffer("defect_mask", mask, persistent=False)

    def extra_repr(self) -> str:
        return f"negative_index={self.negative_index}, m={self.m}, start_epochs={self.start_epochs.tolist()}"

    def binary_ce(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sample binary CE of the defect probability against ``target != negative`` ``(B,)``."""
        logits = logits.float()
        lse = torch.logsumexp(logits, dim=1)
        log_p_defect = torch.logsumexp(logits[:, self.defect_mask], dim=1) - lse
        log_p_good = logits[:, self.negative_index] - lse
        return -torch.where(targets != self.negative_index, log_p_defect, log_p_good)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None, epoch: int) -> torch.Tensor:
        _check_batch(logits, targets, indices)
        _check_epoch(epoch)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, WBCE was built for {self.num_classes}")
        logits = logits.float()
        ce = F.cross_entropy(logits, targets, reduction="none")
        bce = self.binary_ce(logits, targets)
        b = self.m * (epoch >= self.start_epochs[targets]).to(logits.dtype)
        return ((ce + b * bce) / (1.0 + b)).mean()

    def epoch_snapshot(self) -> dict[str, np.ndarray] | None:
        """Stateless: nothing to export."""
        return None


# --------------------------------------------------------------------------- factory
_PARAMS: dict[str, tuple[str, ...]] = {
    "ce": ("label_smoothing",),
    "sat": ("alpha", "sat_es"),
    "sat_bad_1": ("alpha", "sat_es"),
    "sat_bad_boost": ("alpha", "sat_es", "boost_classes", "boost_factor"),
    "wbce": ("start_epochs", "m", "default_start"),
}


def _class_index(name: Any, classes: list[str], what: str) -> int:
    if name not in classes:
        raise ConfigError(f"{what}: unknown class name {name!r}; valid class names: {classes}")
    return classes.index(name)


def build_loss(
    name: str,
    classes: Sequence[str],
    negative_class: str,
    train_labels: torch.Tensor | Sequence[int] | None = None,
    **params: Any,
) -> nn.Module:
    """Build a loss by name (one of :data:`LOSS_NAMES`); classes are referred to by NAME.

    Parameters per loss (all optional):

    - ``ce``: ``label_smoothing`` (0).
    - ``sat``, ``sat_bad_1``: ``alpha`` (0.9), ``sat_es`` (40, first SAT epoch, 0-based).
    - ``sat_bad_boost``: as ``sat`` plus ``boost_classes`` (lead_defect, marking_defect,
      pocket_damage, scratch; those absent from ``classes`` are skipped only when left at the
      default) and ``boost_factor`` (5).
    - ``wbce``: ``start_epochs`` (dict class name -> first epoch of the binary term; defaults
      lead_defect 70, marking_defect 35, pocket_damage 0 when not given), ``default_start``
      (200, for classes missing from ``start_epochs``), ``m`` (0.1).

    SAT losses need ``train_labels`` (the training set's labels in index order).
    Raises :class:`ConfigError` for an unknown loss, parameter or class name.
    """
    if name not in LOSS_NAMES:
        raise ConfigError(f"unknown loss {name!r}; valid losses: {list(LOSS_NAMES)}")
    classes = list(classes)
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise ConfigError(f"classes must be >= 2 distinct class names, got {classes}")
    negative_index = _class_index(negative_class, classes, "negative_class")
    unknown = sorted(set(params) - set(_PARAMS[name]))
    if unknown:
        raise ConfigError(
            f"loss {name!r} got unknown parameter(s) {unknown}; valid parameters: {list(_PARAMS[name]) or 'none'}"
        )

    if name == "ce":
        return CrossEntropy(params.get("label_smoothing", 0.0))

    if name == "wbce":
        default_start = params.get("default_start", DEFAULT_WBCE_START)
        given = params.get("start_epochs")
        if given is None:
            given = {c: e for c, e in DEFAULT_WBCE_START_EPOCHS.items() if c in classes}
        if not isinstance(given, Mapping):
            raise ConfigError(f"wbce start_epochs must be a dict class name -> epoch, got {given!r}")
        starts = [default_start] * len(classes)
        for cls, epoch in given.items():
            starts[_class_index(cls, classes, "wbce start_epochs")] = epoch
        loss = WeightedBinaryCE(negative_index, starts, m=params.get("m", DEFAULT_WBCE_M))
        log.info("WBCE start epochs %s, m=%s", dict(zip(classes, starts)), loss.m)
        return loss

    mod = _SAT_MOD_OF_NAME[name]
    if train_labels is None:
        raise ConfigError(f"loss {name!r} needs train_labels (labels of the training set in index order)")
    labels = torch.as_tensor(train_labels)
    if labels.ndim != 1 or labels.shape[0] == 0:
        raise DataError(
            f"loss {name!r}: train_labels must be a non-empty 1-D sequence of class indices, "
            f"got shape {tuple(labels.shape)}"
        )
    boost: dict[int, float] | None = None
    if mod == "bad_boost":
        factor = params.get("boost_factor", DEFAULT_BOOST_FACTOR)
        if "boost_classes" in params:
            names = list(params["boost_classes"])
            indices = [_class_index(c, classes, "sat_bad_boost boost_classes") for c in names]
        else:
            names = [c for c in DEFAULT_BOOST_CLASSES if c in classes]
            indices = [classes.index(c) for c in names]
            if not names:
                raise ConfigError(
                    f"sat_bad_boost: none of the default boost classes {list(DEFAULT_BOOST_CLASSES)} is in "
                    f"{classes}; pass boost_classes=[...]"
                )
        if negative_index in indices:
            raise ConfigError(f"sat_bad_boost: boost_classes must be defect classes, not {negative_class!r}")
        boost = {i: factor for i in indices}
        log.info("SAT bad_boost multipliers %s", {c: factor for c in names})
    return SelfAdaptiveTraining(
        num_samples=int(labels.shape[0]),
        num_classes=len(classes),
        train_labels=labels,
        alpha=params.get("alpha", DEFAULT_SAT_ALPHA),
        sat_es=params.get("sat_es", DEFAULT_SAT_ES),
        mod=mod,
        negative_index=negative_index,
        boost=boost,
    )

"""Distribution shift: a batch-2 model on batch 3, and what fixes it (notebook 09).

The report's fourth difficulty (sections 1, 3.1, 5.3): batches from other machines and times. The
same group measured a ResNet18 trained on batch 2 at AUC 99.83 % on batch 2 and 94.93 % on batch 3.
This module scores a batch-2 run on the generator's batch 3 (:mod:`nexperia_utils.data.synthetic`,
``batch=3``) and three mitigations:

* :func:`adapt_batchnorm` (AdaBN, Li et al. 2016): the BatchNorm statistics re-estimated on
  unlabelled batch-3 images, every weight unchanged;
* :func:`fine_tune` on k labelled batch-3 images per class (:func:`few_shot_masks`; k = 5, 10, 20);
* training on batch 2 plus the k = 20 share of batch 3 ("several batches", the report's invariance
  hypothesis): :func:`train_several_batches`.

Classes are mapped by name. Batch 3's new classes (``tin_particle``, ``camera_glitch``) are never
merged into batch-2 classes: they carry the label ``UNLABELLED`` in the part, are left out of the AUC
and are reported apart (their detection rate; the OOD scores of :mod:`nexperia_utils.analysis.ood`).

One batch-3 test part serves every row: batch 3 minus the largest few-shot pool (the pools are
nested, k = 5 within 10 within 20, from one seeded permutation per class), so no row is scored on an
image any row trained on, and the rows compare on the same images.
"""
from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from nexperia_utils.evaluation import metrics

from nexperia_utils.data import synthetic
from nexperia_utils.config import Profile
from nexperia_utils.data.dataset import UNLABELLED, SplitData, load_images
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.models.builders import resolve_device
from nexperia_utils.data.transforms import eval_transform, resize_size_for, train_transform

if TYPE_CHECKING:
    from nexperia_utils.training.checkpoints import TrainResult

logger = logging.getLogger(__name__)

PUBLISHED_SHIFT = pd.DataFrame(
    {"AUC": [99.83, 94.93], "FPR@100": [36.80, 99.16]}, index=["batch 2 (published)", "batch 3 (published)"])
"""The group's ResNet18 trained on batch 2 (slides; ``shared/reference/methods.md``), percent."""


def batch_data_root(profile: Profile, batch: int = 3) -> Path:
    """Where the profile's synthetic batch ``batch`` lives: ``<data_root>-batch<batch>``."""
    root = profile.data_root()
    return root.with_name(f"{root.name}-batch{batch}")


def prepare_batch(profile: Profile, batch: int = 3, seed: int = 0, progress: bool = True) -> Path:
    """The synthetic batch ``batch`` at the profile's scale, generated when missing or stale."""
    root = batch_data_root(profile, batch)
    config = synthetic.SyntheticConfig(scale=profile.data_scale, seed=seed, batch=batch)
    if not synthetic.matches_config(root, config):
        stale = root.exists() and any(root.iterdir())
        logger.info("%s synthetic batch %d (scale %s) in %s", "regenerating" if stale else "generating", batch,
                    config.scale, root)
        synthetic.generate_dataset(root, config, overwrite=stale, progress=progress)
    return root


def batch_part(root: Path, classes: Sequence[str], image_size: int, cache_dir: Path | None = None,
               progress: bool = True, name: str = "batch3") -> SplitData:
    """Every image of a synthetic batch as one part, labelled by name with the model's ``classes``.

    Images of a class the model does not know get the label :data:`UNLABELLED`; their class stays in
    ``frame["label"]`` and ``frame["new_class"]`` is True for them. ``frame`` also carries the
    annotations (true class, noise flag, severity, box).
    """
    annotations = synthetic.read_annotations(root)
    frame = annotations.assign(path=annotations["label"] + "/" + annotations["image_id"] + synthetic.IMAGE_SUFFIX)
    frame["new_class"] = ~frame["label"].isin(list(classes))
    frame["split"] = name
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([lookup.get(label, UNLABELLED) for label in frame["label"]], dtype=np.int64)
    images = load_images(Path(root), frame["path"].tolist(), resize_size_for(image_size), cache_dir, progress)
    return SplitData(name, frame.reset_index(drop=True), labels, images)


def subset(part: SplitData, mask: np.ndarray, name: str) -> SplitData:
    """The rows of ``part`` where ``mask`` is True, as a part called ``name``."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (len(part),):
        raise DataError(f"mask of shape {mask.shape} does not fit the {len(part)} images of {part.name}")
    frame = part.frame[mask].reset_index(drop=True).assign(split=name)
    return SplitData(name, frame, part.labels[mask], part.images[mask], part.split_hash)


def concat_parts(first: SplitData, second: SplitData, name: str, split_hash: str) -> SplitData:
    """Two parts of the same image size as one (rows of ``first`` first)."""
    if first.images.shape[1:] != second.images.shape[1:]:
        raise DataError(f"{first.name} images {first.images.shape[1:]} and {second.name} images "
                        f"{second.images.shape[1:]} have different sizes")
    columns = ["image_id", "path", "label"]
    frame = pd.concat([first.frame[columns].assign(source=first.name), second.frame[columns].assign(source=second.name)],
                      ignore_index=True).assign(split=name)
    return SplitData(name, frame, np.concatenate([first.labels, second.labels]),
                     np.concatenate([first.images, second.images]), split_hash)


def few_shot_masks(part: SplitData, ks: Sequence[int], seed: int = 0) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Nested few-shot training masks (one per k) and the common test mask of a labelled part.

    Per known class, one seeded permutation: the first ``min(k, n // 2)`` images train at shot ``k``
    (at least half of every class stays for the test); images of new classes never train. The test
    mask is everything outside the largest pool.
    """
    ks = sorted(int(k) for k in ks)
    if not ks or ks[0] < 1:
        raise ConfigError(f"few-shot k must be positive integers, got {list(ks)}")
    rng = np.random.default_rng(seed)
    masks = {k: np.zeros(len(part), dtype=bool) for k in ks}
    for label in np.unique(part.labels[part.labels >= 0]):
        members = rng.permutation(np.flatnonzero(part.labels == label))
        for k in ks:
            masks[k][members[:min(k, len(members) // 2)]] = True
    return masks, ~masks[ks[-1]]


@dataclass(frozen=True)
class ShiftScores:
    """Scores of one model on one part: defect score, per image, and the part's labels."""

    part: SplitData
    defect_score: np.ndarray


def shift_row(scores: ShiftScores, negative_index: int, threshold: float, n_boot: int = 0,
              seed: int = 0) -> dict[str, float | str]:
    """AUC and FPR at each TPR level over the known classes (percent), and the rates at ``threshold``.

    ``n_boot > 0`` adds the AUC's 95 % interval from that many stratified bootstrap resamples.
    """
    known = scores.part.labels >= 0
    y = scores.part.labels[known] != negative_index
    s = scores.defect_score[known]
    if y.all() or not y.any():
        raise DataError(f"{scores.part.name} needs good and defect images of known classes for an AUC")
    row: dict[str, float | str] = {"AUC": 100 * metrics.roc_auc(y, s)}
    if n_boot:
        from nexperia_utils.evaluation.operating_points import BootstrapConfig, bootstrap_intervals

        low, high = 100 * bootstrap_intervals(y, s, (), BootstrapConfig(n_boot=n_boot, seed=seed))["auc_interval"]
        row["AUC 95 % CI"] = f"[{low:.1f}, {high:.1f}]"
    for level in (0.991, 1.0):
        row[metrics.metric_key(level).upper()] = 100 * metrics.fpr_at_tpr(y, s, level)
    row["TPR at val threshold"] = 100 * float((s[y] >= threshold).mean())
    row["FPR at val threshold"] = 100 * float((s[~y] >= threshold).mean())
    return row


def detection_rates(scores: ShiftScores, threshold: float) -> pd.Series:
    """Share (percent) of each true class's images at or above ``threshold`` (good: the false alarms)."""
    frame = scores.part.frame
    column = "true_class" if "true_class" in frame.columns else "label"
    flagged = pd.Series(scores.defect_score >= threshold, index=frame.index)
    return 100 * flagged.groupby(frame[column].to_numpy()).mean()


@torch.no_grad()
def adapt_batchnorm(model: torch.nn.Module, part: SplitData, image_size: int, batch_size: int = 64,
                    device: str | torch.device = "cpu") -> torch.nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are those of ``part``'s images (AdaBN).

    Labels are not used. Every BatchNorm layer's statistics are reset and re-estimated as a cumulative
    average over one pass (``momentum=None``); every weight and bias stays as it was.
    """
    device = resolve_device(device)
    adapted = copy.deepcopy(model).to(device)
    norms = [m for m in adapted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ConfigError(f"{type(model).__name__} has no BatchNorm layer to adapt")
    momenta = [m.momentum for m in norms]
    adapted.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    if len(part) < 2:
        raise DataError(f"{part.name} has {len(part)} image(s); AdaBN needs at least 2")
    # A last batch of one image has no spatial extent left at layer4 for small inputs: it is left out.
    loader = DataLoader(part.dataset(eval_transform(image_size, "center")), batch_size=batch_size, shuffle=False,
                        drop_last=len(part) % batch_size == 1)
    for images, _, _ in loader:
        adapted(images.to(device))  # float32: the statistics are averages, no autocast
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return adapted.eval()


@dataclass(frozen=True)
class FineTuneConfig:
    """Few-shot fine-tuning of a trained model: every layer, AdamW, a constant small learning rate."""

    epochs: int = 15
    lr: float = 1e-4
    weight_decay: float = 0.05
    batch_size: int = 32
    augmentation: str = "flip"
    seed: int = 0
    amp: bool = True

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError(f"FineTuneConfig needs epochs >= 1, batch_size >= 1 and lr > 0, got {self}")


def fine_tune(model: torch.nn.Module, part: SplitData, image_size: int, config: FineTuneConfig = FineTuneConfig(),
              device: str | torch.device = "cpu") -> tuple[torch.nn.Module, list[float]]:
    """A copy of ``model`` fine-tuned on ``part`` (cross entropy); returns it and the mean loss per epoch.

    An incomplete last batch is dropped when the part is larger than a batch (a batch of one image
    cannot train BatchNorm); every image still trains in other epochs (the order is shuffled).
    """
    from nexperia_utils.training.loop import train_step

    config.validate()
    if (part.labels < 0).any():
        raise DataError(f"{part.name} holds unlabelled images; fine-tune on labelled images of known classes")
    if len(part) < 2:
        raise DataError(f"{part.name} has {len(part)} image(s); fine-tuning needs at least 2 (BatchNorm)")
    device = resolve_device(device)
    tuned = copy.deepcopy(model).to(device).train()
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    loader = DataLoader(part.dataset(train_transform(image_size, config.augmentation)), batch_size=config.batch_size,
                        shuffle=True, generator=generator, drop_last=len(part) > config.batch_size)
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor, _indices: torch.Tensor, _epoch: int) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, labels)

    losses = []
    for epoch in range(1, config.epochs + 1):
        total, seen = 0.0, 0
        for images, labels, indices in loader:
            loss, _, _ = train_step(tuned, loss_fn, optimizer, images, labels, indices, epoch, device, config.amp)
            total += float(loss) * len(labels)
            seen += len(labels)
        losses.append(total / max(seen, 1))
    return tuned.eval(), losses



Scorer = Callable[[SplitData], np.ndarray]
"""A model as the shift table sees it: the defect score of every image of a part."""


def model_scorer(model: torch.nn.Module, image_size: int, negative_index: int,
                 device: str | torch.device = "cpu") -> Scorer:
    """The centre-crop defect scores of ``model`` (bf16 autocast, as every table)."""
    from nexperia_utils.evaluation.predict import predict_proba

    return lambda part: metrics.defect_score(predict_proba(model, part, image_size, "center", 128, device),
                                             negative_index)


def shift_table(scorers: Mapping[str, Scorer], b2_val: SplitData, b2_test: SplitData, b3_test: SplitData,
                negative_index: int, level: float = 0.991, n_boot: int = 1000,
                progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per model: batch-2 test and batch-3 test metrics (percent), and per-class detection rates.

    Each model's threshold is the one reaching TPR ``level`` on the batch-2 validation part, scored by
    that model (what a line has before it has labelled batch-3 data); the detection table gives the
    share of each batch-3 test class at or above it (``good``: false alarms; ``camera_glitch``: glitches
    rejected; ``tin_particle``: tin particles caught). ``n_boot``: resamples of the AUC intervals (0: none).
    """
    rows, rates = {}, {}
    for name, scorer in tqdm(scorers.items(), desc="shift table", disable=not progress):
        y_val = b2_val.labels != negative_index
        threshold = metrics.threshold_at_tpr(y_val, scorer(b2_val), level)
        row = {}
        for label, part in (("batch 2", b2_test), ("batch 3", b3_test)):
            scores = ShiftScores(part, scorer(part))
            metrics_row = shift_row(scores, negative_index, threshold, n_boot)
            row.update({f"{label} {key}": value for key, value in metrics_row.items()})
            if label == "batch 3":
                rates[name] = detection_rates(scores, threshold)
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    return table, pd.DataFrame.from_dict(rates, orient="index")


def share_hash(split_hash: str, share: SplitData) -> str:
    """The split hash of batch 2's training part plus a batch-3 share (by the share's image ids)."""
    digest = hashlib.sha256("\n".join(sorted(share.frame["image_id"].astype(str))).encode("utf-8")).hexdigest()
    return f"{split_hash}+{digest[:16]}"


def train_several_batches(exp, share: SplitData, run: str, overwrite: bool = False, **overrides) -> "TrainResult":
    """Train the profile's ResNet18 from scratch on batch 2's training part plus ``share`` of batch 3.

    Validation (checkpoint choice) stays batch 2's validation part; ``share`` must hold labelled
    images of the experiment's classes (:func:`few_shot_masks`). A finished run is reused.
    """
    from nexperia_utils.training.loop import TrainConfig, train

    if (share.labels < 0).any():
        raise DataError(f"{share.name} holds images of classes the batch-2 model does not have")
    config = TrainConfig.from_profile(exp.profile, arch="resnet18", loss="ce", **overrides)
    combined = concat_parts(exp.part("train", config.image_size), share, "train", share_hash(exp.split_hash, share))
    return train(config, combined, exp.part("val", config.image_size), exp.classes, exp.negative_class,
                 combined.split_hash, exp.run_dir(run), overwrite=overwrite, progress=exp.progress)

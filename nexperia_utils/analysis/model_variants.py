"""The model variants of report sections 2.2-2.3 and 3.3-3.4, and Table 2 (section 4.1).

* STN models (``resnet18_stn``, ``vgg19_bn_stn``): the report's training settings
  (:func:`stn_training_settings`: no augmentation, momentum 0.6 / 0.5, the profile's
  ``stn_epochs``), the transforms a trained STN applies (:func:`stn_thetas`, :func:`theta_frame`)
  and the before/after views of Figure 2 (:func:`stn_views`).
* ResNet_att_2: its attention maps upsampled to the input (:func:`attention_maps`), the layer
  table (Table 1, :func:`att2_layer_table`) and the gradient that reaches ``conv6``
  (:func:`conv6_gradient_norm`); the defect boxes in model-input pixels are
  :func:`nexperia_utils.data.boxes.input_boxes`.
* Table 2: the five runs it compares (:func:`table2_runs`, :func:`require_finished_runs`), their
  cost from ``done.json`` (:func:`run_overview`) and the table itself (:func:`table2`).

Figures of these live in :mod:`nexperia_utils.reporting.variant_figures`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from nexperia_utils.training import checkpoints as ckpt
from nexperia_utils.config import Profile
from nexperia_utils.data.dataset import SplitData
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.models.builders import resolve_device
from nexperia_utils.experiment import run_name
from nexperia_utils.models.builders import DISPLAY_NAMES
from nexperia_utils.reporting.published import ROW_KEYS
from nexperia_utils.models.stn import TRANSFORMS, warp
from nexperia_utils.data.transforms import denormalise, eval_transform

logger = logging.getLogger(__name__)

#: The STN architectures and the SGD momentum the report trains each with (section 3.3).
STN_MOMENTUM: dict[str, float] = {"resnet18_stn": 0.6, "vgg19_bn_stn": 0.5}

#: The report's learning rate (section 3.2), at which its STN models trained.
STN_REFERENCE_LR = 0.001

#: Table 2's models, in the report's column order.
TABLE2_ARCHS: tuple[str, ...] = ("resnet18", "vgg19_bn", "resnet18_stn", "vgg19_bn_stn", "resnet18_att2")

#: The rows Table 2 adds below the six metric rows.
TIME_ROW = "training time (min)"
MEMORY_ROW = "peak memory (MB)"
TABLE2_ROWS: tuple[str, ...] = (*ROW_KEYS, TIME_ROW, MEMORY_ROW)

#: Report's layer names of ResNet_att_2 (Table 1) -> attribute path in :class:`ResNetAtt2`.
ATT2_LAYERS: dict[str, str] = {
    "conv1": "backbone.maxpool",
    "conv2": "backbone.layer1",
    "conv3": "backbone.layer2",
    "conv4": "backbone.layer3",
    "conv5": "backbone.layer4",
    "conv6": "conv6",
    "conv6 max pool (g)": "global_pool",
    "attention after conv4": "attention3",
    "attention after conv5": "attention4",
    "output (fc)": "classifier",
}


# --------------------------------------------------------------------------- runs and settings
def _check_stn(arch: str, stn_transform: str) -> None:
    if arch not in STN_MOMENTUM:
        raise ConfigError(f"arch must be one of the STN models {sorted(STN_MOMENTUM)}; got {arch!r}.")
    if stn_transform not in TRANSFORMS:
        raise ConfigError(f"stn_transform must be one of {sorted(TRANSFORMS)}; got {stn_transform!r}.")


def stn_run_name(arch: str, stn_transform: str = "affine", weights: str = "none") -> str:
    """Run folder of an STN model: ``resnet18_stn-ce``; other parameterisations get a suffix
    (``resnet18_stn-ce-scale_translation``) so the two never share a folder."""
    _check_stn(arch, stn_transform)
    return run_name(arch, "ce", weights=weights, suffix="" if stn_transform == "affine" else stn_transform)


def _train_config_fields() -> set[str]:
    from nexperia_utils.training.loop import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


def stn_lr_factor(lr: float) -> float:
    """Learning-rate multiplier for the STN's localisation network: its rate is at most the
    report's 0.001 (:data:`STN_REFERENCE_LR`), so 1 at the report's settings.

    From scratch at the quick profile's lr 0.01 the localisation network of ResNet18_stn moves
    the sampling grid off the image within a few dozen steps; there the grid samples only zero
    padding, its gradient vanishes and the STN stays dead (the backbone then sees a constant
    image). At 0.001 it stays on the image (measured on the smoke data).
    """
    if lr <= 0:
        raise ConfigError(f"lr must be > 0; got {lr}.")
    return min(1.0, STN_REFERENCE_LR / lr)


def stn_training_settings(arch: str, profile: Profile, epochs: int | None = None,
                          stn_transform: str = "affine") -> dict[str, Any]:
    """``train_model`` overrides for an STN model, as the report trains them (section 3.3).

    No augmentation (the STN is meant as its alternative, section 2.2), SGD momentum 0.6 for
    ResNet18_stn and 0.5 for VGG19_bn_stn, and ``profile.stn_epochs`` epochs (the report: 100,
    twice the baselines') unless ``epochs`` is given. Everything else is the baselines' schedule.
    Where the training loop supports it (``TrainConfig.stn_lr_factor``), the localisation network
    learns at :func:`stn_lr_factor` times the profile's rate.
    """
    _check_stn(arch, stn_transform)
    if epochs is not None and epochs < 1:
        raise ConfigError(f"epochs must be >= 1 (or None for the profile's stn_epochs); got {epochs}.")
    settings: dict[str, Any] = {"augment": False, "momentum": STN_MOMENTUM[arch],
                                "epochs": epochs or profile.stn_epochs, "stn_transform": stn_transform}
    factor = stn_lr_factor(profile.lr)
    if "stn_lr_factor" in _train_config_fields():
        settings["stn_lr_factor"] = factor
    elif factor < 1.0:
        logger.warning("lr %g is above the report's %g and the training loop has no stn_lr_factor: the STN's "
                       "localisation network may push the sampling grid off the image (check the transforms "
                       "below: coverage near 0 means a dead STN)", profile.lr, STN_REFERENCE_LR)
    return settings


@dataclass(frozen=True)
class VariantRun:
    """One column of Table 2: the architecture, its run folder name and the make target that trains it."""

    arch: str
    run: str
    make_target: str

    @property
    def model(self) -> str:
        return DISPLAY_NAMES[self.arch]


def table2_runs(weights: str = "none", stn_transform: str = "affine") -> list[VariantRun]:
    """The five runs of Table 2 in the report's column order."""
    runs = []
    for arch in TABLE2_ARCHS:
        if arch in STN_MOMENTUM:
            name = stn_run_name(arch, stn_transform, weights)
            target = f"make stn-{arch}" + ("" if stn_transform == "affine" else f" STN_TRANSFORM={stn_transform}")
        elif arch == "resnet18_att2":
            name, target = run_name(arch, "ce", weights=weights), "make attention"
        else:
            name, target = run_name(arch, "ce", weights=weights), f"make baseline-{arch}"
        runs.append(VariantRun(arch, name, target))
    return runs


def require_finished_runs(runs_dir: Path, runs: Sequence[VariantRun], profile_name: str) -> list[Path]:
    """The run folders of ``runs`` under ``runs_dir``; raise naming every unfinished one and its target.

    Raises:
        FileNotFoundError: a run has no ``done.json`` (never trained, or interrupted).
    """
    missing = [r for r in runs if not ckpt.is_finished(Path(runs_dir) / r.run)]
    if missing:
        lines = "\n".join(f"  - {r.model}: {Path(runs_dir) / r.run} -> `{r.make_target} PROFILE={profile_name}`"
                          for r in missing)
        raise FileNotFoundError(
            f"{len(missing)} of the {len(runs)} runs of Table 2 are not finished (no done.json):\n{lines}\n"
            f"Train them with the make targets shown, or all at once with `make reproduce-table2 PROFILE={profile_name}`."
        )
    return [Path(runs_dir) / r.run for r in runs]


def run_overview(run_dirs: Mapping[str, Path]) -> pd.DataFrame:
    """Settings and cost of finished runs, one row per model (from ``config.json`` and ``done.json``).

    Columns: run, epochs, optimizer, lr, momentum, augment, weights, image_size, stn_transform and
    stn_lr_factor (STN models; empty / NaN for the others), best_epoch, best_val_auc, train_time_s,
    peak_memory_mb, device.
    """
    rows = []
    for model, run_dir in run_dirs.items():
        run_dir = Path(run_dir)
        done_file, config_file = ckpt.done_file(run_dir), ckpt.config_file(run_dir)
        for file in (done_file, config_file):
            if not file.exists():
                raise FileNotFoundError(f"{file} is missing: {run_dir.name} has not finished training.")
        done = json.loads(done_file.read_text())
        config = json.loads(config_file.read_text())["config"]
        missing = [k for k in ("train_time_s", "peak_memory_mb", "device") if k not in done]
        if missing:
            raise DataError(f"{done_file} lacks {missing}; retrain the run (RETRAIN=True) with the current code.")
        is_stn = str(config.get("arch", "")).endswith("_stn")
        rows.append({
            "model": model, "run": run_dir.name, "epochs": done.get("epochs", config["epochs"]),
            "optimizer": config.get("optimizer", "sgd"), "lr": config.get("lr"), "momentum": config["momentum"],
            "augment": config["augment"], "weights": config["weights"], "image_size": config["image_size"],
            "stn_transform": config.get("stn_transform", "affine") if is_stn else "",
            "stn_lr_factor": config.get("stn_lr_factor", 1.0) if is_stn else math.nan,
            "best_epoch": done["best_epoch"], "best_val_auc": done["best_val_auc"],
            "train_time_s": float(done["train_time_s"]), "peak_memory_mb": float(done["peak_memory_mb"]),
            "device": str(done["device"]),
        })
    return pd.DataFrame(rows).set_index("model")


def table2(results: pd.DataFrame, overview: pd.DataFrame, models: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 2 in the report's shape plus the cost of each model.

    Rows: the six metrics (mean (std) in percent over each model's evaluated checkpoints, as
    :func:`nexperia_utils.reporting.summary_table`), then :data:`TIME_ROW` (training time in
    minutes, two decimals so that second-long smoke runs do not print 0.0) and :data:`MEMORY_ROW` (peak memory in MB, no decimals) from
    ``overview`` (:func:`run_overview`). Columns: the models, in ``models`` order (default: as
    in ``results``).

    The pixel reference's column (when ``results`` hold its row) comes last, with "-" for time and
    memory (it is not a trained network).

    Raises:
        DataError: a model of the table has no row in ``overview``.
    """
    from nexperia_utils.evaluation.pixel_reference import REFERENCE_NAME
    from nexperia_utils.reporting import summary_table

    order = list(models) if models is not None else list(dict.fromkeys(results["model"]))
    order += [REFERENCE_NAME] if REFERENCE_NAME in set(results["model"]) and REFERENCE_NAME not in order else []
    table = summary_table(results, columns=("model",), column_order=order)
    trained = [m for m in table.columns if m != REFERENCE_NAME]
    absent = [m for m in trained if m not in overview.index]
    if absent:
        raise DataError(f"no training record (done.json) for {absent}; overview has {list(overview.index)}.")

    def cell(model: str, column: str, scale: float, digits: int) -> str:
        return "-" if model == REFERENCE_NAME else f"{overview.loc[model, column] / scale:.{digits}f}"

    cost = pd.DataFrame(
        [[cell(m, "train_time_s", 60, 2) for m in table.columns],
         [cell(m, "peak_memory_mb", 1, 0) for m in table.columns]],
        index=[TIME_ROW, MEMORY_ROW], columns=table.columns,
    )
    out = pd.concat([table, cost])
    out.index.name = table.index.name or "metric"
    return out


def table2_caption(profile: Profile, overview: pd.DataFrame, top_k: int, stn_transform: str, n_test: int,
                   n_defects: int, data_name: str) -> str:
    """The caption of our Table 2: what was trained how, what the numbers average, what time and memory mean."""
    origin = "ImageNet-pretrained backbones" if profile.pretrained else "trained from scratch (no ImageNet weights)"
    epochs = ", ".join(f"{model} {int(n)}" for model, n in overview["epochs"].items())
    devices = sorted(set(overview["device"].astype(str)))
    if all(d.startswith("cuda") for d in devices):
        memory = "the peak CUDA memory allocated by the training process"
    else:
        memory = ("on the CPU, the peak resident memory of the whole training process (model, optimiser, decoded "
                  "images and the notebook's own state, so not the model's alone); on a GPU, the peak CUDA memory "
                  "allocated")
    return (
        f"Table 2 (reproduction, profile `{profile.name}`): models {origin} at {profile.image_size} px; epochs: "
        f"{epochs}; STN models ({stn_transform} transform) without augmentation, momentum 0.6 (ResNet18_stn) and "
        f"0.5 (VGG19_bn_stn). Mean (std) in percent over the {top_k} checkpoints with the best validation AUC "
        f"(the report gives a single number for the VGG models), centre crop, on the test part ({n_test} images, "
        f"{n_defects} defects) of `{data_name}`. Training time: wall clock of the training loop, validation after "
        f"each epoch included; peak memory: {memory}. Device: {', '.join(devices)}."
    )


# --------------------------------------------------------------------------- inputs
def example_indices(labels: np.ndarray, n: int, classes: Sequence[int] | None = None, seed: int = 0) -> list[int]:
    """``n`` indices taking classes in turn (round robin, in class order), random within a class.

    ``classes`` restricts the choice to those class indices. Fewer than ``n`` come back when the
    classes hold fewer images.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    wanted = sorted(set(labels.tolist())) if classes is None else [c for c in classes if (labels == c).any()]
    queues = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in wanted}
    chosen: list[int] = []
    while len(chosen) < n and any(queues.values()):
        for c in wanted:
            if queues[c] and len(chosen) < n:
                chosen.append(int(queues[c].pop(0)))
    return chosen


def eval_inputs(part: SplitData, indices: Sequence[int], image_size: int) -> torch.Tensor:
    """The centre-cropped, normalised model inputs ``(n, 3, S, S)`` of ``part``'s images ``indices``."""
    dataset = part.dataset(eval_transform(image_size, "center"))
    if len(indices) == 0:
        return torch.zeros(0, 3, image_size, image_size)
    return torch.stack([dataset[int(i)][0] for i in indices])


def _batches(part: SplitData, image_size: int, batch_size: int) -> DataLoader:
    return DataLoader(part.dataset(eval_transform(image_size, "center")), batch_size=batch_size, shuffle=False)


# --------------------------------------------------------------------------- STN
def _stn_of(model: nn.Module) -> nn.Module:
    stn = getattr(model, "stn", None)
    if stn is None or not hasattr(stn, "theta"):
        raise ConfigError(f"{type(model).__name__} has no spatial transformer (`.stn`); pass a *_stn model.")
    return stn


@torch.no_grad()
def stn_thetas(model: nn.Module, part: SplitData, image_size: int, batch_size: int = 128,
               device: str | torch.device = "cpu") -> np.ndarray:
    """The affine matrices ``(N, 2, 3)`` the STN of ``model`` applies to each centre-cropped image of ``part``."""
    stn = _stn_of(model)
    device = resolve_device(device)
    was_training = model.training
    model.to(device).eval()
    out = [stn.theta(images.to(device)).float().cpu() for images, _, _ in _batches(part, image_size, batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, 2, 3))


@torch.no_grad()
def stn_views(model: nn.Module, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Figure 2's two rows: the inputs and what the STN makes of them, as grey images in [0, 1].

    ``inputs`` are normalised model inputs ``(n, 3, S, S)``. Where the transform samples outside
    the input the STN writes 0 (the normalised mean), which shows as mid grey.
    """
    stn = _stn_of(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    transformed = stn(inputs.to(device)).cpu()
    model.train(was_training)
    return denormalise(inputs), denormalise(transformed)


def theta_frame(thetas: np.ndarray, transform: str, labels: np.ndarray | None = None,
                negative_index: int | None = None) -> pd.DataFrame:
    """The transform parameters per image, as the STN's parameterisation names them.

    ``affine``: ``theta11 ... theta23`` (rows of ``A_theta``), plus two derived numbers:
    ``area_scale``, the determinant of the linear part (the output shows an input region of
    ``area_scale`` times the image's area: below 1 zooms in, negative mirrors), and
    ``rotation_deg``, the angle of the rotation closest to the linear part,
    ``atan2(theta21 - theta12, theta11 + theta22)`` (positive: the output shows the input turned
    counter-clockwise on screen). ``scale_translation``: ``scale`` (theta1), ``tx`` (theta2),
    ``ty`` (theta3). Translations are in normalised units (1 = half the image side; ``tx > 0``
    moves the content left). Both get ``coverage`` (:func:`view_coverage`). With ``labels`` and
    ``negative_index`` a column ``group`` says good / defect.
    """
    thetas = np.asarray(thetas, dtype=np.float64)
    if thetas.ndim != 3 or thetas.shape[1:] != (2, 3):
        raise DataError(f"thetas must have shape (N, 2, 3); got {thetas.shape}.")
    if transform not in TRANSFORMS:
        raise ConfigError(f"transform must be one of {sorted(TRANSFORMS)}; got {transform!r}.")
    if transform == "affine":
        frame = pd.DataFrame({f"theta{r + 1}{c + 1}": thetas[:, r, c] for r in range(2) for c in range(3)})
        linear = thetas[:, :, :2]
        frame["area_scale"] = np.linalg.det(linear) if len(thetas) else np.zeros(0)
        frame["rotation_deg"] = np.degrees(np.arctan2(linear[:, 1, 0] - linear[:, 0, 1], linear[:, 0, 0] + linear[:, 1, 1]))
    else:
        frame = pd.DataFrame({"scale": thetas[:, 0, 0], "tx": thetas[:, 0, 2], "ty": thetas[:, 1, 2]})
    frame["coverage"] = view_coverage(thetas)
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != len(frame):
            raise DataError(f"{len(labels)} labels for {len(frame)} transforms.")
        if negative_index is None:
            raise ConfigError("theta_frame: pass negative_index (the 'good' class index) with labels.")
        frame["group"] = np.where(labels == negative_index, "good", "defect")
    return frame


def view_coverage(thetas: np.ndarray, grid: int = 64) -> np.ndarray:
    """Share of the STN output that shows the image (not the zero padding), per transform.

    1 for the identity or any zoom-in inside the image; near 0 when the transform looks outside
    the image (a collapsed STN: the backbone sees a constant image and no gradient reaches the
    STN any more). Computed by warping an image of ones on a ``grid`` x ``grid`` raster.
    """
    thetas = torch.as_tensor(np.asarray(thetas, dtype=np.float32))
    if thetas.ndim != 3 or tuple(thetas.shape[1:]) != (2, 3):
        raise DataError(f"thetas must have shape (N, 2, 3); got {tuple(thetas.shape)}.")
    if len(thetas) == 0:
        return np.zeros(0)
    ones = torch.ones(len(thetas), 1, grid, grid)
    return warp(ones, thetas).mean(dim=(1, 2, 3)).numpy().astype(np.float64)


def stn_health(coverage: np.ndarray, dead_below: float = 0.05) -> str:
    """One sentence on whether the STN still shows the image: median coverage and dead views.

    ``coverage`` is :func:`view_coverage` per image; a view showing less than ``dead_below`` of
    the image counts as dead (the backbone sees the padding only).
    """
    coverage = np.asarray(coverage, dtype=float)
    if coverage.size == 0:
        return "no transforms to check"
    dead = int((coverage < dead_below).sum())
    text = (f"median share of the STN output showing the image: {np.median(coverage):.1%}; "
            f"{dead} of {coverage.size} views show less than {dead_below:.0%} of it")
    if dead > coverage.size / 2:
        text += (" - the STN has collapsed: it looks outside the image, the backbone sees a constant input and no "
                 "gradient reaches the STN any more (a learning rate too high for the localisation network)")
    return text


#: Value of each :func:`theta_frame` column at the identity transform (where an untrained STN sits).
IDENTITY_VALUES: dict[str, float] = {
    "theta11": 1.0, "theta12": 0.0, "theta13": 0.0, "theta21": 0.0, "theta22": 1.0, "theta23": 0.0,
    "area_scale": 1.0, "rotation_deg": 0.0, "scale": 1.0, "tx": 0.0, "ty": 0.0, "coverage": 1.0,
}


# --------------------------------------------------------------------------- attention
@torch.no_grad()
def attention_maps(model: nn.Module, inputs: torch.Tensor, batch_size: int = 64
                   ) -> tuple[np.ndarray, list[np.ndarray], list[tuple[int, int]]]:
    """Softmax probabilities and the attention maps of ResNet_att_2, upsampled to the input.

    Returns ``(probs (n, C), [map_conv4 (n, S, S), map_conv5 (n, S, S)], [grid shape of each map])``.
    Each map is the model's attention ``a`` (summing to one over its grid positions), upsampled
    bilinearly (``align_corners=False``) and multiplied by the number of grid positions, so a
    uniform map is 1 everywhere and the values say how many times the average weight a position
    gets.
    """
    if not hasattr(model, "forward_with_attention"):
        raise ConfigError(f"{type(model).__name__} has no forward_with_attention; pass a resnet18_att2 model.")
    if inputs.ndim != 4:
        raise DataError(f"inputs must be (n, 3, H, W); got {tuple(inputs.shape)}.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs: list[torch.Tensor] = []
    maps: list[list[torch.Tensor]] = []
    grids: list[tuple[int, int]] = []
    size = tuple(inputs.shape[2:])
    for start in range(0, len(inputs), batch_size):
        logits, raw = model.forward_with_attention(inputs[start:start + batch_size].to(device))
        probs.append(F.softmax(logits.float(), dim=1).cpu())
        grids = [tuple(m.shape[1:]) for m in raw]
        up = [F.interpolate(m[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
              * (m.shape[1] * m.shape[2]) for m in raw]
        maps.append([u.cpu() for u in up])
    model.train(was_training)
    if not probs:
        return np.zeros((0, 0)), [], []
    layers = [torch.cat([batch[i] for batch in maps]).numpy() for i in range(len(maps[0]))]
    return torch.cat(probs).numpy().astype(np.float64), layers, grids


def conv6_gradient_norm(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Gradient norms after one cross-entropy backward pass: conv6, conv5 (layer4), the classifier.

    With the report's concatenation compatibility ``<u, [l_i ; g]>`` the ``g`` term is the same
    at every position and cancels in the softmax, so ``conv6`` (which only feeds ``g``) gets a
    zero gradient (up to rounding); the dot-product compatibility ``<l_i, g>`` gives it one.
    The model's gradients are cleared afterwards.
    """
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(inputs), labels).backward()

    def norm(module: nn.Module) -> float:
        grads = [p.grad.norm() for p in module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    out = {"conv6": norm(model.conv6), "layer4 (conv5)": norm(model.backbone.layer4),
           "classifier": norm(model.classifier)}
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return out


def att2_layer_table(model: nn.Module, image_size: int) -> pd.DataFrame:
    """Table 1 for a given input size: each layer of ResNet_att_2 (report's names) and its output shape."""
    outputs: dict[str, str] = {}
    hooks = []
    for name, path in ATT2_LAYERS.items():
        module = model.get_submodule(path)

        def record(_module, _inputs, output, name=name):
            tensors = output if isinstance(output, tuple) else (output,)
            outputs[name] = " + ".join(str(tuple(t.shape[1:])) for t in tensors)
        hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    descriptions = {
        "conv1": "7x7, 64, stride 2 + 3x3 max pool",
        "conv2": "[3x3, 64; 3x3, 64] x 2",
        "conv3": "[3x3, 128; 3x3, 128] x 2",
        "conv4": "[3x3, 256; 3x3, 256] x 2",
        "conv5": "[3x3, 512; 3x3, 512] x 2",
        "conv6": "3x3, 512 (+ BN, ReLU), replaces avgpool",
        "conv6 max pool (g)": "global max pool: the global feature g",
        "attention after conv4": "1x1 projection 256 -> 512, <u, [l_i; g]>, softmax: (g_a, map)",
        "attention after conv5": "<u, [l_i; g]>, softmax: (g_a, map)",
        "output (fc)": "linear 1024 (= [g_a conv4; g_a conv5]) -> classes",
    }
    return pd.DataFrame({"layer": list(ATT2_LAYERS), "what": [descriptions[n] for n in ATT2_LAYERS],
                         "module": list(ATT2_LAYERS.values()),
                         "output shape (C, H, W)": [outputs.get(n, "") for n in ATT2_LAYERS]}).set_index("layer")


# --------------------------------------------------------------------------- boxes



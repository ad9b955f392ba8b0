"""The model variants of report sections 2.2-2.3 and 3.3-3.4, and Table 2 (section 4.1).

* STN models (``resnet18_stn``, ``vgg19_bn_stn``): the report's training settings
  (:func:`stn_training_settings`: no augmentation, momentum 0.6 / 0.5, the profile's
  ``stn_epochs``) and run names (:func:`stn_run_name`).
* What a trained STN or ResNet_att_2 does with its inputs (thetas, views, attention maps, Table 1)
  is in :mod:`nexperia_utils.analysis.variant_inspection`; the defect boxes in model-input pixels
  are :func:`nexperia_utils.data.boxes.input_boxes`.
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

import pandas as pd

from nexperia_utils.training import checkpoints as ckpt
from nexperia_utils.config import Profile
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.experiment import run_name
from nexperia_utils.models.builders import DISPLAY_NAMES
from nexperia_utils.reporting.published import ROW_KEYS
from nexperia_utils.models.stn import TRANSFORMS

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

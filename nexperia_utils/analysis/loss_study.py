"""The loss study of report sections 3.6-3.7 (Table 4, Figures 4, 5, 7, 8, 9).

ResNet34 is trained from scratch with each loss of :data:`STUDY_LOSSES` (cross entropy, weighted
binary cross entropy, SAT and its ``bad_1`` / ``bad_boost`` variants) under the study's own
schedule (section 3.7: ``profile.sat_epochs`` epochs, learning rate ``profile.sat_lr``, cosine
annealing, batch 32, no ImageNet weights), validating and testing after every epoch (Figure 9
plots the test FPR per epoch; the test part never chooses a checkpoint). Each loss is its own run,
so a comparison reuses finished runs::

    settings = StudySettings()                       # the report's loss parameters
    result = train_study_run(exp, "sat_bad_1", settings)
    results = evaluate_study(exp, finished_study_runs(exp))
    table = table4(results)

Run folders are ``resnet34-<loss>-study`` (:func:`study_run_name`): the suffix keeps them apart
from ``02_baseline``'s ``resnet34-ce`` run, which has another schedule.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from nexperia_utils.training.checkpoints import history_file, is_finished
from nexperia_utils.config import Profile
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.training.losses import (
    DEFAULT_BOOST_CLASSES,
    DEFAULT_BOOST_FACTOR,
    DEFAULT_SAT_ALPHA,
    DEFAULT_WBCE_M,
    DEFAULT_WBCE_START_EPOCHS,
    LOSS_NAMES,
)

__all__ = [
    "LOSS_LABELS",
    "REFERENCE_EPOCHS",
    "SAT_LOSSES",
    "STUDY_ARCH",
    "STUDY_BATCH_SIZE",
    "STUDY_LOSSES",
    "StudySettings",
    "evaluate_study",
    "finished_study_runs",
    "load_history",
    "parse_losses",
    "scaled_start_epochs",
    "study_run_name",
    "study_schedule",
    "study_train_overrides",
    "table4",
    "train_study_run",
]

log = logging.getLogger(__name__)

#: The losses of the study, in the order of the report's figures.
STUDY_LOSSES: tuple[str, ...] = ("ce", "wbce", "sat", "sat_bad_1", "sat_bad_boost")
#: The losses with a SAT table (per-epoch weights and soft targets under ``run_dir/sat``).
SAT_LOSSES: tuple[str, ...] = ("sat", "sat_bad_1", "sat_bad_boost")
#: Display names: the first three are the column names of the report's Table 4. The report's single
#: "SAT" column does not say which variant it is; we give it to plain SAT and show the two variants
#: as extra columns.
LOSS_LABELS: dict[str, str] = {
    "ce": "Cross Entropy",
    "wbce": "WBCE",
    "sat": "SAT",
    "sat_bad_1": "SAT bad 1",
    "sat_bad_boost": "SAT bad boost",
}
STUDY_ARCH = "resnet34"
STUDY_BATCH_SIZE = 32
#: Epochs of the report's study: the WBCE start epochs it used (70 / 35 / 0) refer to them.
REFERENCE_EPOCHS = 200

assert set(STUDY_LOSSES) <= set(LOSS_NAMES)


def parse_losses(loss: str | Sequence[str]) -> list[str]:
    """The losses to train: ``"all"`` -> :data:`STUDY_LOSSES`, ``"none"``/``""`` -> ``[]``, a name or a list.

    Raises ConfigError for an unknown loss name.
    """
    if isinstance(loss, str):
        if loss in ("", "none"):
            return []
        names = list(STUDY_LOSSES) if loss == "all" else [loss]
    else:
        names = list(loss)
    unknown = [n for n in names if n not in STUDY_LOSSES]
    if unknown:
        raise ConfigError(f"unknown loss {unknown}; choose from {list(STUDY_LOSSES)}, 'all' or 'none'")
    return names


def study_run_name(loss: str, sampler: str = "none", suffix: str = "") -> str:
    """Run folder of one loss of the study: ``resnet34-sat_bad_1-study`` (``-bootstrap`` etc. with a sampler)."""
    from nexperia_utils.experiment import run_name

    parts = ["study"]
    if sampler != "none":
        parts.append(sampler)
    if suffix:
        parts.append(suffix)
    return run_name(STUDY_ARCH, loss, suffix="-".join(parts))


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def scaled_start_epochs(epochs: int, start_epochs: Mapping[str, int] | None = None,
                        reference_epochs: int = REFERENCE_EPOCHS) -> dict[str, int]:
    """WBCE start epochs for a schedule of ``epochs``: the report's (``lead_defect`` 70,
    ``marking_defect`` 35, ``pocket_damage`` 0 of 200 epochs) scaled by ``epochs / reference_epochs``
    and rounded half up (for 200 epochs they are unchanged)."""
    if epochs < 1 or reference_epochs < 1:
        raise ConfigError(f"epochs and reference_epochs must be >= 1, got {epochs} and {reference_epochs}")
    given = DEFAULT_WBCE_START_EPOCHS if start_epochs is None else start_epochs
    return {name: _round_half_up(e * epochs / reference_epochs) for name, e in given.items()}


@dataclass
class StudySettings:
    """Loss parameters of the study; ``None`` fields take the profile's (or the report's, scaled) value.

    - ``alpha``: momentum of SAT's soft targets (0.9);
    - ``sat_es``: epochs of plain cross entropy before SAT starts (``None``: ``profile.sat_es``);
    - ``boost_classes``, ``boost_factor``: SAT bad boost's per-class weight multipliers;
    - ``wbce_start_epochs``: class name -> first (0-based) epoch of WBCE's binary term (``None``:
      the report's, scaled to the schedule by :func:`scaled_start_epochs`); classes not named start
      at ``wbce_default_start`` (``None``: never, i.e. the number of epochs);
    - ``wbce_m``: weight of the binary term (0.1).
    """

    alpha: float = DEFAULT_SAT_ALPHA
    sat_es: int | None = None
    boost_classes: Sequence[str] = field(default_factory=lambda: list(DEFAULT_BOOST_CLASSES))
    boost_factor: float = DEFAULT_BOOST_FACTOR
    wbce_start_epochs: Mapping[str, int] | None = None
    wbce_m: float = DEFAULT_WBCE_M
    wbce_default_start: int | None = None

    def loss_params(self, loss: str, epochs: int, profile: Profile, classes: Sequence[str]) -> dict[str, Any]:
        """Keyword parameters of :func:`nexperia_utils.training.losses.build_loss` for ``loss`` (JSON-serialisable).

        Raises ConfigError when SAT would never start (``sat_es >= epochs``) or a class is unknown.
        """
        if loss not in STUDY_LOSSES:
            raise ConfigError(f"unknown loss {loss!r}; choose from {list(STUDY_LOSSES)}")
        classes = list(classes)
        if loss == "ce":
            return {}
        if loss == "wbce":
            if self.wbce_start_epochs is None:  # the report's, scaled; classes absent from the data skipped
                starts = {name: e for name, e in scaled_start_epochs(epochs).items() if name in classes}
            else:
                starts = {str(name): int(e) for name, e in self.wbce_start_epochs.items()}
            default = epochs if self.wbce_default_start is None else int(self.wbce_default_start)
            return {"start_epochs": starts, "m": float(self.wbce_m), "default_start": default}
        sat_es = profile.sat_es if self.sat_es is None else int(self.sat_es)
        if sat_es >= epochs:
            raise ConfigError(
                f"sat_es={sat_es} (epochs of cross entropy before SAT) is not below the {epochs} training "
                f"epochs, so SAT would never start; pass a smaller sat_es or more epochs"
            )
        params: dict[str, Any] = {"alpha": float(self.alpha), "sat_es": sat_es}
        if loss == "sat_bad_boost":
            boost = list(self.boost_classes)
            if boost == list(DEFAULT_BOOST_CLASSES):  # the report's classes: skip those absent from the data
                boost = [c for c in boost if c in classes]
            params["boost_classes"] = boost
            params["boost_factor"] = float(self.boost_factor)
        return params


def study_schedule(profile: Profile) -> str:
    """The study's learning rate and schedule on ``profile``, in words (for captions)."""
    o = study_train_overrides(profile, "ce", {})
    words = f"lr {o['lr']:g}, {'one-cycle' if o['scheduler'] == 'onecycle' else 'cosine annealing'}"
    return words + (", half-defect batches" if o["sampler"] == "binary" else "")


def study_train_overrides(profile: Profile, loss: str, loss_params: Mapping[str, Any], epochs: int | None = None,
                          sampler: str = "none", sampler_per_class: int | None = None, n_train: int | None = None,
                          n_classes: int | None = None, device: str = "auto") -> dict[str, Any]:
    """Fields of :class:`nexperia_utils.training.loop.TrainConfig` for one run of the study (section 3.7).

    With a class-balanced ``sampler`` and no ``sampler_per_class``, each class contributes
    ``ceil(n_train / n_classes)`` images per epoch (an epoch as long as a plain one).

    The report's schedule (``profile.sat_lr``, cosine annealing, plain shuffling) is kept for profiles
    that train with it (``full``). Profiles that train from scratch with a one-cycle schedule (quick,
    smoke) keep their own recipe - learning rate, schedule and, for ``sampler="none"``, their own
    sampler (half-defect batches): with lr 1e-3 cosine ResNet34 was at validation AUC 0.57 after 4 of
    8 quick epochs, and with one-cycle but plain shuffling still at 0.57-0.59 after 5 (measured
    2026-12-03), so SAT and CE were compared on a model that had not learned.
    """
    from_scratch = profile.scheduler == "onecycle"
    if sampler == "none" and from_scratch:
        sampler = profile.sampler
    if sampler in ("bootstrap", "without_replacement") and sampler_per_class is None:
        if not n_train or not n_classes:
            raise ConfigError("a class-balanced sampler needs sampler_per_class (or n_train and n_classes)")
        sampler_per_class = math.ceil(n_train / n_classes)
    return dict(
        arch=STUDY_ARCH, loss=loss, loss_params=dict(loss_params), weights="none",
        epochs=profile.sat_epochs if epochs is None else int(epochs),
        **({"lr": profile.lr, "scheduler": "onecycle"} if from_scratch
           else {"lr": profile.sat_lr, "scheduler": "cosine"}),
        batch_size=STUDY_BATCH_SIZE, eval_test_each_epoch=True, sampler=sampler,
        sampler_per_class=int(sampler_per_class or 0), device=device,
    )


def train_study_run(exp, loss: str, settings: StudySettings | None = None, epochs: int | None = None,
                    sampler: str = "none", sampler_per_class: int | None = None, suffix: str = "",
                    device: str = "auto", overwrite: bool = False):
    """Train (or resume, or load when finished) the study's run of ``loss``; returns a TrainResult."""
    from nexperia_utils.experiment import train_model

    settings = settings or StudySettings()
    n_epochs = exp.profile.sat_epochs if epochs is None else int(epochs)
    params = settings.loss_params(loss, n_epochs, exp.profile, exp.classes)
    n_train = int((exp.split["split"] == "train").sum())
    overrides = study_train_overrides(exp.profile, loss, params, n_epochs, sampler, sampler_per_class,
                                      n_train, len(exp.classes), device)
    log.info("training %s with %s", study_run_name(loss, sampler, suffix), params)
    return train_model(exp, run=study_run_name(loss, sampler, suffix), overwrite=overwrite, **overrides)


def finished_study_runs(exp, losses: Sequence[str] = STUDY_LOSSES, sampler: str = "none",
                        suffix: str = "") -> dict[str, Path]:
    """loss -> run folder, for the losses whose study run has finished (others are logged and left out)."""
    runs = {}
    for loss in losses:
        run_dir = exp.run_dir(study_run_name(loss, sampler, suffix))
        if is_finished(run_dir):
            runs[loss] = run_dir
        else:
            log.info("no finished run for %s in %s", loss, run_dir)
    return runs


def load_history(run_dir: Path) -> pd.DataFrame:
    """The per-epoch history of a run (``history.csv``)."""
    file = history_file(run_dir)
    if not file.exists():
        raise DataError(f"{file} does not exist: train the run first (notebooks/05_sat.ipynb)")
    return pd.read_csv(file)


def evaluate_study(exp, runs: Mapping[str, Path], top_k: int | None = None, device: str = "auto",
                   progress: bool = True) -> pd.DataFrame:
    """Test metrics of the top-k checkpoints of each run (centre crop), with ``loss`` and ``loss_label``."""
    from nexperia_utils.evaluation.predict import evaluate_run

    if not runs:
        raise DataError("no finished study run to evaluate: train at least one loss first (05_sat.ipynb, loss=...)")
    test = exp.part("test")
    frames = []
    for loss, run_dir in runs.items():
        frame = evaluate_run(run_dir, test, crops=["center"], top_k=top_k or exp.profile.top_k, device=device,
                             progress=progress)
        frame["loss"] = loss
        frame["loss_label"] = LOSS_LABELS[loss]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def table4(results: pd.DataFrame) -> pd.DataFrame:
    """Table 4 in the report's shape: rows AUC and FPR at each TPR, one column per loss (report names),
    mean (std) in percent over the evaluated checkpoints, losses in :data:`STUDY_LOSSES` order, then
    the pixel reference when ``results`` hold its row (:func:`nexperia_utils.evaluation.pixel_reference.with_pixel_reference`)."""
    from nexperia_utils.evaluation.pixel_reference import REFERENCE_NAME
    from nexperia_utils.reporting import summary_table

    if "loss_label" not in results.columns:
        raise DataError("table4 needs the column 'loss_label' (results of evaluate_study)")
    present = set(results["loss_label"])
    order = [LOSS_LABELS[l] for l in STUDY_LOSSES if LOSS_LABELS[l] in present]
    order += [REFERENCE_NAME] if REFERENCE_NAME in present else []
    return summary_table(results, columns=("loss_label",), column_order=order)

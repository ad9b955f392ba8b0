"""Named parameter sets ("profiles") shared by the notebooks and the Makefile.

* ``smoke``: the test suite's profile; every notebook runs in seconds on a tiny data set.
* ``quick``: the default of the ``make`` targets; trained from scratch on a 2-core CPU at 128 px on
  30 % of the embedded synthetic data (11,496 images: three times the images beat three times the
  epochs on one third of them) with a recipe chosen by measurement (``docs/LEARNING.md``): AdamW 3e-3
  with a one-cycle schedule, per-image standardisation of the input, horizontal flips and a light
  affine instead of the report's strong affine, half of every batch defects (binary balanced
  sampling), bf16 autocast + channels_last, 12 epochs. 128 px (64 px until 2026-12-07) costs 2.2x the
  training of 64 px and lifts ResNet18's test AUC from 90.0 to 95.8 % (probe #34).
* ``long``: the 64 px quick recipe on all the synthetic images (38,302, the ``full`` profile's data set):
  about three times 64 px quick's training time on the same CPU for 96.3 / 96.4 / 97.9 % test AUC
  (ResNet18 / 34 / 50) instead of 90.0 / 89.0 / 91.1 % at 64 px on 30 % of them (``docs/LEARNING.md``,
  probes #29, #31, #32). At equal compute more images do not help (probe #30); more compute with more
  images does.
* ``full``: the report's settings (section 3.2, 224 px crops, ImageNet weights, 50 epochs); meant for
  a GPU and the real data.

A notebook takes a ``profile`` parameter and explicit parameters override single fields::

    profile = get_profile("quick", epochs=2)
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexperia_utils.errors import ConfigError
from nexperia_utils.validation import check_choice, check_int, check_number

#: Project root: the folder that holds ``nexperia_utils/`` (notebooks resolve paths against it).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def workdir() -> Path:
    """Where ``data/`` and ``outputs/`` live: the project root, or ``$NEXPERIA_WORKDIR`` when set
    (the tests point it at a temporary folder so they never touch the project's own outputs)."""
    override = os.environ.get("NEXPERIA_WORKDIR")
    return Path(override).resolve() if override else PROJECT_ROOT


@dataclass(frozen=True)
class Profile:
    """Every size, schedule and data parameter that differs between profiles."""

    name: str
    #: synthetic data: fraction of the batch-2 class counts that is generated
    data_scale: float
    #: default data root (relative to the project root unless absolute)
    data_dir: str
    #: side of the square model input (the report uses 224)
    image_size: int
    epochs: int
    batch_size: int
    #: "sgd" (the report) or "adamw" (from-scratch profiles: learns faster in few epochs)
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    #: "step" (lr x gamma every step_size epochs, section 3.2) or "cosine" (section 3.7)
    scheduler: str
    step_size: int
    gamma: float
    #: "none" trains from scratch, "imagenet" uses torchvision's weights from the local cache
    weights: str
    #: checkpoints with the best validation AUC that are kept and evaluated (the report: 10)
    top_k: int
    eval_batch_size: int
    num_workers: int
    #: epochs of plain cross entropy before SAT starts (``sat_es``)
    sat_es: int
    #: epochs for the STN models (the report trains them twice as long)
    stn_epochs: int
    #: the SAT / WBCE study (section 3.7): ResNet34 from scratch, cosine schedule
    sat_epochs: int
    sat_lr: float
    seed: int = 0
    #: training augmentation: "report" (section 3.1) or "flip" (light, for short from-scratch runs)
    augmentation: str = "report"
    #: "imagenet" (the report) or "image" (per-image standardisation, see nexperia_utils.models.builders)
    input_norm: str = "imagenet"
    #: training sampler of the plain runs: "none" (shuffle) or "binary" (half good, half defects)
    sampler: str = "none"
    #: bf16 autocast + channels_last for training and inference (CPU and CUDA)
    amp: bool = True
    #: layer the error analysis's Grad-CAM reads: "auto" (``explain.auto_cam_layer``: the deepest map of at least
    #: 7x7, the report's ``layer4`` at 224 px) or one of :data:`CAM_LAYERS`
    cam_layer: str = "auto"

    @property
    def resize_size(self) -> int:
        """Shorter side after resizing, keeping the report's 255 -> 224 ratio."""
        from nexperia_utils.data.transforms import resize_size_for

        return resize_size_for(self.image_size)

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"

    def replace(self, **overrides: Any) -> "Profile":
        """A copy with some fields changed; unknown names raise a ConfigError that lists the valid ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(
                f"unknown profile parameter(s) {unknown}; valid parameters are {sorted(names)}"
            )
        changed = dataclasses.replace(self, **overrides)
        validate_profile(changed)
        return changed

    def data_root(self) -> Path:
        return resolve_path(self.data_dir)

    def outputs_dir(self) -> Path:
        return workdir() / "outputs" / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The layers Grad-CAM can read (``explain.cam_layers``: ResNet stages, VGG blocks) and ``"auto"``.
CAM_LAYERS: tuple[str, ...] = ("auto", "layer1", "layer2", "layer3", "layer4", "block2", "block3", "block4", "block5")

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", data_scale=0.003, data_dir="data/synthetic-smoke", image_size=32, epochs=2,
        batch_size=16, optimizer="adamw", lr=0.003, momentum=0.9, weight_decay=0.05, scheduler="onecycle",
        step_size=14, gamma=0.1, weights="none", top_k=2, eval_batch_size=64, num_workers=0, sat_es=1,
        stn_epochs=2, sat_epochs=2, sat_lr=0.001, augmentation="flip", input_norm="image", sampler="binary",
    ),
    "quick": Profile(
        name="quick", data_scale=0.3, data_dir="data/synthetic", image_size=128, epochs=12,
        batch_size=32, optimizer="adamw", lr=0.003, momentum=0.9, weight_decay=0.05, scheduler="onecycle",
        step_size=14, gamma=0.1, weights="none", top_k=3, eval_batch_size=128, num_workers=1, sat_es=7,
        stn_epochs=12, sat_epochs=16, sat_lr=0.001, augmentation="flip", input_norm="image", sampler="binary",
        # the best Grad-CAM layer of the from-scratch ResNets at 64, 96 and 128 px (LEARNING.md, #34); auto: layer3 at 128 px
        cam_layer="layer2",
    ),
    "full": Profile(
        name="full", data_scale=1.0, data_dir="data/synthetic-full", image_size=224, epochs=50,
        batch_size=32, optimizer="sgd", lr=0.001, momentum=0.9, weight_decay=5e-4, scheduler="step", step_size=14,
        gamma=0.1, weights="imagenet", top_k=10, eval_batch_size=128, num_workers=8, sat_es=90,
        stn_epochs=100, sat_epochs=200, sat_lr=0.01,
    ),
}


def validate_profile(profile: Profile) -> None:
    """Raise a ConfigError naming the first field whose value cannot work."""
    where = f"profile {profile.name!r}:"
    for name in ("image_size", "epochs", "batch_size", "top_k", "eval_batch_size", "stn_epochs", "sat_epochs"):
        check_int(name, getattr(profile, name), 1, where=where)
    if profile.image_size < 32:
        raise ConfigError(f"{where} image_size must be >= 32 (ResNets downsample 32x), got {profile.image_size}")
    check_number("data_scale", profile.data_scale, 0, 1, include_low=False, where=where)
    choices = {"optimizer": ("sgd", "adamw"), "scheduler": ("step", "cosine", "onecycle"),
               "augmentation": ("report", "flip", "none"), "input_norm": ("imagenet", "image"),
               "sampler": ("none", "binary"), "cam_layer": CAM_LAYERS}
    for name, valid in choices.items():
        check_choice(name, getattr(profile, name), valid, where=where)
    for name in ("lr", "sat_lr"):
        check_number(name, getattr(profile, name), 0, include_low=False, where=where)
    check_int("num_workers", profile.num_workers, 0, where=where)


# ``long`` (see the module docstring): the quick recipe at 64 px on the full profile's data set, which is generated once
# (measured before quick moved to 128 px, so it keeps 64 px).
PROFILES["long"] = PROFILES["quick"].replace(name="long", data_scale=PROFILES["full"].data_scale,
                                             data_dir=PROFILES["full"].data_dir, image_size=64)


def get_profile(name: str, **overrides: Any) -> Profile:
    """The named profile with explicit parameters applied; ``None`` values are ignored (notebook defaults)."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[name].replace(**{k: v for k, v in overrides.items() if v is not None})


def resolve_path(path: str | Path) -> Path:
    """A path relative to the work directory (notebooks run with their own folder as working directory)."""
    path = Path(path)
    return path if path.is_absolute() else workdir() / path

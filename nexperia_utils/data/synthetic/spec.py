"""What a synthetic set is: its classes and counts, the look of each batch, the generator's settings."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from nexperia_utils.errors import ConfigError


CLASS_COUNTS_BATCH2: dict[str, int] = {
    "chipping": 3681,
    "device_flip": 135,
    "empty_pocket": 203,
    "foreign_material": 1952,
    "good": 30523,
    "lead_defect": 254,
    "lead_glue": 625,
    "marking_defect": 175,
    "pocket_damage": 5,
    "scratch": 749,
}
"""Image counts per class of the full batch-2 data (38,302 images, 7,779 defects)."""

CLASSES: tuple[str, ...] = tuple(sorted(CLASS_COUNTS_BATCH2))
"""The ten class names in image-folder order (``good`` is index 4; look it up by name)."""

BATCHES: tuple[int, ...] = (2, 3)
"""The production batches the generator renders (batch 2 is the embedded default)."""
BATCH3_NEW_CLASSES: tuple[str, ...] = ("camera_glitch", "tin_particle")
"""Batch 3's classes that batch 2 does not have: tin particles (a foreign-material sub-type filed as
its own class) and the rare camera glitches / cropping issues that are neither good nor defect."""
TIN_SHARE = 0.45
"""Share of batch 3's foreign-material images that bear tin particles (filed as ``tin_particle``)."""
GLITCH_SHARE = 0.004
"""Camera glitches / cropping issues per image of batch 3 (very rare, as in the report)."""

GOOD = "good"
ANNOTATION_COLUMNS: tuple[str, ...] = ("image_id", "label", "true_class", "noisy", "severity", "x", "y", "w", "h",
                                        "visibility", "batch")
VISIBILITY_SIZE = 64
"""Model input size at which the ``visibility`` annotation is measured (the quick profile's until 2026-12-07, the long profile's)."""
ANNOTATIONS_FILE = "annotations.csv"
IMAGE_SUFFIX = ".png"
SEVERITY_BETA: tuple[float, float] = (4.0, 2.0)
"""Beta(a, b) parameters of the per-image defect severity: mostly clear defects (mean 0.67) with a
tail of mild ones (5 % below 0.34). Calibrated by measurement (``docs/LEARNING.md``): with the
earlier Beta(1.1, 1.5) most defects were 1-3 px at 64 px (then the quick profile's size) and no recipe that fits
the CPU budget learned them (test AUC 0.55 after 10 epochs); the real data's best models reach
99.8 % AUC, so most real defects are clear."""
NOISY_SEVERITY_POWER = 2.0
"""Noisy-label choice weight of a defect image is ``(1 - severity) ** power + 0.05``."""
JPEG_QUALITY = 95
ANSWER_KEY_SUFFIX = "-answer-key.csv"
KAGGLE_ENTRIES = frozenset({"train", "test", "submission_sample.csv", "defect_area.csv"})

Box = tuple[int, int, int, int]
"""An image box ``(x, y, w, h)``: top-left corner, width and height in pixels."""
CanvasBox = tuple[float, float, float, float]
"""A box ``(x0, y0, x1, y1)`` in device-canvas pixels."""
Segment = tuple[int, int, int, int]


@dataclass(frozen=True)
class BatchLook:
    """How one production line's camera and carrier tape look: the ranges every image draws from.

    Batch 2's values are the generator's original ones (its images stay byte-identical); batch 3
    has another gain curve (``gamma``), brighter and more variable illumination, more lens blur and
    sensor noise, an embossed tape texture and a fainter device marking.
    """

    gain: tuple[float, float] = (0.78, 1.22)
    offset: tuple[float, float] = (-14.0, 14.0)
    blur: tuple[float, float] = (0.45, 1.15)
    read_noise: tuple[float, float] = (1.2, 4.0)
    shot: tuple[float, float] = (0.0, 0.12)
    gamma: tuple[float, float] | None = None
    """Gain curve ``255 * (v / 255) ** gamma`` after the optics; None: linear (batch 2)."""
    tape_emboss: float = 0.0
    """Amplitude (grey levels) of the tape's embossed stripes; 0: none (batch 2)."""
    marking_contrast: float = 1.0
    """Marking brightness over the body, relative to batch 2's."""


BATCH_LOOKS: dict[int, BatchLook] = {
    2: BatchLook(),
    3: BatchLook(gain=(0.95, 1.4), offset=(-2.0, 22.0), blur=(1.0, 1.7), read_noise=(3.0, 6.0), shot=(0.06, 0.2),
                 gamma=(0.7, 0.85), tape_emboss=7.0, marking_contrast=0.7),
}


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic data set.

    ``scale`` multiplies the batch-2 class counts (0.1 gives about 3,830 images), every class
    keeps at least ``min_per_class`` images; ``noise_fraction`` of the defect images is filed
    under ``good``.
    """

    scale: float = 0.1
    noise_fraction: float = 0.013
    seed: int = 0
    height: int = 267
    width: int = 275
    min_per_class: int = 5
    batch: int = 2

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        if self.batch not in BATCHES:
            raise ConfigError(f"SyntheticConfig.batch={self.batch!r} must be one of {BATCHES}")
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"SyntheticConfig.scale={self.scale!r} must be a positive number "
                              f"(0.1 gives about 3,830 images)")
        if not (0.0 <= float(self.noise_fraction) < 1.0):
            raise ConfigError(f"SyntheticConfig.noise_fraction={self.noise_fraction!r} must be in [0, 1)")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"SyntheticConfig.seed={self.seed!r} must be a non-negative integer")
        if not isinstance(self.min_per_class, (int, np.integer)) or self.min_per_class < 0:
            raise ConfigError(f"SyntheticConfig.min_per_class={self.min_per_class!r} must be a non-negative "
                              f"integer")
        _check_size(self.height, self.width)


def _check_size(height: int, width: int) -> None:
    if not (isinstance(height, (int, np.integer)) and isinstance(width, (int, np.integer))):
        raise ConfigError(f"image size {height!r} x {width!r} must be integers")
    if height < 96 or width < 96 or height > 4096 or width > 4096:
        raise ConfigError(f"image size {height} x {width} (height x width) must lie between 96 and 4096 pixels")


def _round_half_up(value: float) -> int:
    """Round to the nearest integer, halves upwards (13.5 -> 14), robust to float error."""
    return int(math.floor(value + 0.5 + 1e-9))


def batch_classes(batch: int = 2) -> tuple[str, ...]:
    """The class names of ``batch`` in image-folder order (batch 3 adds :data:`BATCH3_NEW_CLASSES`)."""
    if batch not in BATCHES:
        raise ConfigError(f"batch={batch!r} must be one of {BATCHES}")
    return CLASSES if batch == 2 else tuple(sorted(CLASSES + BATCH3_NEW_CLASSES))


def class_counts(scale: float, min_per_class: int = 5, batch: int = 2) -> dict[str, int]:
    """Batch-2 class counts times ``scale``, rounded to nearest (halves up), at least ``min_per_class``.

    Batch 3 files :data:`TIN_SHARE` of the foreign material as ``tin_particle`` and adds
    :data:`GLITCH_SHARE` of the images as ``camera_glitch``.

    >>> class_counts(0.1)["device_flip"], class_counts(0.1)["pocket_damage"]
    (14, 5)
    """
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ConfigError(f"scale={scale!r} must be a positive number")
    if min_per_class < 0:
        raise ConfigError(f"min_per_class={min_per_class!r} must be >= 0")
    full = dict(CLASS_COUNTS_BATCH2)
    if batch == 3:
        foreign = full["foreign_material"]
        full["tin_particle"] = _round_half_up(TIN_SHARE * foreign)
        full["foreign_material"] = foreign - full["tin_particle"]
        full["camera_glitch"] = _round_half_up(GLITCH_SHARE * sum(CLASS_COUNTS_BATCH2.values()))
    return {name: max(int(min_per_class), _round_half_up(full[name] * scale)) for name in batch_classes(batch)}


def image_id(seed: int, index: int, batch: int = 2) -> str:
    """The 32-hex id of image ``index`` of the set generated with ``seed`` (like the Kaggle ids)."""
    tag = f"{int(seed)}:{int(index)}" if batch == 2 else f"batch{int(batch)}:{int(seed)}:{int(index)}"
    return hashlib.md5(f"nexperia-synthetic:{tag}".encode("ascii")).hexdigest()

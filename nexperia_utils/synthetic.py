"""Deterministic synthetic Nexperia-like data set: the project's embedded default data.

Every image is a single-channel 267 x 275 (height x width) top view of a carrier-tape pocket
holding a dark SOT23-like device: a mold body with a printed marking (bright seven-segment
glyphs) and three gull-wing leads (two on one side, one on the other). Pose, lighting, blur and
sensor noise vary per image, so a model must learn invariances. Nine defect classes are local
anomalies drawn with a per-image ``severity`` in [0, 1] (0 = barely visible, 1 = obvious); the
global intensity statistics and the PNG file size do not give the class away (see the tests).

The data set is written in the same layout as the real batch-2 data::

    <root>/<label>/<image_id>.png      one folder per filed label (the label a loader sees)
    <root>/annotations.csv             image_id, label, true_class, noisy, severity, x, y, w, h, visibility, batch

``visibility`` (:func:`defect_visibility`, NaN for ``good``) is model-free: the image and its
defect-free twin rendered from the same seed differ only by the defect; the peak of their difference
at the quick profile's 64 px input, divided by the sensor noise's std there, says how far the defect
stands out of the noise (below about 5: borderline).

A fraction of the defect images is filed under ``good`` (label noise like the real data's human
escapes, mostly mild defects); their true class stays in ``annotations.csv``. Training code
reads only the folders (or ``label``), never ``true_class``.

Completeness: images and ``annotations.csv`` are written into ``<root>.partial-<pid>``, which is
renamed to ``<root>`` only after everything was written, so an interrupted run never leaves a
``<root>`` that looks finished. :func:`is_complete` checks that ``annotations.csv`` is present and
that every file it lists exists.

Determinism: one ``numpy.random.SeedSequence(seed)`` is split into a planning stream (severities,
noisy-label choice) and one child stream per image (``SeedSequence.spawn``), so an image depends
only on the seed, its index and its class, not on the generation order. PNG files are written by
PIL without timestamps: the same seed gives the same bytes.

:func:`export_kaggle` writes a finished set in the layouts of the two Kaggle competitions
(stage 1: JPEG ``good_0``/``bad_1``; stage 2: BMP ``good_all``/``defect`` with
``submission_sample.csv`` and ``defect_area.csv``) with the hidden answer key kept outside the
exported folder, so the whole Kaggle flow can be exercised offline.

Command line::

    python -m nexperia_utils.synthetic --out data/synthetic [--scale 0.1] [--seed 0]
        [--noise-fraction 0.013] [--batch 2|3] [--overwrite] [--kaggle-stage 1|2 --kaggle-out DIR]

Batch 3 (``--batch 3``, :data:`BATCH_LOOKS`): the same ten classes from another line and time
(another gain curve, illumination, lens blur, sensor noise, tape texture and a fainter marking)
plus :data:`BATCH3_NEW_CLASSES`: ``tin_particle`` (foreign material that is tin, its own class) and
the rare ``camera_glitch`` (cropping issues and torn frames: neither good nor defect). Batch 2's
images do not change with it (the ``batch`` annotation column is 2 there).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import logging
import math
import os
import shutil
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy import ndimage
from tqdm.auto import tqdm

from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.io import atomic_write_csv

logger = logging.getLogger(__name__)

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
"""Model input size at which the ``visibility`` annotation is measured (the quick profile's)."""
ANNOTATIONS_FILE = "annotations.csv"
IMAGE_SUFFIX = ".png"
SEVERITY_BETA: tuple[float, float] = (4.0, 2.0)
"""Beta(a, b) parameters of the per-image defect severity: mostly clear defects (mean 0.67) with a
tail of mild ones (5 % below 0.34). Calibrated by measurement (``docs/LEARNING.md``): with the
earlier Beta(1.1, 1.5) most defects were 1-3 px at the quick profile's 64 px and no recipe that fits
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


# --------------------------------------------------------------------------------------------
# Rendering helpers (all geometry in pixels of a 267-pixel-high reference image, times `k`)
# --------------------------------------------------------------------------------------------

_SEGMENTS = "abcdefg"
_GLYPHS: dict[str, str] = {
    "0": "abcdef", "1": "bc", "2": "abdeg", "3": "abcdg", "4": "bcfg", "5": "acdfg", "6": "acdefg",
    "7": "abc", "8": "abcdefg", "9": "abcdfg", "A": "abcefg", "C": "adef", "E": "adefg", "F": "aefg",
    "H": "bcefg", "L": "def", "P": "abefg", "U": "bcdef",
}
_GLYPH_CHARS = tuple(sorted(_GLYPHS))


@dataclass
class _Device:
    """The upright device canvas (device frame) and where its parts lie."""

    value: np.ndarray  # float32 grey values
    alpha: np.ndarray  # float32 coverage in [0, 1]
    body: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in canvas pixels
    leads: list[tuple[float, float, float, float, float]]  # root x, root y, angle (rad), length, width
    lead_sides: list[int]  # +1 lead points down (+y), -1 up
    mark_mask: np.ndarray  # float32 marking coverage on the canvas
    mark_box: tuple[int, int, int, int] | None
    body_level: float
    lead_level: float
    mark_level: float


@dataclass(frozen=True)
class _Pose:
    """Canvas -> image mapping: p_img = R(theta) (q - centre_canvas) + centre_image (x, y order)."""

    theta: float
    canvas_centre: tuple[float, float]
    image_centre: tuple[float, float]

    def to_image(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.theta), math.sin(self.theta)
        dx, dy = np.asarray(xs, float) - self.canvas_centre[0], np.asarray(ys, float) - self.canvas_centre[1]
        return c * dx - s * dy + self.image_centre[0], s * dx + c * dy + self.image_centre[1]


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int, amplitude: float) -> np.ndarray:
    """Low-frequency random field (bicubic upsampling of a coarse normal grid)."""
    h, w = shape
    gh = max(2, int(round(cells * h / max(h, w))) + 1)
    gw = max(2, int(round(cells * w / max(h, w))) + 1)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.BICUBIC), dtype=np.float32)
    return field * np.float32(amplitude)


def _rect_coverage(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, half_l: float, half_w: float,
                   angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased coverage of a rotated rectangle and the along-axis coordinate in [0, 1].

    The rectangle runs from (cx, cy) along ``angle`` for ``2 * half_l`` (its root is at the centre
    of one short side); ``half_w`` is half its width.
    """
    ca, sa = math.cos(angle), math.sin(angle)
    dx, dy = xx - cx, yy - cy
    along = dx * ca + dy * sa
    across = -dx * sa + dy * ca
    dist = np.maximum(np.abs(along - half_l) - half_l, np.abs(across) - half_w)
    coverage = np.clip(0.5 - dist, 0.0, 1.0).astype(np.float32)
    return coverage, np.clip(along / max(2 * half_l, 1e-6), 0.0, 1.0).astype(np.float32)


def _blob_coverage(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, radius: float,
                   rng: np.random.Generator, roughness: float = 0.3, aspect: float = 1.0,
                   angle: float = 0.0) -> np.ndarray:
    """Anti-aliased coverage of an irregular blob (radius modulated by low harmonics)."""
    ca, sa = math.cos(angle), math.sin(angle)
    dx, dy = xx - cx, yy - cy
    u = dx * ca + dy * sa
    v = (-dx * sa + dy * ca) * aspect
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u)
    wobble = np.zeros_like(phi)
    for harmonic in (2, 3, 5):
        wobble += rng.normal(0, roughness / harmonic) * np.cos(harmonic * phi + rng.uniform(0, 2 * np.pi))
    edge = radius * (1.0 + wobble)
    return np.clip(edge - rho + 0.5, 0.0, 1.0).astype(np.float32)


def _local_grid(x0: float, y0: float, x1: float, y1: float, shape: tuple[int, int]
                ) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
    """Pixel-centre grids (index + 0.5) of the integer window covering [x0, x1) x [y0, y1), clipped to ``shape``."""
    h, w = shape
    c0, c1 = max(0, int(math.floor(x0))), min(w, int(math.ceil(x1)))
    r0, r1 = max(0, int(math.floor(y0))), min(h, int(math.ceil(y1)))
    if c1 <= c0 or r1 <= r0:
        return None
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32) + np.float32(0.5)
    return slice(r0, r1), slice(c0, c1), xx, yy


def _box_from_points(xs: Sequence[float], ys: Sequence[float], height: int, width: int, pad: float = 1.0) -> Box:
    """Integer (x, y, w, h) box around points, padded and clipped to the image (w, h >= 1)."""
    x0 = int(math.floor(max(0.0, min(xs) - pad)))
    y0 = int(math.floor(max(0.0, min(ys) - pad)))
    x1 = int(math.ceil(min(float(width), max(xs) + pad)))
    y1 = int(math.ceil(min(float(height), max(ys) + pad)))
    x0, y0 = min(x0, width - 1), min(y0, height - 1)
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def _canvas_box_to_image(pose: _Pose, box: CanvasBox, height: int, width: int,
                         pad: float = 1.5) -> Box:
    x0, y0, x1, y1 = box
    xs, ys = pose.to_image(np.array([x0, x1, x1, x0]), np.array([y0, y0, y1, y1]))
    return _box_from_points(list(xs), list(ys), height, width, pad)


def _draw_marking(shape: tuple[int, int], body: tuple[int, int, int, int], k: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, Segment, list[list[Segment]]]:
    """Seven-segment marking glyphs centred on the body; returns mask, box and per-glyph segments."""
    mask = np.zeros(shape, np.float32)
    n_glyphs = int(rng.integers(3, 5))
    gw, gh = max(4, round(12 * k)), max(7, round(20 * k))
    stroke = max(1, round(rng.uniform(1.6, 2.6) * k))
    gap = max(2, round(6 * k))
    total_w = n_glyphs * gw + (n_glyphs - 1) * gap
    bx0, by0, bx1, by1 = body
    x_start = int(round((bx0 + bx1 - total_w) / 2 + rng.uniform(-4, 4) * k))
    y_start = int(round((by0 + by1 - gh) / 2 + rng.uniform(-3, 3) * k))
    half = gh // 2
    glyph_segments: list[list[tuple[int, int, int, int]]] = []
    for i in range(n_glyphs):
        char = _GLYPH_CHARS[int(rng.integers(len(_GLYPH_CHARS)))]
        gx = x_start + i * (gw + gap)
        rects = {
            "a": (gx, y_start, gx + gw, y_start + stroke),
            "b": (gx + gw - stroke, y_start, gx + gw, y_start + half + 1),
            "c": (gx + gw - stroke, y_start + half, gx + gw, y_start + gh),
            "d": (gx, y_start + gh - stroke, gx + gw, y_start + gh),
            "e": (gx, y_start + half, gx + stroke, y_start + gh),
            "f": (gx, y_start, gx + stroke, y_start + half + 1),
            "g": (gx, y_start + half - stroke // 2, gx + gw, y_start + half - stroke // 2 + stroke),
        }
        segs = [rects[s] for s in _GLYPHS[char]]
        for x0, y0, x1, y1 in segs:
            mask[y0:y1, x0:x1] = 1.0
        glyph_segments.append(segs)
    box = (x_start, y_start, x_start + total_w, y_start + gh)
    return mask, box, glyph_segments


def _lead_profile(t: np.ndarray, flipped: bool) -> np.ndarray:
    """Brightness profile along a gull-wing lead (0 = root at the body, 1 = tip)."""
    if flipped:  # seen from below: the feet point away from the camera, dull and uniform
        return (0.75 - 0.25 * t).astype(np.float32)
    shoulder = 0.95 - 0.1 * t
    bend = np.exp(-((t - 0.42) ** 2) / (2 * 0.07 ** 2))
    return (shoulder - 0.4 * bend).astype(np.float32)


def _paint_lead(dev: _Device, root_x: float, root_y: float, angle: float, length: float, width: float,
                level: float, flipped: bool) -> None:
    pad = width + 2
    xs = [root_x, root_x + length * math.cos(angle)]
    ys = [root_y, root_y + length * math.sin(angle)]
    grid = _local_grid(min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad, dev.value.shape)
    if grid is None:
        return
    rs, cs, xx, yy = grid
    cov, t = _rect_coverage(xx, yy, root_x, root_y, length / 2, width / 2, angle)
    val = level * _lead_profile(t, flipped)
    dev.value[rs, cs] = dev.value[rs, cs] * (1 - cov) + val * cov
    dev.alpha[rs, cs] = np.maximum(dev.alpha[rs, cs], cov)


def _build_device(rng: np.random.Generator, defect_rng: np.random.Generator, k: float, flipped: bool,
                  flip_strength: float) -> _Device:
    """Render the upright device: leads, mold body (bevel, texture) and marking."""
    body_w, body_h = round(rng.uniform(130, 140) * k), round(rng.uniform(64, 72) * k)
    lead_len, lead_w = rng.uniform(24, 29) * k, rng.uniform(14, 17) * k
    margin = round(42 * k)
    cw, ch = body_w + 2 * margin, body_h + 2 * margin
    value = np.zeros((ch, cw), np.float32)
    alpha = np.zeros((ch, cw), np.float32)
    bx0, by0 = margin, margin
    body = (bx0, by0, bx0 + body_w, by0 + body_h)
    body_level = rng.uniform(32, 62)
    lead_level = rng.uniform(165, 225)
    mark_level = body_level + rng.uniform(70, 125)
    dev = _Device(value, alpha, body, [], [], np.zeros_like(value), None, body_level, lead_level, mark_level)

    # Leads: two on one side, one on the other; a flipped device is seen from below, optionally
    # mirrored top/bottom, so the two-lead side may swap.
    two_side = 1
    if flipped and defect_rng.random() < 0.5:
        two_side = -1
    lead_pitch = rng.uniform(44, 48) * k
    cx = (body[0] + body[2]) / 2
    length_factor = 1.0 - 0.3 * flip_strength if flipped else 1.0
    for offset, side in ((-lead_pitch, two_side), (lead_pitch, two_side), (rng.uniform(-2, 2) * k, -two_side)):
        rx = cx + offset + rng.normal(0, 0.5) * k
        ry = body[3] - 2 * k if side > 0 else body[1] + 2 * k
        angle = (math.pi / 2 if side > 0 else -math.pi / 2) + rng.normal(0, 0.015)
        length = (lead_len + rng.normal(0, 0.6) * k + 2 * k) * length_factor
        width = lead_w + rng.normal(0, 0.4) * k
        dev.leads.append((rx, ry, angle, length, width))
        dev.lead_sides.append(side)
    return dev


def _paint_body(dev: _Device, rng: np.random.Generator, defect_rng: np.random.Generator, k: float, flipped: bool,
                flip_strength: float) -> None:
    """Mold body with bevel rim and mottling; a flipped body is lighter, coarser, with ejector-pin marks."""
    x0, y0, x1, y1 = dev.body
    h, w = y1 - y0, x1 - x0
    level = dev.body_level
    texture_amp = 2.0
    if flipped:
        level += flip_strength * defect_rng.uniform(22, 45)
        texture_amp = 2.0 + 3.5 * flip_strength
        dev.body_level = level
    block = np.full((h, w), level, np.float32)
    block += _smooth_field(rng, (h, w), 6, texture_amp)
    block += rng.normal(0, 0.8 + (1.5 * flip_strength if flipped else 0.0), (h, w)).astype(np.float32)
    rim = max(2, round(3 * k))
    light = rng.uniform(6, 14)
    block[:rim, :] += light
    block[:, :rim] += 0.6 * light
    block[-rim:, :] -= 0.5 * light
    block[:, -rim:] -= 0.3 * light
    if flipped:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + np.float32(0.5)
        for fx in (0.25, 0.75):
            r = defect_rng.uniform(7, 10) * k
            d = np.hypot(xx - fx * w, yy - 0.5 * h + defect_rng.normal(0, 1.5) * k)
            ring = np.clip(r - d + 0.5, 0, 1)
            block += (ring * defect_rng.uniform(-10, 10) * flip_strength).astype(np.float32)
    dev.value[y0:y1, x0:x1] = block
    dev.alpha[y0:y1, x0:x1] = 1.0


def _paint_marking(dev: _Device, mask: np.ndarray) -> None:
    dev.value[:] = dev.value * (1 - mask) + dev.mark_level * mask


def _warp(dev: _Device, pose: _Pose, height: int, width: int
          ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Bilinear warp of the canvas (premultiplied value and alpha) into its image window."""
    ch, cw = dev.alpha.shape
    xs, ys = pose.to_image(np.array([0, cw, cw, 0]), np.array([0, 0, ch, ch]))
    c0, c1 = max(0, int(math.floor(xs.min())) - 1), min(width, int(math.ceil(xs.max())) + 1)
    r0, r1 = max(0, int(math.floor(ys.min())) - 1), min(height, int(math.ceil(ys.max())) + 1)
    if c1 <= c0 or r1 <= r0:
        return None
    # PIL maps the continuous output point (x, y) (pixel centres at +0.5) to the input point
    # (a x + b y + c, d x + e y + f): here canvas = R(-theta) (image - image_centre) + canvas_centre.
    cos, sin = math.cos(pose.theta), math.sin(pose.theta)
    ox, oy = c0 - pose.image_centre[0], r0 - pose.image_centre[1]
    coeffs = (cos, sin, cos * ox + sin * oy + pose.canvas_centre[0],
              -sin, cos, -sin * ox + cos * oy + pose.canvas_centre[1])
    size = (c1 - c0, r1 - r0)

    def warp(layer: np.ndarray) -> np.ndarray:
        image = Image.fromarray(np.ascontiguousarray(layer, dtype=np.float32), mode="F")
        return np.asarray(image.transform(size, Image.AFFINE, coeffs, resample=Image.BILINEAR), dtype=np.float32)

    prem = warp(dev.value * dev.alpha)
    alpha = np.clip(warp(dev.alpha), 0.0, 1.0)
    return (slice(r0, r1), slice(c0, c1)), prem, alpha


@dataclass
class _Pocket:
    centre: tuple[float, float]
    half: tuple[float, float]
    radius: float
    wall: float


def _pocket_sdf(xx: np.ndarray, yy: np.ndarray, pocket: _Pocket) -> np.ndarray:
    """Signed distance to the pocket's inner rounded rectangle (negative inside)."""
    qx = np.abs(xx - pocket.centre[0]) - (pocket.half[0] - pocket.radius)
    qy = np.abs(yy - pocket.centre[1]) - (pocket.half[1] - pocket.radius)
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    inside = np.minimum(np.maximum(qx, qy), 0)
    return outside + inside - pocket.radius


def _render_background(rng: np.random.Generator, height: int, width: int, k: float, levels: "_Levels",
                       pocket: _Pocket, dent: tuple[float, float, float, float] | None,
                       look: BatchLook = BATCH_LOOKS[2]) -> np.ndarray:
    """Carrier tape: bright tape surface, sloped lit walls, pocket floor with a recess and a hole."""
    floor, tape = levels.floor, levels.tape
    xx = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
    yy = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    sdf = _pocket_sdf(xx, yy, pocket)
    if dent is not None:  # pocket damage: the wall is pushed inwards around (dx, dy)
        dx, dy, depth, sigma = dent
        sdf = sdf + depth * np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * sigma ** 2))
    wall_t = np.clip(sdf * (1.0 / pocket.wall), 0.0, 1.0)
    light_angle = rng.uniform(0, 2 * np.pi)
    nx = (xx - pocket.centre[0]) / pocket.half[0]
    ny = (yy - pocket.centre[1]) / pocket.half[1]
    facing = (nx * math.cos(light_angle) + ny * math.sin(light_angle)) / np.maximum(np.hypot(nx, ny), 1e-3)
    wall_light = rng.uniform(10, 28)
    # sin(pi t) is zero outside the wall band (t clipped to 0 or 1): the lit/shaded slope.
    img = floor + (tape - floor) * wall_t + (wall_light * facing) * np.sin(np.pi * wall_t)
    img += _smooth_field(rng, (height, width), 7, rng.uniform(2.0, 5.0))
    tape_grain = _smooth_field(rng, (height, width), 30, rng.uniform(1.0, 3.0))
    img += tape_grain * (sdf > pocket.wall)
    if look.tape_emboss:  # another tape supplier: fine embossed stripes on the tape surface
        period, ang = rng.uniform(5.0, 8.0) * k, rng.uniform(0, np.pi)
        stripes = np.sin(2 * np.pi * (xx * math.cos(ang) + yy * math.sin(ang)) / period)
        img += look.tape_emboss * stripes * (sdf > pocket.wall)
    # Recessed floor step and centre hole of the pocket, both hidden under a present device body.
    recess = _Pocket(centre=pocket.centre, half=(rng.uniform(44, 52) * k, rng.uniform(15, 19) * k),
                     radius=rng.uniform(3, 7) * k, wall=rng.uniform(2.0, 3.5) * k)
    grid = _local_grid(recess.centre[0] - recess.half[0] - 2, recess.centre[1] - recess.half[1] - 2,
                       recess.centre[0] + recess.half[0] + 2, recess.centre[1] + recess.half[1] + 2, (height, width))
    if grid is not None:
        rs, cs, gx, gy = grid
        t = np.clip(-_pocket_sdf(gx, gy, recess) / recess.wall, 0.0, 1.0)
        edge = np.sin(np.pi * t) * np.sign(gy - recess.centre[1]) * math.copysign(1.0, math.sin(light_angle))
        img[rs, cs] += levels.recess * t + rng.uniform(6, 14) * edge
    hr = rng.uniform(8, 11) * k
    grid = _local_grid(pocket.centre[0] - hr - 2, pocket.centre[1] - hr - 2, pocket.centre[0] + hr + 2,
                       pocket.centre[1] + hr + 2, (height, width))
    if grid is not None:
        rs, cs, gx, gy = grid
        hole = np.clip(hr - np.hypot(gx - pocket.centre[0], gy - pocket.centre[1]) + 0.5, 0, 1)
        img[rs, cs] = img[rs, cs] * (1 - hole) + levels.hole * hole
    return img.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Defects
# --------------------------------------------------------------------------------------------

def _defect_chipping(dev: _Device, rng: np.random.Generator, k: float, severity: float) -> CanvasBox:
    """Chip off a body corner or edge: lighter rough fracture surface, the outermost part missing."""
    x0, y0, x1, y1 = dev.body
    if rng.random() < 0.6:
        cx, cy = (x0, x1)[int(rng.integers(2))], (y0, y1)[int(rng.integers(2))]
    else:
        if rng.random() < 0.5:
            cx, cy = rng.uniform(x0 + 8 * k, x1 - 8 * k), (y0, y1)[int(rng.integers(2))]
        else:
            cx, cy = (x0, x1)[int(rng.integers(2))], rng.uniform(y0 + 8 * k, y1 - 8 * k)
    radius = (4.0 + 15.0 * severity) * k
    grid = _local_grid(cx - 2 * radius, cy - 2 * radius, cx + 2 * radius, cy + 2 * radius, dev.value.shape)
    assert grid is not None
    rs, cs, xx, yy = grid
    in_body = ((xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)).astype(np.float32)
    chip = _blob_coverage(xx, yy, cx, cy, radius, rng, roughness=0.35, aspect=rng.uniform(0.7, 1.4),
                          angle=rng.uniform(0, np.pi)) * in_body
    core = _blob_coverage(xx, yy, cx, cy, radius * rng.uniform(0.3, 0.6), rng, roughness=0.3) * in_body
    fracture = dev.body_level + (14 + 50 * severity) * rng.uniform(0.8, 1.2)
    rough = rng.normal(0, 3 + 5 * severity, chip.shape).astype(np.float32)
    val, alp = dev.value[rs, cs], dev.alpha[rs, cs]
    val[:] = val * (1 - chip) + (fracture + rough) * chip
    lead_cover = np.zeros_like(core)
    for rx, ry, ang, ln, wd in dev.leads:
        cov, _ = _rect_coverage(xx, yy, rx, ry, ln / 2, wd / 2, ang)
        lead_cover = np.maximum(lead_cover, cov)
    alp[:] = alp * (1 - core * (1 - lead_cover) * min(1.0, 0.4 + severity))
    ys, xs = np.nonzero(chip > 0.25)
    if len(xs) == 0:
        return cx - 1, cy - 1, cx + 1, cy + 1
    return xs.min() + cs.start, ys.min() + rs.start, xs.max() + cs.start + 1, ys.max() + rs.start + 1


def _defect_lead(dev: _Device, rng: np.random.Generator, k: float, severity: float
                 ) -> tuple[int, tuple[float, float, float, float, float]]:
    """Bend, shorten or remove one lead; returns its index and new (x, y, angle, length, width)."""
    i = int(rng.integers(len(dev.leads)))
    rx, ry, ang, ln, wd = dev.leads[i]
    mode = rng.choice(["bent", "short", "missing"], p=[0.55, 0.3, 0.15] if severity > 0.6 else [0.65, 0.35, 0.0])
    if mode == "bent":
        ang = ang + rng.choice([-1, 1]) * math.radians(6 + 30 * severity)
        if rng.random() < 0.5:  # bent out of plane as well: looks shorter or longer from above
            ln *= rng.uniform(0.85, 1.05)
    elif mode == "short":
        ln *= 1.0 - (0.2 + 0.6 * severity)
    else:
        ln = 2.5 * k  # broken off: only a stub at the body
    new = (rx, ry, ang, ln, wd)
    dev.leads[i] = new
    return i, new


def _defect_glue(dev: _Device, rng: np.random.Generator, k: float, severity: float) -> CanvasBox:
    """A translucent glue blob with a specular highlight on or next to one lead."""
    rx, ry, ang, ln, wd = dev.leads[int(rng.integers(len(dev.leads)))]
    t = rng.uniform(0.05, 0.9)
    cx = rx + t * ln * math.cos(ang) + rng.normal(0, wd * 0.25)
    cy = ry + t * ln * math.sin(ang) + rng.normal(0, 1.5 * k)
    radius = (3.5 + 9.0 * severity) * k
    grid = _local_grid(cx - 2 * radius, cy - 2 * radius, cx + 2 * radius, cy + 2 * radius, dev.value.shape)
    assert grid is not None
    rs, cs, xx, yy = grid
    blob = _blob_coverage(xx, yy, cx, cy, radius, rng, roughness=0.2, aspect=rng.uniform(0.7, 1.5),
                          angle=rng.uniform(0, np.pi))
    opacity = 0.45 + 0.45 * severity
    glue = rng.uniform(85, 140)
    dome = np.clip(1 - np.hypot(xx - cx, yy - cy) / max(radius, 1e-3), 0, 1)
    hx, hy = cx - 0.3 * radius, cy - 0.3 * radius
    highlight = np.exp(-((xx - hx) ** 2 + (yy - hy) ** 2) / (2 * (0.2 * radius + 0.6) ** 2))
    tone = glue + 12 * dome + 60 * severity * highlight
    cov = blob * opacity
    val, alp = dev.value[rs, cs], dev.alpha[rs, cs]
    # Where the glue lies on the pocket floor (no device under it) it is drawn over the floor.
    val[:] = np.where(alp > 0, val * (1 - cov) + tone * cov, tone)
    alp[:] = np.maximum(alp, cov)
    ys, xs = np.nonzero(blob > 0.25)
    return xs.min() + cs.start, ys.min() + rs.start, xs.max() + cs.start + 1, ys.max() + rs.start + 1


def _defect_marking(mask: np.ndarray, segments: list[list[Segment]],
                    rng: np.random.Generator, k: float, severity: float) -> tuple[np.ndarray, float]:
    """Missing, partly missing, smeared or faint marking; returns the new mask and a contrast."""
    mode = rng.choice(["missing", "partial", "smeared", "faint"],
                      p=[0.3, 0.3, 0.25, 0.15] if severity > 0.5 else [0.0, 0.5, 0.3, 0.2])
    contrast = 1.0
    new = mask.copy()
    if mode == "missing":
        new[:] = 0.0
    elif mode == "partial":
        all_segs = [seg for glyph in segments for seg in glyph]
        n_erase = max(1, int(round(severity * len(all_segs) * 0.6)))
        if rng.random() < 0.5 and severity > 0.3:  # whole glyphs missing
            for g in rng.choice(len(segments), size=min(len(segments), max(1, n_erase // 4)), replace=False):
                for x0, y0, x1, y1 in segments[int(g)]:
                    new[y0:y1, x0:x1] = 0.0
        else:
            for s in rng.choice(len(all_segs), size=min(len(all_segs), n_erase), replace=False):
                x0, y0, x1, y1 = all_segs[int(s)]
                new[y0:y1, x0:x1] = 0.0
    elif mode == "smeared":
        sigma = (0.8 + 2.5 * severity) * k
        shift = rng.normal(0, 1.0 + 2.0 * severity, size=2) * k
        new = ndimage.gaussian_filter(ndimage.shift(mask, shift, order=1), (sigma * 0.5, sigma * 1.6))
        new = np.clip(new * rng.uniform(1.0, 1.6), 0, 1).astype(np.float32)
        contrast = 1.0 - 0.4 * severity
    else:
        contrast = 0.65 - 0.45 * severity
    return new.astype(np.float32), contrast


def _defect_scratch(dev: _Device, rng: np.random.Generator, k: float, severity: float) -> CanvasBox:
    """A thin, slightly curved line across the body (mostly bright), fading at both ends."""
    x0, y0, x1, y1 = dev.body
    length = (15 + 85 * severity) * k
    cx, cy = rng.uniform(x0 + 10 * k, x1 - 10 * k), rng.uniform(y0 + 8 * k, y1 - 8 * k)
    ang = rng.uniform(0, np.pi)
    bend = rng.normal(0, 0.15)
    n = 9
    ts = np.linspace(-0.5, 0.5, n)
    px = cx + ts * length * math.cos(ang) - bend * length * (ts ** 2 - 0.25) * math.sin(ang)
    py = cy + ts * length * math.sin(ang) + bend * length * (ts ** 2 - 0.25) * math.cos(ang)
    layer = Image.new("L", (dev.value.shape[1], dev.value.shape[0]), 0)
    draw = ImageDraw.Draw(layer)
    width = max(1, int(round((1.0 + 1.2 * severity) * k)))
    for i in range(n - 1):
        strength = math.sin(math.pi * (i + 0.5) / (n - 1)) ** 0.5 * rng.uniform(0.6, 1.0)
        draw.line([(px[i], py[i]), (px[i + 1], py[i + 1])], fill=int(255 * strength), width=width)
    line = np.asarray(layer, np.float32) / 255.0
    line = ndimage.gaussian_filter(line, 0.4)
    body_mask = np.zeros_like(line)
    body_mask[y0:y1, x0:x1] = 1.0
    line *= body_mask
    contrast = (35 + 75 * severity) * (1 if rng.random() < 0.85 else -0.4)
    dev.value[:] = dev.value + contrast * line
    ys, xs = np.nonzero(line > 0.1)
    if len(xs) == 0:
        return cx - 1, cy - 1, cx + 1, cy + 1
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _draw_particles(img: np.ndarray, rng: np.random.Generator, k: float, severity: float,
                    spots: list[tuple[float, float, float]]) -> tuple[list[float], list[float]]:
    """Foreign particles and fibres at image positions ``(x, y, local level)``."""
    xs_box: list[float] = []
    ys_box: list[float] = []
    height, width = img.shape
    for x, y, local in spots:
        bright = local < 110 or rng.random() < 0.3
        target = rng.uniform(150, 235) if bright else rng.uniform(10, 45)
        strength = 0.35 + 0.65 * severity
        if rng.random() < 0.3:  # fibre
            length = (8 + 35 * severity) * k
            ang = rng.uniform(0, np.pi)
            pts = []
            for t in np.linspace(-0.5, 0.5, 6):
                wiggle = rng.normal(0, 1.2) * k
                pts.append((x + t * length * math.cos(ang) - wiggle * math.sin(ang),
                            y + t * length * math.sin(ang) + wiggle * math.cos(ang)))
            bx0, by0 = min(p[0] for p in pts) - 3, min(p[1] for p in pts) - 3
            bx1, by1 = max(p[0] for p in pts) + 3, max(p[1] for p in pts) + 3
            grid = _local_grid(bx0, by0, bx1, by1, img.shape)
            if grid is None:
                continue
            rs, cs, _, _ = grid
            layer = Image.new("L", (cs.stop - cs.start, rs.stop - rs.start), 0)
            ImageDraw.Draw(layer).line([(px - cs.start, py - rs.start) for px, py in pts], fill=255,
                                       width=max(1, int(round(k))))
            cov = ndimage.gaussian_filter(np.asarray(layer, np.float32) / 255.0, 0.5) * strength
        else:
            radius = (1.5 + 5.5 * severity) * k * rng.uniform(0.7, 1.3)
            reach = 2 * radius + 2
            grid = _local_grid(x - reach, y - reach, x + reach, y + reach, img.shape)
            if grid is None:
                continue
            rs, cs, xx, yy = grid
            cov = _blob_coverage(xx, yy, x, y, radius, rng, roughness=0.45, aspect=rng.uniform(0.6, 1.6),
                                 angle=rng.uniform(0, np.pi)) * strength
        img[rs, cs] = img[rs, cs] * (1 - cov) + target * cov
        ys, xs = np.nonzero(cov > 0.1)
        if len(xs):
            xs_box += [xs.min() + cs.start, xs.max() + cs.start + 1]
            ys_box += [ys.min() + rs.start, ys.max() + rs.start + 1]
    if not xs_box:  # every particle fell outside the image: should not happen, keep a valid box
        x, y, _ = spots[0]
        xs_box, ys_box = [min(max(x, 0), width - 1)], [min(max(y, 0), height - 1)]
    return xs_box, ys_box


def _draw_tin(img: np.ndarray, rng: np.random.Generator, k: float, severity: float,
              spots: list[tuple[float, float, float]]) -> tuple[list[float], list[float]]:
    """Tin particles at ``spots``: small solder beads, grey metal with a dark rim and a specular highlight.

    Unlike batch 2's particles (flat bright or dark blobs and fibres) every bead is a shaded sphere lit
    from one side, and they come in small groups.
    """
    xs_box: list[float] = []
    ys_box: list[float] = []
    light = rng.uniform(0, 2 * np.pi)
    for x, y, _ in spots:
        for _bead in range(1 + int(rng.integers(0, 4))):
            bx, by = x + rng.normal(0, 3.0 * k), y + rng.normal(0, 3.0 * k)
            radius = (1.6 + 3.4 * severity) * k * rng.uniform(0.75, 1.25)
            grid = _local_grid(bx - radius - 2, by - radius - 2, bx + radius + 2, by + radius + 2, img.shape)
            if grid is None:
                continue
            rs, cs, xx, yy = grid
            dist = np.hypot(xx - bx, yy - by)
            cov = np.clip(radius - dist + 0.5, 0.0, 1.0) * (0.45 + 0.55 * severity)
            hx, hy = bx + 0.4 * radius * math.cos(light), by + 0.4 * radius * math.sin(light)
            highlight = np.exp(-((xx - hx) ** 2 + (yy - hy) ** 2) / (2 * (0.3 * radius) ** 2))
            rim = np.clip(dist / max(radius, 1e-3), 0.0, 1.0) ** 4
            level = rng.uniform(95, 135) * (1 - 0.6 * rim) + (252 - 95) * highlight
            img[rs, cs] = img[rs, cs] * (1 - cov) + level * cov
            rows, cols = np.nonzero(cov > 0.1)
            if len(cols):
                xs_box += [cols.min() + cs.start, cols.max() + cs.start + 1]
                ys_box += [rows.min() + rs.start, rows.max() + rs.start + 1]
    if not xs_box:  # every bead fell outside the image: keep a valid box
        x, y, _ = spots[0]
        xs_box, ys_box = [x], [y]
    return xs_box, ys_box


def _pocket_damage(rng: np.random.Generator, pocket: _Pocket, k: float, severity: float
                   ) -> tuple[tuple[float, float, float, float], tuple[float, float]]:
    """A dent of the pocket wall: (x, y, depth, sigma) and the inward direction."""
    side = int(rng.integers(4))
    cx, cy = pocket.centre
    hx, hy = pocket.half
    if side in (0, 1):  # top / bottom wall
        x = cx + rng.uniform(-0.7, 0.7) * hx
        y = cy + (-hy if side == 0 else hy)
        inward = (0.0, 1.0 if side == 0 else -1.0)
    else:
        x = cx + (-hx if side == 2 else hx)
        y = cy + rng.uniform(-0.7, 0.7) * hy
        inward = (1.0 if side == 2 else -1.0, 0.0)
    depth = (3.0 + 13.0 * severity) * k
    sigma = (4.0 + 9.0 * severity) * k
    return (x, y, depth, sigma), inward


def _draw_crack(img: np.ndarray, rng: np.random.Generator, k: float, severity: float, x: float, y: float,
                inward: tuple[float, float], reach: float) -> tuple[list[float], list[float]]:
    """Jagged crease lines from the dented wall into the pocket."""
    xs_box, ys_box = [x], [y]
    height, width = img.shape
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    n_lines = 1 + int(rng.integers(0, 2 + int(2 * severity)))
    for _ in range(n_lines):
        px, py = x + rng.normal(0, 3) * k, y + rng.normal(0, 3) * k
        pts = [(px, py)]
        steps = 3 + int(rng.integers(0, 3))
        for _ in range(steps):
            step = reach / steps * rng.uniform(0.6, 1.3)
            px += inward[0] * step + rng.normal(0, 0.35) * step
            py += inward[1] * step + rng.normal(0, 0.35) * step
            pts.append((px, py))
        draw.line(pts, fill=int(255 * (0.4 + 0.6 * severity)), width=max(1, int(round(k))))
        xs_box += [p[0] for p in pts]
        ys_box += [p[1] for p in pts]
    crack = ndimage.gaussian_filter(np.asarray(layer, np.float32) / 255.0, 0.5)
    tone = rng.choice([-1.0, 1.0]) * (25 + 45 * severity)
    img += tone * crack
    return xs_box, ys_box


# --------------------------------------------------------------------------------------------
# Public rendering
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Levels:
    """Grey levels of the carrier tape scene before the camera model."""

    floor: float
    tape: float
    recess: float
    hole: float


def _scene_levels(rng: np.random.Generator, defect_rng: np.random.Generator, true_class: str,
                  severity: float) -> _Levels:
    """Pocket floor, tape, floor-recess and hole levels.

    An empty pocket lacks the dark device and a flipped device is lighter; both would shift the
    global mean and lower the global contrast, so their pockets are drawn darker with a brighter
    tape (the ranges overlap those of good images), keeping single-pixel statistics uninformative.
    """
    floor = rng.uniform(88, 150)
    tape_delta = rng.uniform(15, 60)
    recess = -rng.uniform(8, 30)
    hole = floor * rng.uniform(0.25, 0.45)
    if true_class == "empty_pocket":
        floor -= defect_rng.uniform(10, 32)
        tape_delta += defect_rng.uniform(20, 50)
        hole = floor * (0.75 - 0.45 * severity)
    elif true_class == "device_flip":
        strength = 0.35 + 0.65 * severity
        tape_delta += defect_rng.uniform(5, 25) * strength
        floor -= defect_rng.uniform(2, 18) * strength
    return _Levels(floor=floor, tape=floor + tape_delta, recess=recess, hole=hole)


def _render_device(img: np.ndarray, rng: np.random.Generator, defect_rng: np.random.Generator, true_class: str,
                   severity: float, k: float, centre: tuple[float, float], theta: float,
                   marking_contrast: float = 1.0) -> tuple[Box | None, _Device, _Pose]:
    """Draw the device (with its defect, if any) onto ``img``; returns the defect box.

    ``rng`` draws the device itself in the same order for every class; everything that depends
    on the class comes from ``defect_rng``, so a defect image and a good image rendered from the
    same generator state show the same device.
    """
    height, width = img.shape
    flipped = true_class == "device_flip"
    flip_strength = 0.35 + 0.65 * severity if flipped else 0.0
    dev = _build_device(rng, defect_rng, k, flipped, flip_strength)
    ch, cw = dev.alpha.shape
    pose = _Pose(theta, (cw / 2, ch / 2), centre)
    defect_box: CanvasBox | None = None
    if true_class == "lead_defect":
        nominal = list(dev.leads)
        i, (rx, ry, ang, ln, wd) = _defect_lead(dev, defect_rng, k, severity)
        ox, oy, oang, oln, owd = nominal[i]
        pts_x = [ox, ox + oln * math.cos(oang), rx + ln * math.cos(ang)]
        pts_y = [oy, oy + oln * math.sin(oang), ry + ln * math.sin(ang)]
        half_w = max(wd, owd) / 2 + 1
        defect_box = (min(pts_x) - half_w, min(pts_y) - 1, max(pts_x) + half_w, max(pts_y) + 1)
    for rx, ry, ang, ln, wd in dev.leads:
        _paint_lead(dev, rx, ry, ang, ln, wd, dev.lead_level * rng.uniform(0.93, 1.05), flipped)
    _paint_body(dev, rng, defect_rng, k, flipped, flip_strength)
    mask, (mx0, my0, mx1, my1), segments = _draw_marking(dev.value.shape, dev.body, k, rng)
    if not flipped:  # a flipped device shows its unmarked underside
        contrast = 1.0
        if true_class == "marking_defect":
            mask, contrast = _defect_marking(mask, segments, defect_rng, k, severity)
            defect_box = (mx0 - 3 * k, my0 - 3 * k, mx1 + 3 * k, my1 + 3 * k)
        dev.mark_level = dev.body_level + (dev.mark_level - dev.body_level) * (contrast * marking_contrast)
        _paint_marking(dev, mask)
    if true_class == "chipping":
        defect_box = _defect_chipping(dev, defect_rng, k, severity)
    elif true_class == "lead_glue":
        defect_box = _defect_glue(dev, defect_rng, k, severity)
    elif true_class == "scratch":
        defect_box = _defect_scratch(dev, defect_rng, k, severity)
    elif flipped:  # the whole device is the defect
        xs = [dev.body[0], dev.body[2]] + [rx + ln * math.cos(a) for rx, _, a, ln, _ in dev.leads]
        ys = [dev.body[1], dev.body[3]] + [ry + ln * math.sin(a) for _, ry, a, ln, _ in dev.leads]
        defect_box = (min(xs), min(ys), max(xs), max(ys))

    shift = (int(round(rng.uniform(1, 4) * k)), int(round(rng.uniform(1, 4) * k)))
    shadow_strength = rng.uniform(0.15, 0.35)
    warped = _warp(dev, pose, height, width)
    if warped is not None:
        (rs, cs), prem, alpha = warped
        # Soft drop shadow on the floor; the window has empty canvas margins, so the roll wraps zeros.
        shadow = np.roll(ndimage.gaussian_filter(alpha, 3.0 * k, truncate=3.0), shift, axis=(0, 1))
        region = img[rs, cs] * (1 - shadow_strength * shadow)
        img[rs, cs] = region * (1 - alpha) + prem
    box = None if defect_box is None else _canvas_box_to_image(pose, defect_box, height, width)
    return box, dev, pose


def _foreign_spots(img: np.ndarray, rng: np.random.Generator, k: float, severity: float, pocket: _Pocket,
                   body: tuple[_Device, _Pose] | None) -> list[tuple[float, float, float]]:
    """Particle positions ``(x, y, local level)``: on the body or the pocket floor, sometimes clustered."""
    height, width = img.shape
    n_spots = 1 + int(rng.integers(0, 1 + int(round(2 * severity))))
    spots: list[tuple[float, float, float]] = []
    for j in range(n_spots):
        if j > 0 and rng.random() < 0.5:  # a cluster around the first particle
            sx, sy = spots[0][0] + rng.normal(0, 10 * k), spots[0][1] + rng.normal(0, 10 * k)
        elif body is not None and rng.random() < 0.55:
            (x0, y0, x1, y1), pose = body[0].body, body[1]
            px, py = pose.to_image(np.array([rng.uniform(x0 + 4 * k, x1 - 4 * k)]),
                                   np.array([rng.uniform(y0 + 4 * k, y1 - 4 * k)]))
            sx, sy = float(px[0]), float(py[0])
        else:  # on the pocket floor around the device
            ang = rng.uniform(0, 2 * np.pi)
            sx = pocket.centre[0] + math.cos(ang) * rng.uniform(0.62, 0.85) * pocket.half[0]
            sy = pocket.centre[1] + math.sin(ang) * rng.uniform(0.72, 0.85) * pocket.half[1]
        sx, sy = float(np.clip(sx, 2, width - 3)), float(np.clip(sy, 2, height - 3))
        spots.append((sx, sy, float(img[int(sy), int(sx)])))
    return spots


def render_image(true_class: str, rng: np.random.Generator, severity: float, height: int = 267,
                 width: int = 275, batch: int = 2) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """Render one image of ``true_class``; returns a ``uint8`` (height, width) array and the defect box.

    The box is ``(x, y, w, h)`` in image pixels (x, y = top-left, the box covers columns
    ``x .. x + w - 1``), ``None`` for ``good``. ``severity`` in [0, 1] sets the size and contrast
    of the defect (ignored for ``good``). All randomness comes from ``rng``, split into four
    spawned streams (scene, device, defect, camera): rendering two classes from the same
    generator state gives the same pocket, device, pose, lighting and sensor noise, and only the
    defect differs (apart from the pocket levels that keep empty pockets and flipped devices
    from standing out in global statistics).

    ``batch`` selects the production line's look (:data:`BATCH_LOOKS`) and its classes
    (:func:`batch_classes`); batch 2's images do not depend on the batch-3 code.
    """
    classes = batch_classes(batch)
    if true_class not in classes:
        raise ConfigError(f"unknown class {true_class!r} for batch {batch}; expected one of {', '.join(classes)}")
    if not (0.0 <= float(severity) <= 1.0):
        raise ConfigError(f"severity={severity!r} must lie in [0, 1]")
    _check_size(height, width)
    look = BATCH_LOOKS[batch]
    scene, box, camera_rng = _render_scene(true_class, rng, float(severity), height, width, look)
    image = _camera(scene, camera_rng, look=look)
    if true_class == "camera_glitch":
        image, box = _camera_glitch(image, camera_rng, float(severity))
    return image, box


def _render_scene(true_class: str, rng: np.random.Generator, severity: float, height: int, width: int,
                  look: BatchLook = BATCH_LOOKS[2]
                  ) -> tuple[np.ndarray, tuple[int, int, int, int] | None, np.random.Generator]:
    """The float scene before the camera model, the defect box and the camera's generator.

    A camera glitch's scene is a good device's (the glitch happens in the camera, after it).
    """
    k = min(height, width) / 267.0
    scene_rng, device_rng, defect_rng, camera_rng = rng.spawn(4)

    pocket = _Pocket(
        centre=(width / 2 + scene_rng.uniform(-6, 6) * k, height / 2 + scene_rng.uniform(-6, 6) * k),
        half=(scene_rng.uniform(104, 112) * k, scene_rng.uniform(94, 102) * k),
        radius=scene_rng.uniform(8, 16) * k,
        wall=scene_rng.uniform(7, 11) * k,
    )
    levels = _scene_levels(scene_rng, defect_rng, true_class, severity)
    dent, inward = (_pocket_damage(defect_rng, pocket, k, severity) if true_class == "pocket_damage"
                    else (None, (0.0, 0.0)))
    img = _render_background(scene_rng, height, width, k, levels, pocket, dent, look)

    centre = (pocket.centre[0] + scene_rng.uniform(-8, 8) * k, pocket.centre[1] + scene_rng.uniform(-7, 7) * k)
    theta = float(np.clip(scene_rng.normal(0, math.radians(1.6)), -math.radians(4.5), math.radians(4.5)))
    body: tuple[_Device, _Pose] | None = None
    if true_class == "empty_pocket":
        # The defect box is where the device should be: its nominal footprint, body plus leads.
        bw, bh = 135 * k, (68 + 2 * 27) * k
        box = _canvas_box_to_image(_Pose(theta, (bw / 2, bh / 2), centre), (0.0, 0.0, bw, bh), height, width)
    else:
        box, dev, pose = _render_device(img, device_rng, defect_rng, true_class, severity, k, centre, theta,
                                        look.marking_contrast)
        body = (dev, pose)

    if true_class in ("foreign_material", "tin_particle"):
        spots = _foreign_spots(img, defect_rng, k, severity, pocket, body)
        draw = _draw_tin if true_class == "tin_particle" else _draw_particles
        xs, ys = draw(img, defect_rng, k, severity, spots)
        box = _box_from_points(xs, ys, height, width)
    elif true_class == "pocket_damage":
        assert dent is not None
        dx, dy, depth, sigma = dent
        reach = (6 + 16 * severity) * k
        xs, ys = _draw_crack(img, defect_rng, k, severity, dx + inward[0] * depth * 0.5,
                             dy + inward[1] * depth * 0.5, inward, reach)
        # The dent spans about +-2 sigma along the wall and `depth` across it.
        along = (abs(inward[1]), abs(inward[0]))
        xs += [dx - 2 * sigma * along[0] - depth * along[1], dx + 2 * sigma * along[0] + depth * along[1]]
        ys += [dy - 2 * sigma * along[1] - depth * along[0], dy + 2 * sigma * along[1] + depth * along[0]]
        box = _box_from_points(xs, ys, height, width)

    return img, box, camera_rng


def _camera(img: np.ndarray, rng: np.random.Generator, sensor_noise: bool = True,
            look: BatchLook = BATCH_LOOKS[2]) -> np.ndarray:
    """Lighting (gain, offset, gradient, vignetting), optical blur, gain curve and sensor noise; to uint8.

    ``sensor_noise=False`` draws the same lighting and blur but adds no noise (the visibility
    measure's noise-free twin).
    """
    height, width = img.shape
    gain = rng.uniform(*look.gain)
    offset = rng.uniform(*look.offset)
    yy = ((np.arange(height, dtype=np.float32) + 0.5 - height / 2) / (height / 2))[:, None]
    xx = ((np.arange(width, dtype=np.float32) + 0.5 - width / 2) / (width / 2))[None, :]
    ang = rng.uniform(0, 2 * np.pi)
    gradient = rng.uniform(0, 16) * (xx * math.cos(ang) + yy * math.sin(ang))
    vignette = 1.0 - rng.uniform(0.0, 0.18) * (xx ** 2 + yy ** 2) / 2
    img = (img * (gain * vignette) + (offset + gradient)).astype(np.float32)
    img = ndimage.gaussian_filter(img, rng.uniform(*look.blur), truncate=3.0)
    if look.gamma is not None:
        img = (255.0 * (np.clip(img, 0.0, 255.0) / 255.0) ** rng.uniform(*look.gamma)).astype(np.float32)
    read_noise = rng.uniform(*look.read_noise)
    shot = rng.uniform(*look.shot)
    if sensor_noise:
        sigma = np.sqrt(read_noise ** 2 + shot * np.maximum(img, 0))
        img += sigma * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _camera_glitch(image: np.ndarray, rng: np.random.Generator, severity: float
                   ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A camera glitch or cropping issue on a finished frame; returns the frame and the affected box.

    Either the frame is cropped off-centre (a dark band where the sensor saw nothing) or a band of
    rows is torn sideways with another exposure. ``severity`` sets the band's size.
    """
    height, width = image.shape
    out = image.astype(np.float32)
    size = 0.15 + 0.25 * severity
    if rng.random() < 0.5:  # cropping issue: the frame is shifted, one side dark
        vertical = rng.random() < 0.5
        n = max(2, int(round(size * (height if vertical else width))))
        from_start = rng.random() < 0.5
        axis = 0 if vertical else 1
        out = np.roll(out, n if from_start else -n, axis=axis)
        band = (slice(0, n) if from_start else slice(-n, None))
        index = (band, slice(None)) if vertical else (slice(None), band)
        out[index] = rng.uniform(4, 18) + rng.normal(0, 2.0, out[index].shape)
        length = height if vertical else width
        start = 0 if from_start else length - n
        box = (0, start, width, n) if vertical else (start, 0, n, height)
    else:  # torn rows: a band shifted sideways and exposed differently
        n = max(2, int(round(size * height)))
        r0 = int(rng.integers(0, height - n + 1))
        shift = int(round(rng.uniform(0.08, 0.25) * width)) * (1 if rng.random() < 0.5 else -1)
        out[r0:r0 + n] = np.roll(out[r0:r0 + n], shift, axis=1) * rng.uniform(0.55, 1.5)
        box = (0, r0, width, n)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), box


def _fresh(seed: np.random.SeedSequence) -> np.random.Generator:
    """A generator from a copy of ``seed`` that has spawned nothing yet.

    ``Generator.spawn`` advances the spawn counter of the seed sequence it was built from, so two
    generators built from the same ``SeedSequence`` object would spawn different streams.
    """
    return np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=seed.spawn_key,
                                                         pool_size=seed.pool_size))


def visibility_from_images(defect: np.ndarray, twin: np.ndarray, twin_clean: np.ndarray,
                           input_size: int) -> float:
    """Peak |defect - twin| at the model's input size, over the sensor noise's std at that size.

    ``defect`` and ``twin`` share the scene, the camera and the noise draws and differ only by the
    defect; ``twin_clean`` is the twin without sensor noise. All three are resized as the models see
    them (shorter side ``resize_size_for(input_size)``, PIL bilinear); the noise level is the std of
    ``twin - twin_clean`` there.
    """
    from nexperia_utils.transforms import resize_grayscale, resize_size_for

    size = resize_size_for(int(input_size))
    d, t, c = (resize_grayscale(np.asarray(a, np.uint8), size).astype(np.float32)
               for a in (defect, twin, twin_clean))
    noise = float(np.std(t - c))
    return float(np.max(np.abs(d - t)) / max(noise, 1e-3))


def defect_visibility(true_class: str, seed: np.random.SeedSequence, severity: float, input_size: int = 64,
                      height: int = 267, width: int = 275, batch: int = 2) -> float:
    """Model-free visibility of the defect of the image that ``seed`` renders (NaN for ``good``).

    Renders the image, its defect-free twin from the same seed (same pocket, device, pose, lighting
    and noise) and the twin without sensor noise, then applies :func:`visibility_from_images`.
    """
    if true_class == GOOD:
        return float("nan")
    look = BATCH_LOOKS[batch]
    image, _ = render_image(true_class, _fresh(seed), float(severity), height, width, batch)
    twin_scene, _, twin_camera = _render_scene(GOOD, _fresh(seed), 0.0, height, width, look)
    clean_camera = np.random.default_rng()
    clean_camera.bit_generator.state = twin_camera.bit_generator.state
    return visibility_from_images(image, _camera(twin_scene.copy(), twin_camera, look=look),
                                  _camera(twin_scene, clean_camera, sensor_noise=False, look=look), input_size)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 grey image as PNG exactly as :func:`generate_dataset` writes it."""
    buffer = io.BytesIO()
    # Run-length zlib strategy: the same size as the default here, about 2.5 times faster.
    Image.fromarray(image, mode="L").save(buffer, format="PNG", compress_type=zlib.Z_RLE)
    return buffer.getvalue()


def draw_severity(rng: np.random.Generator) -> float:
    """One defect severity, Beta(:data:`SEVERITY_BETA`)-distributed in [0, 1]."""
    return float(rng.beta(*SEVERITY_BETA))


# --------------------------------------------------------------------------------------------
# Data set plan and writing
# --------------------------------------------------------------------------------------------

def plan_dataset(config: SyntheticConfig) -> tuple[pd.DataFrame, list[np.random.SeedSequence]]:
    """The annotations without boxes (one row per image, class order) and one seed per image.

    Severities and the noisy-label choice come from a planning stream; the returned seed
    sequences give each image its own generator.
    """
    config.validate()
    counts = class_counts(config.scale, config.min_per_class, config.batch)
    classes = [name for name in batch_classes(config.batch) for _ in range(counts[name])]
    n = len(classes)
    entropy = int(config.seed) if config.batch == 2 else [int(config.seed), int(config.batch)]
    plan_seq, images_seq = np.random.SeedSequence(entropy).spawn(2)
    plan_rng = np.random.default_rng(plan_seq)
    severity = np.array([0.0 if c == GOOD else draw_severity(plan_rng) for c in classes])
    true_class = np.array(classes, dtype=object)
    noisy = np.zeros(n, dtype=bool)
    # Camera glitches are neither good nor defect: they are never filed under another label.
    defect_idx = np.flatnonzero((true_class != GOOD) & (true_class != "camera_glitch"))
    n_noisy = _round_half_up(config.noise_fraction * len(defect_idx))
    if n_noisy:
        # Every defect class keeps at least its most severe image under its own label, so no
        # class folder is emptied by label noise.
        keep = set()
        for name in set(true_class[defect_idx]):
            members = defect_idx[true_class[defect_idx] == name]
            keep.add(int(members[np.argmax(severity[members])]))
        eligible = np.array([i for i in defect_idx if int(i) not in keep], dtype=int)
        n_noisy = min(n_noisy, len(eligible))
        weight = (1.0 - severity[eligible]) ** NOISY_SEVERITY_POWER + 0.05
        chosen = plan_rng.choice(eligible, size=n_noisy, replace=False, p=weight / weight.sum())
        noisy[chosen] = True
    label = np.where(noisy, GOOD, true_class)
    frame = pd.DataFrame({
        "image_id": [image_id(config.seed, i, config.batch) for i in range(n)],
        "label": label.astype(str),
        "true_class": true_class.astype(str),
        "noisy": noisy,
        "severity": np.round(severity, 4),
        "batch": int(config.batch),
    })
    return frame, images_seq.spawn(n)


def _looks_like(root: Path, allowed: Callable[[Path], bool]) -> bool:
    return all(allowed(entry) for entry in root.iterdir())


def _is_synthetic_entry(entry: Path) -> bool:
    return (entry.is_dir() and entry.name in batch_classes(3)) or entry.name == ANNOTATIONS_FILE


def _is_kaggle_entry(entry: Path) -> bool:
    return entry.name in KAGGLE_ENTRIES


def _prepare_target(root: Path, overwrite: bool, allowed: Callable[[Path], bool], what: str) -> None:
    """Refuse a non-empty ``root`` unless ``overwrite``; never delete something unrecognised."""
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} exists and is not a folder; choose another output path")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise DataError(f"{root} is not empty; pass overwrite=True (command line: --overwrite) to replace it, "
                            f"or choose another output folder")
        if not _looks_like(root, allowed):
            raise DataError(f"{root} holds files that are not part of a {what}; refusing to delete it even with "
                            f"overwrite=True. Choose an empty or new output folder")


def _commit(partial: Path, root: Path) -> None:
    """Move the finished ``partial`` folder to ``root`` (replacing an old one only now)."""
    old = None
    if root.exists():
        old = root.with_name(f"{root.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(root, old)
    os.replace(partial, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _partial_dir(root: Path) -> Path:
    """A fresh ``<root>.partial-<pid>`` folder beside ``root`` (same file system: the rename is atomic)."""
    partial = root.with_name(f"{root.name}.partial-{os.getpid()}")
    if partial.exists():
        shutil.rmtree(partial)
    stale = sorted(p.name for p in root.parent.glob(f"{root.name}.partial-*") if p != partial)
    if stale:
        logger.warning("stale unfinished output(s) %s in %s from interrupted runs; they can be deleted",
                       ", ".join(stale), root.parent)
    partial.mkdir(parents=True)
    return partial


def _render_to_file(task: tuple) -> tuple[tuple[int, int, int, int] | None, float]:
    """Render one planned image, write its PNG and return its box and visibility (a worker's job)."""
    path, true_class, severity, seq, height, width, batch = task
    image, box = render_image(true_class, np.random.default_rng(seq), severity, height, width, batch)
    Path(path).write_bytes(png_bytes(image))
    return box, defect_visibility(true_class, seq, severity, VISIBILITY_SIZE, height, width, batch)


def default_workers() -> int:
    """The cores this process may use (``os.sched_getaffinity`` where there is one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def generate_dataset(root: Path, config: SyntheticConfig = SyntheticConfig(), overwrite: bool = False,
                     progress: bool = True, workers: int | None = None) -> pd.DataFrame:
    """Write the synthetic data set to ``root`` and return its annotations.

    Images go to ``<root>/<label>/<image_id>.png`` (``label`` = the filed, possibly noisy
    label) and ``<root>/annotations.csv`` lists every image. The set is written into
    ``<root>.partial-<pid>`` and renamed to ``root`` at the end. A non-empty ``root`` is refused
    unless ``overwrite`` (and even then only if it holds nothing but a synthetic data set).

    ``workers`` processes render the images (default: every core this process may use). Every
    image has its own seed, so the set is byte-identical for any number of workers.
    """
    root = Path(root).resolve()
    config.validate()
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    _prepare_target(root, overwrite, _is_synthetic_entry, "synthetic data set")
    frame, seeds = plan_dataset(config)
    partial = _partial_dir(root)
    try:
        for label in sorted(set(frame["label"])):
            (partial / label).mkdir()
        tasks = [(str(partial / label / f"{iid}{IMAGE_SUFFIX}"), true_class, float(severity), seq,
                  config.height, config.width, config.batch)
                 for iid, label, true_class, severity, seq in
                 zip(frame["image_id"], frame["label"], frame["true_class"], frame["severity"], seeds)]
        bar = dict(total=len(tasks), disable=not progress, desc=f"synthetic images ({workers} workers)", unit="img")
        if workers == 1:
            results = [_render_to_file(task) for task in tqdm(tasks, **bar)]
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = list(tqdm(pool.map(_render_to_file, tasks, chunksize=32), **bar))
        boxes = [box for box, _ in results]
        for j, column in enumerate("xywh"):
            frame[column] = pd.array([None if b is None else b[j] for b in boxes], dtype="Int64")
        frame["visibility"] = np.round([visibility for _, visibility in results], 2)
        frame = frame[list(ANNOTATION_COLUMNS)]
        atomic_write_csv(partial / ANNOTATIONS_FILE, frame)
        _commit(partial, root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    n_def = int((frame["true_class"] != GOOD).sum())
    logger.info("wrote %d synthetic images (%d defects, %d filed as good) to %s", len(frame), n_def,
                int(frame["noisy"].sum()), root)
    return frame


def read_annotations(root: Path) -> pd.DataFrame:
    """Read ``<root>/annotations.csv`` of a synthetic set, checking its columns and values."""
    path = Path(root) / ANNOTATIONS_FILE
    if not path.is_file():
        raise DataError(f"{path} not found: {root} is not a finished synthetic data set; generate it with "
                        f"`python -m nexperia_utils.synthetic --out {root}`")
    frame = pd.read_csv(path, dtype={"image_id": str, "label": str, "true_class": str},
                        keep_default_na=True)
    if "batch" not in frame.columns:  # written before batch 3 existed: a batch-2 set
        frame["batch"] = 2
    missing = [c for c in ANNOTATION_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(missing)}; regenerate the data set with --overwrite")
    batches = sorted(set(frame["batch"].tolist()))
    if len(batches) != 1 or batches[0] not in BATCHES:
        raise DataError(f"{path}: column 'batch' must hold one of {BATCHES} for every image, found {batches}")
    classes = batch_classes(int(batches[0]))
    unknown = sorted(set(frame["label"]).union(frame["true_class"]) - set(classes))
    if unknown:
        raise DataError(f"{path} names unknown class(es) {', '.join(unknown)} for batch {batches[0]}; "
                        f"expected {', '.join(classes)}")
    frame["noisy"] = frame["noisy"].astype(str).str.lower().map({"true": True, "false": False})
    if frame["noisy"].isna().any():
        raise DataError(f"{path}: column 'noisy' must hold True/False")
    for column in "xywh":
        frame[column] = frame[column].astype("Int64")
    return frame


def is_complete(root: Path) -> bool:
    """True when ``root`` holds a finished synthetic data set: annotations plus every listed image."""
    root = Path(root)
    try:
        frame = read_annotations(root)
    except (DataError, OSError, ValueError) as err:
        logger.debug("%s is not a complete synthetic data set: %s", root, err)
        return False
    pairs = zip(frame["image_id"], frame["label"])
    return all((root / label / f"{iid}{IMAGE_SUFFIX}").is_file() for iid, label in pairs)


def matches_config(root: Path, config: SyntheticConfig, n_check: int = 3) -> bool:
    """True when the finished set in ``root`` is the one ``config`` generates with this code.

    Compares the planned ids, labels and noisy flags, then re-renders ``n_check`` images spread
    over the set and compares their bytes, so a set written by an older generator is not reused.
    """
    root = Path(root)
    if not is_complete(root):
        return False
    existing = read_annotations(root)
    expected, seeds = plan_dataset(config)
    if len(existing) != len(expected):
        return False
    for column in ("image_id", "label", "true_class", "noisy", "batch"):
        if not (existing[column].to_numpy() == expected[column].to_numpy()).all():
            return False
    for i in np.unique(np.linspace(0, len(expected) - 1, num=max(1, n_check)).round().astype(int)):
        row = expected.iloc[int(i)]
        image, _ = render_image(row["true_class"], np.random.default_rng(seeds[int(i)]), float(row["severity"]),
                                config.height, config.width, config.batch)
        if (root / row["label"] / f"{row['image_id']}{IMAGE_SUFFIX}").read_bytes() != png_bytes(image):
            return False
    return True


# --------------------------------------------------------------------------------------------
# Kaggle export
# --------------------------------------------------------------------------------------------

def answer_key_path(out_root: Path) -> Path:
    """Where :func:`export_kaggle` keeps the hidden test labels: beside, not inside, ``out_root``."""
    out_root = Path(out_root)
    return out_root.parent / f"{out_root.name}{ANSWER_KEY_SUFFIX}"


def _stratified_test(frame: pd.DataFrame, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of test images: per true class round(n * fraction) (at least 1 if n >= 2)."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(frame), dtype=bool)
    for name in batch_classes(3):  # in a batch-2 set the batch-3 classes are simply absent
        idx = np.flatnonzero(frame["true_class"].to_numpy() == name)
        if len(idx) < 2:
            continue
        n_test = min(len(idx) - 1, max(1, _round_half_up(len(idx) * test_fraction)))
        is_test[rng.choice(idx, size=n_test, replace=False)] = True
    return is_test


def export_kaggle(source_root: Path, out_root: Path, stage: int = 1, test_fraction: float = 0.1, seed: int = 0,
                  overwrite: bool = False) -> Path:
    """Write a finished synthetic set in the Kaggle stage-1 or stage-2 layout; returns ``out_root``.

    Stage 1: ``train/good_0``, ``train/bad_1`` (filed labels: noisy defects stay in ``good_0``)
    and unlabelled ``test/all_tests``, grey JPEG (quality 95). Stage 2: ``train/train_contest/
    good_all``, ``train/train_contest/defect``, ``test/test_contest/test`` as grey BMP, plus
    ``submission_sample.csv`` (``id,defect_score`` = 0.5 per test image) and ``defect_area.csv``
    (``id,x_1,y_1,x_2,y_2`` with ``x_2 = x + w``, ``y_2 = y + h``, for train defect images with a
    box). A stratified ``test_fraction`` per true class forms the test set. The answer key
    (``id,label,true_class``; ``label`` 1 = defect by true class) is written to
    :func:`answer_key_path`, outside ``out_root``.
    """
    source_root, out_root = Path(source_root).resolve(), Path(out_root).resolve()
    if stage not in (1, 2):
        raise ConfigError(f"stage={stage!r} must be 1 or 2")
    if not (0.0 < float(test_fraction) < 1.0):
        raise ConfigError(f"test_fraction={test_fraction!r} must lie strictly between 0 and 1")
    if not is_complete(source_root):
        raise DataError(f"{source_root} is not a finished synthetic data set; generate it first with "
                        f"`python -m nexperia_utils.synthetic --out {source_root}`")
    if out_root == source_root or source_root in out_root.parents:
        raise DataError(f"the Kaggle output {out_root} must not lie inside the source data set {source_root}")
    key_path = answer_key_path(out_root)
    _prepare_target(out_root, overwrite, _is_kaggle_entry, "Kaggle export")
    if key_path.exists() and not overwrite:
        raise DataError(f"{key_path} already exists; pass overwrite=True (command line: --overwrite) to replace it")

    frame = read_annotations(source_root)
    is_test = _stratified_test(frame, float(test_fraction), seed)
    if stage == 1:
        ext, fmt, options = ".jpg", "JPEG", {"quality": JPEG_QUALITY}
        train_good, train_bad, test_dir = Path("train/good_0"), Path("train/bad_1"), Path("test/all_tests")
    else:
        ext, fmt, options = ".bmp", "BMP", {}
        train_good = Path("train/train_contest/good_all")
        train_bad = Path("train/train_contest/defect")
        test_dir = Path("test/test_contest/test")

    partial = _partial_dir(out_root)
    try:
        for sub in (train_good, train_bad, test_dir):
            (partial / sub).mkdir(parents=True)
        for iid, label, test in zip(frame["image_id"], frame["label"], is_test):
            folder = test_dir if test else (train_good if label == GOOD else train_bad)
            with Image.open(source_root / label / f"{iid}{IMAGE_SUFFIX}") as image:
                image.convert("L").save(partial / folder / f"{iid}{ext}", format=fmt, **options)
        test_ids = sorted(frame.loc[is_test, "image_id"])
        if stage == 2:
            atomic_write_csv(partial / "submission_sample.csv",
                             pd.DataFrame({"id": test_ids, "defect_score": [0.5] * len(test_ids)}))
            train_defect = frame[~is_test & (frame["label"] != GOOD) & frame["x"].notna()]
            area = pd.DataFrame({
                "id": train_defect["image_id"].to_numpy(),
                "x_1": train_defect["x"].to_numpy(int),
                "y_1": train_defect["y"].to_numpy(int),
                "x_2": (train_defect["x"] + train_defect["w"]).to_numpy(int),
                "y_2": (train_defect["y"] + train_defect["h"]).to_numpy(int),
            })
            atomic_write_csv(partial / "defect_area.csv", area)
        _commit(partial, out_root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    test_rows = frame[is_test].sort_values("image_id")
    key = pd.DataFrame({
        "id": test_rows["image_id"].to_numpy(),
        "label": (test_rows["true_class"] != GOOD).astype(int).to_numpy(),
        "true_class": test_rows["true_class"].to_numpy(),
    })
    atomic_write_csv(key_path, key)
    logger.info("exported %s as Kaggle stage %d to %s (%d train, %d test; answer key %s)", source_root, stage,
                out_root, int((~is_test).sum()), int(is_test.sum()), key_path)
    return out_root


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nexperia_utils.synthetic",
                                     description="Generate the deterministic synthetic Nexperia-like data set.")
    parser.add_argument("--out", type=Path, required=True, help="output folder (e.g. data/synthetic)")
    parser.add_argument("--scale", type=float, default=SyntheticConfig.scale,
                        help="fraction of the batch-2 class counts (default 0.1, about 3,830 images)")
    parser.add_argument("--seed", type=int, default=SyntheticConfig.seed)
    parser.add_argument("--noise-fraction", type=float, default=SyntheticConfig.noise_fraction,
                        help="fraction of defect images filed under good (default 0.013)")
    parser.add_argument("--min-per-class", type=int, default=SyntheticConfig.min_per_class)
    parser.add_argument("--batch", type=int, choices=BATCHES, default=SyntheticConfig.batch,
                        help="production batch: 2 (the default data) or 3 (another line: new look, tin "
                             "particles, camera glitches)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    parser.add_argument("--kaggle-stage", type=int, choices=(1, 2), help="also export in this Kaggle layout")
    parser.add_argument("--kaggle-out", type=Path, help="folder of the Kaggle export (with --kaggle-stage)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="Kaggle test share (default 0.1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes that render the images (default: every available core)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.kaggle_stage is None) != (args.kaggle_out is None):
        parser.error("--kaggle-stage and --kaggle-out go together")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = SyntheticConfig(scale=args.scale, noise_fraction=args.noise_fraction, seed=args.seed,
                             min_per_class=args.min_per_class, batch=args.batch)
    try:
        if is_complete(args.out) and not args.overwrite:
            if not matches_config(args.out, config):
                raise DataError(f"{args.out} holds a synthetic data set made with other settings (scale, seed, "
                                f"noise fraction, min per class) or by an older generator; pass --overwrite "
                                f"to regenerate it")
            logger.info("%s already holds this synthetic data set; reusing it (pass --overwrite to regenerate)",
                        args.out)
        else:
            generate_dataset(args.out, config, overwrite=args.overwrite, progress=not args.no_progress,
                             workers=args.workers)
        if args.kaggle_stage is not None:
            export_kaggle(args.out, args.kaggle_out, stage=args.kaggle_stage, test_fraction=args.test_fraction,
                          seed=args.seed, overwrite=args.overwrite)
    except (DataError, ConfigError) as err:
        logger.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The scene without defects: device (mold body, marking, leads), pose, carrier-tape pocket and background.

All geometry in pixels of a 267-pixel-high reference image, times ``k``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from nexperia_utils.data.synthetic.spec import BATCH_LOOKS, BatchLook, Box, CanvasBox, Segment

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


@dataclass(frozen=True)
class _Levels:
    """Grey levels of the carrier tape scene before the camera model."""

    floor: float
    tape: float
    recess: float
    hole: float


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


def _render_background(rng: np.random.Generator, height: int, width: int, k: float, levels: _Levels,
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

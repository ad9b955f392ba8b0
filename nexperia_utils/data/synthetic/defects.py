"""The defects drawn into a scene: chipping, lead defects, glue, marking defects, scratches, particles,
tin particles, pocket damage."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from nexperia_utils.data.synthetic.scene import _Device, _Pocket, _blob_coverage, _local_grid, _rect_coverage
from nexperia_utils.data.synthetic.spec import CanvasBox, Segment

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

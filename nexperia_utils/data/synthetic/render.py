"""Rendering one image: scene levels, device with its defect, camera model, camera glitches, visibility."""
from __future__ import annotations

import io
import math
import zlib

import numpy as np
from PIL import Image
from scipy import ndimage

from nexperia_utils.errors import ConfigError
from nexperia_utils.data.synthetic.defects import (
    _defect_chipping, _defect_glue, _defect_lead, _defect_marking, _defect_scratch, _draw_crack, _draw_particles,
    _draw_tin, _pocket_damage,
)
from nexperia_utils.data.synthetic.scene import (
    _box_from_points, _build_device, _canvas_box_to_image, _Device, _draw_marking, _Levels, _paint_body,
    _paint_lead, _paint_marking, _Pocket, _Pose, _render_background, _warp,
)
from nexperia_utils.data.synthetic.spec import (
    batch_classes, BATCH_LOOKS, BatchLook, Box, CanvasBox, GOOD, SEVERITY_BETA, _check_size,
)

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
    from nexperia_utils.data.transforms import resize_grayscale, resize_size_for

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

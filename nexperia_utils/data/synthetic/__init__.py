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
at a 64 px input (the quick profile's size until 2026-12-07, the long profile's), divided by the
sensor noise's std there, says how far the defect stands out of the noise (below about 5: borderline).

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

    python -m nexperia_utils.data.synthetic --out data/synthetic [--scale 0.1] [--seed 0]
        [--noise-fraction 0.013] [--batch 2|3] [--overwrite] [--kaggle-stage 1|2 --kaggle-out DIR]

Batch 3 (``--batch 3``, :data:`BATCH_LOOKS`): the same ten classes from another line and time
(another gain curve, illumination, lens blur, sensor noise, tape texture and a fainter marking)
plus :data:`BATCH3_NEW_CLASSES`: ``tin_particle`` (foreign material that is tin, its own class) and
the rare ``camera_glitch`` (cropping issues and torn frames: neither good nor defect). Batch 2's
images do not change with it (the ``batch`` annotation column is 2 there).

Modules: ``spec`` (classes, counts, batch looks, settings), ``scene`` (device, pocket, background),
``defects``, ``render`` (one image, camera, glitches, visibility), ``generate`` (plan, writer,
annotations), ``kaggle_export`` and ``cli``; this package re-exports their public names.
"""
from __future__ import annotations

from nexperia_utils.data.synthetic.spec import (
    ANNOTATION_COLUMNS, ANNOTATIONS_FILE, ANSWER_KEY_SUFFIX, BATCH3_NEW_CLASSES, batch_classes, BATCH_LOOKS,
    BATCHES, BatchLook, Box, CanvasBox, class_counts, CLASS_COUNTS_BATCH2, CLASSES, GLITCH_SHARE, GOOD, image_id,
    IMAGE_SUFFIX, JPEG_QUALITY, KAGGLE_ENTRIES, NOISY_SEVERITY_POWER, Segment, SEVERITY_BETA, SyntheticConfig,
    TIN_SHARE, VISIBILITY_SIZE,
)
from nexperia_utils.data.synthetic.render import (
    defect_visibility, draw_severity, png_bytes, render_image, visibility_from_images,
)
from nexperia_utils.data.synthetic.generate import (
    default_workers, generate_dataset, is_complete, matches_config, plan_dataset, read_annotations,
)
from nexperia_utils.data.synthetic.kaggle_export import (
    answer_key_path, export_kaggle,
)
from nexperia_utils.data.synthetic.cli import (
    main,
)

__all__ = [
    "ANNOTATION_COLUMNS", "ANNOTATIONS_FILE", "ANSWER_KEY_SUFFIX", "BATCH3_NEW_CLASSES", "batch_classes",
    "BATCH_LOOKS", "BATCHES", "BatchLook", "Box", "CanvasBox", "class_counts", "CLASS_COUNTS_BATCH2", "CLASSES",
    "GLITCH_SHARE", "GOOD", "image_id", "IMAGE_SUFFIX", "JPEG_QUALITY", "KAGGLE_ENTRIES", "NOISY_SEVERITY_POWER",
    "Segment", "SEVERITY_BETA", "SyntheticConfig", "TIN_SHARE", "VISIBILITY_SIZE", "defect_visibility",
    "draw_severity", "png_bytes", "render_image", "visibility_from_images", "default_workers", "generate_dataset",
    "is_complete", "matches_config", "plan_dataset", "read_annotations", "answer_key_path", "export_kaggle",
    "main",
]

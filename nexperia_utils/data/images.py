"""Decoding and checking image files: :func:`read_grayscale` (one file to a 2-D uint8 array) and
:func:`find_bad_images` (every file fully decoded, on threads; the unreadable ones with the reason), which the
readers of :mod:`nexperia_utils.data.folders` use to refuse or (with ``skip_bad=True``) drop bad files."""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, UnidentifiedImageError

from nexperia_utils.errors import DataError, format_listing

__all__ = ["IMAGE_EXTENSIONS", "drop_or_raise_bad_images", "find_bad_images", "read_grayscale"]

logger = logging.getLogger(__name__)

#: File suffixes read as images (case-insensitive).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _image_problem(file: Path) -> str | None:
    """Why ``file`` cannot be used as an image, or ``None`` when it decodes completely."""
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        return "missing (file not found)"
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    if not file.is_file():
        return "not a regular file"
    if size == 0:
        return "zero size (empty file)"
    try:
        with Image.open(file) as image:
            image.load()
    except UnidentifiedImageError:
        return "not an image (the file content is not a known image format)"
    except Image.DecompressionBombError as error:
        return f"unreadable ({error})"
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        text = str(error)
        if "truncated" in text.lower() or isinstance(error, EOFError):
            return f"truncated ({text or 'unexpected end of file'})"
        return f"unreadable ({type(error).__name__}: {text})"
    return None


def find_bad_images(root: Path, paths: list[str], progress: bool = False) -> list[tuple[str, str]]:
    """Open and fully decode every image; return ``(path, reason)`` for each one that fails.

    ``paths`` are relative to ``root``. Reasons: missing, unreadable, truncated, zero size, not an
    image. Each image is opened with PIL and ``load()``-ed, so truncated files are found (unless
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` was switched on elsewhere, which is warned about).
    Decoding runs in a few threads (PIL releases the GIL while decoding); the order of the result
    follows ``paths``.
    """
    root = Path(root)
    paths = list(paths)
    if not paths:
        return []
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so truncated images "
            "decode without error and cannot be detected; set it back to False to check them."
        )
    files = [root / path for path in paths]
    workers = max(1, min(8, os.cpu_count() or 1, len(files)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results: Iterable[str | None] = pool.map(_image_problem, files, chunksize=64)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(files), desc="checking images", unit="img")
        reasons = list(results)
    return [(path, reason) for path, reason in zip(paths, reasons) if reason is not None]


def read_grayscale(path: Path) -> np.ndarray:
    """Decode an image file to a ``uint8`` array of shape ``(height, width)`` (PIL ``convert('L')``)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            array = np.array(image.convert("L"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"Image {path} does not exist; check the data root and the split/manifest paths.") from None
    except UnidentifiedImageError:
        raise DataError(
            f"Image {path} is not an image PIL can read; remove or replace the file "
            f"(supported: {', '.join(IMAGE_EXTENSIONS)})."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise DataError(
            f"Image {path} cannot be decoded ({type(error).__name__}: {error}); the file is probably "
            "truncated or corrupt: replace it or remove it from the data set."
        ) from error
    if array.ndim != 2:  # pragma: no cover - convert('L') always gives 2-D arrays
        raise DataError(f"Image {path} decoded to shape {array.shape}, expected (height, width).")
    return array


def drop_or_raise_bad_images(
    frame: pd.DataFrame, root: Path, source: str, skip_bad: bool, progress: bool
) -> pd.DataFrame:
    """Verify every image of ``frame``; raise one error listing all bad ones or drop them with a warning."""
    bad = find_bad_images(root, list(frame["path"]), progress=progress)
    if not bad:
        return frame
    described = [f"{path}: {reason}" for path, reason in bad]
    if skip_bad:
        logger.warning(
            "Skipping %d bad image(s) in %s (skip_bad=True):\n%s", len(bad), source, format_listing(described)
        )
        bad_paths = {path for path, _ in bad}
        return frame[~frame["path"].isin(bad_paths)].reset_index(drop=True)
    raise DataError(
        f"{len(bad)} bad image(s) in {source} (unreadable, truncated, empty or not an image):\n"
        f"{format_listing(described)}\n"
        "Replace or delete these files, or pass skip_bad=True to leave them out (they are then listed "
        "in a warning)."
    )



"""Preprocessing of report section 3.1 and the evaluation crops of section 2.4.

The images are decoded once and resized so the shorter side is ``resize_size`` (255 for 224 crops,
as in the original code: ``Resize(255) -> CenterCrop(224)``); the transforms here start from that
resized single-channel ``uint8`` tensor of shape ``(1, H, W)`` (see :mod:`nexperia_utils.data.dataset`).

* train: CenterCrop -> RandomRotation(10) -> ColorJitter(0.2, 0.2, 0.2) -> RandomAffine(2,
  translate=(0.15, 0.1), scale=(0.75, 1.05)) -> RGB -> ImageNet normalisation. The images are grey,
  so the saturation jitter has no effect; brightness and contrast are applied to the grey channel
  before it is repeated to three channels (the same result as jittering the RGB copy, at a third of
  the cost).
* eval ``center``: CenterCrop -> RGB -> normalisation, a ``(3, S, S)`` tensor.
* eval ``five`` / ``ten``: FiveCrop / TenCrop (horizontal flips) of the resized image, a
  ``(n_crops, 3, S, S)`` tensor; the model's softmax outputs are averaged over the crops.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from nexperia_utils.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_STYLES: tuple[str, ...] = ("center", "five", "ten")
N_CROPS: dict[str, int] = {"center": 1, "five": 5, "ten": 10}

Transform = Callable[[torch.Tensor], torch.Tensor]


def resize_size_for(image_size: int) -> int:
    """Shorter side before cropping, with the report's ratio 255 / 224."""
    return int(round(image_size * 255 / 224))


def resize_grayscale(image: np.ndarray, resize: int, width: int | None = None) -> np.ndarray:
    """Resize a ``uint8`` H x W image so its shorter side is ``resize`` (PIL bilinear, antialiased).

    With ``width`` given, the result is then centre-cropped or edge-padded to ``(resize, width)`` so
    that images of slightly different sizes fit one cache array (at most a few pixels change).
    """
    h, w = image.shape
    if h <= w:
        new_h, new_w = resize, max(1, int(round(w * resize / h)))
    else:
        new_h, new_w = max(1, int(round(h * resize / w))), resize
    out = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    if width is None:
        return out
    return _fit(out, resize, width)


def _fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop or edge-pad ``image`` to exactly ``height x width``."""
    out = image
    for axis, target in ((0, height), (1, width)):
        size = out.shape[axis]
        if size > target:
            start = (size - target) // 2
            out = np.take(out, range(start, start + target), axis=axis)
        elif size < target:
            before = (target - size) // 2
            pad = [(0, 0), (0, 0)]
            pad[axis] = (before, target - size - before)
            out = np.pad(out, pad, mode="edge")
    return np.ascontiguousarray(out)


def _grey_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Repeat the single grey channel to three (the report converts the images to RGB)."""
    return x.expand(*x.shape[:-3], 3, *x.shape[-2:])


def _to_normalised_rgb() -> list:
    return [
        v2.ToDtype(torch.float32, scale=True),
        v2.Lambda(_grey_to_rgb),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


#: Training augmentations: the report's, a light one for short from-scratch schedules, or none.
AUGMENTATIONS: tuple[str, ...] = ("report", "flip", "none")


def _augmentation(name: str | bool) -> list:
    """The augmentation steps of ``name`` (``True``/``False`` mean ``"report"``/``"none"``).

    * ``report`` (section 3.1): RandomRotation(10), ColorJitter(0.2, 0.2), RandomAffine(2,
      translate=(0.15, 0.1), scale=(0.75, 1.05)); the rotation and the translation leave black
      borders.
    * ``flip``: RandomHorizontalFlip (the report's TenCrop evaluates flipped crops too), a small
      RandomAffine(3, translate=(0.04, 0.04), scale=(0.96, 1.04)) and ColorJitter(0.2, 0.2); for short
      from-scratch schedules, where the report's strong affine slows learning (``docs/LEARNING.md``).
    """
    if name is True:
        name = "report"
    if name is False:
        name = "none"
    if name == "report":
        return [
            v2.RandomRotation(10),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
            v2.RandomAffine(degrees=2, translate=(0.15, 0.1), scale=(0.75, 1.05)),
        ]
    if name == "flip":
        return [
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=3, translate=(0.04, 0.04), scale=(0.96, 1.04)),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
        ]
    if name == "none":
        return []
    raise ConfigError(f"unknown augmentation {name!r}; choose one of {list(AUGMENTATIONS)}")


def train_transform(image_size: int, augment: bool | str = True) -> Transform:
    """Training transform: centre crop, the augmentation ``augment`` names, RGB, normalisation.

    ``augment`` is one of :data:`AUGMENTATIONS`; ``True`` is ``"report"``, ``False`` (the STN
    models) keeps only the centre crop.
    """
    return v2.Compose([v2.CenterCrop(image_size)] + _augmentation(augment) + _to_normalised_rgb())


class MultiCrop:
    """Five crops (corners and centre) or ten (the same on the horizontally flipped image), stacked."""

    def __init__(self, size: int, crop: str) -> None:
        self.size = size
        self.crop = crop

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.crop == "five":
            crops = v2.functional.five_crop(image, [self.size, self.size])
        else:
            crops = v2.functional.ten_crop(image, [self.size, self.size], vertical_flip=False)
        return torch.stack(list(crops))

    def __repr__(self) -> str:
        return f"MultiCrop(size={self.size}, crop={self.crop!r})"


def eval_transform(image_size: int, crop: str = "center") -> Transform:
    """Evaluation transform for a crop style: ``center`` (3,S,S), ``five``/``ten`` (n,3,S,S)."""
    if crop == "center":
        return v2.Compose([v2.CenterCrop(image_size)] + _to_normalised_rgb())
    if crop in ("five", "ten"):
        return v2.Compose([MultiCrop(image_size, crop)] + _to_normalised_rgb())
    raise ConfigError(f"unknown crop style {crop!r}; choose one of {list(CROP_STYLES)}")


def train_crop_transform(image_size: int, crop: str, augment: bool | str = True) -> Transform:
    """Training with several crops per image (Figure 6): each crop is a training sample.

    ``center`` is :func:`train_transform`; ``five``/``ten`` return ``(n, 3, S, S)`` crops of the
    augmented resized image, which the training loop flattens into the batch.
    """
    if crop == "center":
        return train_transform(image_size, augment)
    return v2.Compose(_augmentation(augment) + [eval_transform(image_size, crop)])


def denormalise(batch: torch.Tensor) -> np.ndarray:
    """Undo the ImageNet normalisation: ``(N,3,H,W)`` tensor -> ``(N,H,W)`` grey float image in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
    return (batch * std + mean).clamp(0, 1).mean(dim=1).cpu().numpy()

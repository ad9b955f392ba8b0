"""Grad-CAM heatmaps (pytorch-grad-cam) and a localisation score against defect boxes.

:func:`compute_gallery_heatmaps` computes the heatmaps of chosen images of a part for a checkpoint
(:class:`Heatmaps`); :func:`localisation_table` scores them against the boxes per class (pointing game,
mass in the box, chance) with the scores of :mod:`nexperia_utils.analysis.localisation`.

Methods (:data:`METHODS`): Grad-CAM (the report's), Grad-CAM++ and LayerCAM, all from pytorch-grad-cam.

The heatmaps explain the *defect score* (``1 - p(good)``, the sum of the defect-class softmax
probabilities; :class:`DefectScoreTarget`), the quantity the ROC analysis ranks images by.

Target layers (:func:`target_layers`), one choice per architecture:

* ResNet18/34/50: the last block of ``layer4`` (conv5), the standard Grad-CAM layer
  (7x7 at 224 px).
* VGG19_bn: the last ReLU of ``features`` (the output of the last convolution block *before*
  the final max pool): 14x14 at 224 px instead of 7x7 after the pool, finer for small defects.
  pytorch-grad-cam's hooks work on this in-place ReLU (the tests compare with a hand-written
  Grad-CAM).
* ``*_stn``: the same layer inside ``model.backbone``. That layer sees the image *after* the
  spatial transformer, so :func:`compute_heatmaps` maps the heatmap back to input coordinates
  with the inverse of each image's transform (parts of the input the transformer cut away get 0).
* ResNet_att_2: the last blocks of ``layer3`` and ``layer4`` (conv4 and conv5), the two feature
  maps the attention blocks read; pytorch-grad-cam scales each layer's map to [0, 1] and
  averages them. At small inputs ``layer4`` alone is too coarse (2x2 at 64 px).

A note on small inputs: the last block's map shrinks with the input (ResNet ``layer4`` is 2x2
at 64 px, 1x1 at 32 px: a constant heatmap that pytorch-grad-cam's min-max scaling turns into
zeros), so a box of a few pixels cannot be pointed at. ``layer="auto"`` (:func:`auto_cam_layer`)
reads the deepest layer whose map is still at least 7x7, the resolution of the report's
``layer4`` at 224 px: ``layer4`` at 224 px, ``layer3`` at 128 px, ``layer2`` at 64 px; any layer of
:func:`cam_layers` can be named instead.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from torch import nn

from nexperia_utils.data.dataset import SplitData
from nexperia_utils.errors import ConfigError, DataError
from nexperia_utils.analysis.localisation import localisation_scores, mass_in_box, pointing_game
from nexperia_utils.validation import check_int
from nexperia_utils.models.builders import backbone_module, backbone_name, canonical_arch, resolve_device
from nexperia_utils.models.stn import warp
from nexperia_utils.data.transforms import denormalise, eval_transform, resize_size_for

if TYPE_CHECKING:  # the analysis imports this module
    from nexperia_utils.analysis.interpretation import CheckpointAnalysis

logger = logging.getLogger(__name__)

#: Supported CAM methods and their pytorch-grad-cam classes.
#: LayerCAM (Jiang et al. 2021) weights every activation by its own positive gradient instead of a
#: channel's mean gradient, which keeps shallow layers' maps sharp.
METHODS: dict[str, type] = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM}


# --------------------------------------------------------------------------- heatmaps
#: Feature-map stride of the layers Grad-CAM can read: the ResNet stages and, for VGG, the
#: output of each convolution block before its max pool.
RESNET_LAYER_STRIDES: dict[str, int] = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
VGG_BLOCK_STRIDES: dict[str, int] = {"block2": 2, "block3": 4, "block4": 8, "block5": 16}
#: Smallest feature map ``"auto"`` accepts: the report's ``layer4`` at 224 px is 7x7.
MIN_CAM_MAP = 7


def cam_layers(arch: str) -> dict[str, int]:
    """The layers :func:`target_layers` can read for ``arch`` with their feature-map strides."""
    return RESNET_LAYER_STRIDES if backbone_name(arch).startswith("resnet") else VGG_BLOCK_STRIDES


def feature_map_side(arch: str, layer: str, image_size: int) -> int:
    """Side of ``layer``'s feature map for a square ``image_size`` input: each stride-2 step of a
    ResNet (padded convolutions and max pool) rounds up, VGG's 2x2 max pools round down, so 200 px
    gives ResNet's ``layer4`` 7x7 and VGG's ``block5`` 12x12."""
    check_int("image_size", image_size, 1)
    strides = cam_layers(arch)
    if layer not in strides:
        raise ConfigError(f"Unknown Grad-CAM layer {layer!r} for {arch}; use one of {list(strides)}.")
    stride = strides[layer]
    return -(-image_size // stride) if backbone_name(arch).startswith("resnet") else image_size // stride


def auto_cam_layer(arch: str, image_size: int) -> str:
    """The deepest layer of ``arch`` whose feature map is at least :data:`MIN_CAM_MAP` pixels wide
    at ``image_size`` (the shallowest one when none is): ``layer4`` at 224 px as in the report,
    ``layer2`` (8x8) at 64 px where ``layer4`` is 2x2."""
    check_int("image_size", image_size, 1)
    layers = list(cam_layers(arch))
    fine = [name for name in layers if feature_map_side(arch, name, image_size) >= MIN_CAM_MAP]
    return fine[-1] if fine else layers[0]


def target_layers(model: nn.Module, arch: str, layer: str | None = None) -> list[nn.Module]:
    """The layers Grad-CAM reads for ``arch``.

    ``layer=None`` gives the standard choice of the module docstring (the last block); a name of
    :func:`cam_layers` (``"layer1"``-``"layer4"`` for the ResNets, ``"block2"``-``"block5"`` for
    VGG: the last ReLU of that block, before its pool) reads that layer instead.
    """
    arch = canonical_arch(arch)
    backbone = backbone_module(model, arch)
    if layer is not None:
        if layer not in cam_layers(arch):
            raise ConfigError(f"Unknown Grad-CAM layer {layer!r} for {arch}; use one of {list(cam_layers(arch))}, "
                              "'auto' or None.")
        if backbone_name(arch).startswith("resnet"):
            return [getattr(backbone, layer)[-1]]
        return [_vgg_block_relus(backbone, arch)[int(layer[-1]) - 1]]
    if arch == "resnet18_att2":
        return [backbone.layer3[-1], backbone.layer4[-1]]
    if backbone_name(arch).startswith("resnet"):
        return [backbone.layer4[-1]]
    return [_vgg_block_relus(backbone, arch)[-1]]


def profile_cam_layer(arch: str, layer: str) -> str:
    """The profile's ``cam_layer`` for a model of ``arch``: ``layer`` when ``arch`` has it (or it is
    ``"auto"``), otherwise ``"auto"`` (a ResNet stage named for a VGG run, or the reverse), logged."""
    if layer == "auto" or layer in cam_layers(arch):
        return layer
    logger.info("the profile's cam_layer %r is not a layer of %s; Grad-CAM reads 'auto' instead", layer, arch)
    return "auto"


def resolve_cam_layer(arch: str, layer: str | None, image_size: int) -> str | None:
    """``layer`` as :func:`target_layers` takes it: ``"auto"`` becomes :func:`auto_cam_layer` at
    ``image_size``; None or a layer name are returned as they are."""
    return auto_cam_layer(arch, image_size) if layer == "auto" else layer


def _vgg_block_relus(backbone: nn.Module, arch: str) -> list[nn.Module]:
    """The last ReLU of each convolution block of a torchvision VGG (the one before each max pool)."""
    layers = list(backbone.features)
    relus = [layers[i - 1] for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d) and i > 0
             and isinstance(layers[i - 1], nn.ReLU)]
    if not relus:
        raise ConfigError(f"No ReLU before a max pool in the features of the {arch} model; is it a torchvision VGG?")
    return relus


class DefectScoreTarget:
    """pytorch-grad-cam target: the defect score ``1 - softmax(logits)[negative_index]``.

    That equals the sum of the softmax probabilities of all defect classes. Works on one
    image's logits ``(C,)`` (as pytorch-grad-cam passes them) or a batch ``(B, C)``.
    """

    def __init__(self, negative_index: int) -> None:
        check_int("negative_index (a class index)", negative_index, 0)
        self.negative_index = int(negative_index)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if model_output.shape[-1] <= self.negative_index:
            raise ConfigError(
                f"negative_index {self.negative_index} is out of range for a model with "
                f"{model_output.shape[-1]} outputs; look the 'good' class index up in the class list."
            )
        return 1.0 - torch.softmax(model_output, dim=-1)[..., self.negative_index]


def _invert_theta(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse affine maps of ``theta`` (B, 2, 3) and a mask of the invertible ones."""
    linear, shift = theta[:, :, :2], theta[:, :, 2:]
    invertible = torch.linalg.det(linear).abs() > 1e-6
    safe = torch.where(invertible[:, None, None], linear, torch.eye(2, dtype=theta.dtype).expand_as(linear))
    inverse = torch.linalg.inv(safe)
    return torch.cat([inverse, -inverse @ shift], dim=2), invertible


def heatmaps_to_input_space(heatmaps: np.ndarray, theta: torch.Tensor) -> np.ndarray:
    """Map heatmaps computed on STN outputs back to the STN's input coordinates.

    The STN output at normalised position ``q`` shows the input at ``p = theta @ [q; 1]``, so the
    heatmap on the input is ``H_in(p) = H_out(theta^-1 p)``; input regions the transformed view
    does not contain get 0. Each map is rescaled to a maximum of 1. A non-invertible ``theta``
    (a collapsed transform) gives an all-zero map and a warning.
    """
    maps = torch.from_numpy(np.ascontiguousarray(heatmaps, dtype=np.float32))[:, None]
    inverse, invertible = _invert_theta(theta.detach().to("cpu", torch.float32))
    warped = warp(maps, inverse)[:, 0].clamp_(0.0, 1.0)
    warped[~invertible] = 0.0
    if not bool(invertible.all()):
        logger.warning("%d STN transforms are not invertible; their heatmaps are zero", int((~invertible).sum()))
    peak = warped.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return (warped / peak).numpy().astype(np.float32)


def compute_heatmaps(
    model: nn.Module,
    images: torch.Tensor,
    arch: str,
    negative_index: int,
    method: str = "gradcam",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    layer: str | None = None,
) -> np.ndarray:
    """Grad-CAM (or Grad-CAM++, LayerCAM) heatmaps of the defect score for normalised model inputs.

    Args:
        model: a model from :func:`nexperia_utils.models.builders.build_model` for ``arch``.
        images: ``(N, 3, H, W)`` tensor, preprocessed as for the model (normalised).
        arch: the architecture name (selects :func:`target_layers`).
        negative_index: index of the ``good`` class (look it up by name in the class list).
        method: a key of :data:`METHODS` (``"gradcam"``, ``"gradcam++"``, ``"layercam"``).
        batch_size: images per Grad-CAM pass.
        device: where to compute; the model is moved there and back afterwards.
        layer: the layer to read (:func:`target_layers`): None for the last block, ``"auto"`` for
            :func:`auto_cam_layer` at the images' size, or a name of :func:`cam_layers`.

    Returns:
        ``(N, H, W)`` float32 heatmaps in [0, 1] aligned with the input pixels (for the STN
        models, mapped back through the inverse transform). The model's training mode and
        device are restored afterwards.
    """
    arch = canonical_arch(arch)
    if method not in METHODS:
        raise ConfigError(f"Unknown CAM method {method!r}; use one of {list(METHODS)}.")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"images must be a (N, 3, H, W) tensor of model inputs; got {shape}.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive; got {batch_size}.")
    target = DefectScoreTarget(negative_index)
    layers = target_layers(model, arch, resolve_cam_layer(arch, layer, int(images.shape[-1])))
    device = torch.device(device)
    parameter = next(model.parameters())
    original_device, was_training = parameter.device, model.training
    is_stn = arch.endswith("_stn")
    results: list[np.ndarray] = []
    model.to(device)
    try:
        with torch.enable_grad(), METHODS[method](model=model, target_layers=layers) as cam:
            for start in range(0, len(images), batch_size):
                batch = images[start:start + batch_size].to(device=device, dtype=parameter.dtype)
                maps = cam(input_tensor=batch, targets=[target] * len(batch))
                if is_stn:
                    with torch.no_grad():
                        theta = model.stn.theta(batch)
                    maps = heatmaps_to_input_space(maps, theta)
                results.append(np.asarray(maps, dtype=np.float32))
    finally:
        model.zero_grad(set_to_none=True)  # drop the gradients Grad-CAM left on the parameters
        model.to(original_device)
        model.train(was_training)
    if not results:
        return np.zeros((0, *images.shape[2:]), dtype=np.float32)
    heatmaps = np.clip(np.nan_to_num(np.concatenate(results), nan=0.0), 0.0, 1.0).astype(np.float32)
    flat = heatmaps.reshape(len(heatmaps), -1)
    constant = int((flat.max(axis=1) == flat.min(axis=1)).sum())
    if constant:
        logger.warning(
            "%d of %d %s heatmaps are constant (no localisation): the target layer's feature map may be "
            "1x1 at this input size (%dx%d) or its weighted activations all negative",
            constant, len(heatmaps), method, images.shape[2], images.shape[3])
    return heatmaps


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Colour the heatmap (jet) over the image: ``alpha`` heatmap + ``1 - alpha`` image.

    Args:
        image: ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` float RGB/grayscale image in [0, 1].
        heatmap: ``(H, W)`` values in [0, 1].
        alpha: weight of the heatmap, in [0, 1].

    Returns:
        ``(H, W, 3)`` uint8 RGB image (for matplotlib's ``imshow``).
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"overlay needs an (H, W) or (H, W, 3) image; got shape {np.shape(image)}.")
    mask = np.asarray(heatmap, dtype=np.float32)
    if mask.shape != img.shape[:2]:
        raise DataError(f"heatmap shape {mask.shape} does not match the image's {img.shape[:2]}.")
    if not (0.0 <= alpha <= 1.0):
        raise ConfigError(f"alpha must be in [0, 1]; got {alpha}.")
    for name, values in (("image", img), ("heatmap", mask)):
        if values.size and (not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0):
            raise DataError(f"overlay needs the {name} as floats in [0, 1] (undo the normalisation first).")
    if alpha == 0.0 and img.max() == 0.0:  # show_cam_on_image would divide 0 by 0
        return np.zeros(img.shape, dtype=np.uint8)
    return show_cam_on_image(img, mask, use_rgb=True, image_weight=1.0 - alpha)


# --------------------------------------------------------------------------- heatmaps of a checkpoint
@dataclass
class Heatmaps:
    """Grad-CAM heatmaps of some images of a part, at the size they were computed."""

    indices: np.ndarray
    images: np.ndarray  # (n, H, W) grey in [0, 1]
    maps: np.ndarray  # (n, H, W) in [0, 1]
    image_size: int
    method: str
    layer: str | None = None

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        position = int(np.flatnonzero(self.indices == index)[0])
        return self.images[position], self.maps[position]

    def __contains__(self, index: int) -> bool:
        return bool((self.indices == index).any())


def compute_gallery_heatmaps(analysis: CheckpointAnalysis, part: SplitData, indices: Iterable[int],
                             image_size: int, method: str = "gradcam", device: str | torch.device = "cpu",
                             batch_size: int = 16, layer: str | None = None) -> Heatmaps:
    """Grad-CAM heatmaps (:func:`compute_heatmaps`) of the defect score for the
    images ``indices`` of ``part``, on their centre crops of ``image_size`` (``part`` decoded for that
    size: ``exp.part(name, image_size)``), read at ``layer`` (``"auto"`` is resolved here, so
    ``Heatmaps.layer`` names the layer used)."""
    indices = np.array(sorted(set(int(i) for i in indices)), dtype=int)
    layer = resolve_cam_layer(analysis.arch, layer, int(image_size))
    if part.images.shape[1] != resize_size_for(image_size):
        raise ConfigError(f"the {part.name} part is decoded at {part.images.shape[1]} px, not for {image_size} px crops "
                          f"({resize_size_for(image_size)} px); pass exp.part({part.name!r}, {image_size})")
    if len(indices) == 0:
        empty = np.zeros((0, image_size, image_size), dtype=np.float32)
        return Heatmaps(indices, empty, empty.copy(), image_size, method, layer)
    dataset = part.dataset(eval_transform(image_size, "center"))
    batch = torch.stack([dataset[int(i)][0] for i in indices])
    maps = compute_heatmaps(analysis.model, batch, analysis.arch, analysis.negative_index,
                            method=method, batch_size=batch_size, device=resolve_device(device), layer=layer)
    return Heatmaps(indices, denormalise(batch), maps, image_size, method, layer)


def localisation_table(heatmaps: Heatmaps, boxes: Sequence[tuple | None], groups: Sequence[str],
                       scores: Sequence[float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pointing game and heatmap mass in the box over the images of ``heatmaps`` that have a box.

    Args:
        heatmaps: heatmaps of some images of a part (``heatmaps.indices`` index the part).
        boxes: the part's boxes in the heatmaps' pixels (by position), None where there is none.
        groups: the part's class per image (annotated true class, or the label).
        scores: the part's defect scores (for the per-image table).

    Returns:
        ``(summary, per_image)``: ``summary`` has one row per class and ``all``: ``n``,
        ``pointing_game``, ``mass_in_box`` (:func:`localisation_scores`) and
        ``chance`` (the mean share of the image the boxes cover: what a uniform heatmap scores on
        both measures) and ``constant_maps`` (heatmaps without localisation, e.g. all-zero because
        no positive evidence for the defect score was found; they count as misses with no mass);
        ``per_image`` one row per scored image.
    """
    rows = []
    for position, index in enumerate(heatmaps.indices):
        box = boxes[int(index)]
        if box is None or box[2] <= 0 or box[3] <= 0:
            continue
        heat = heatmaps.maps[position]
        rows.append({
            "index": int(index),
            "class": str(groups[int(index)]),
            "pointing_hit": pointing_game(heat, box),
            "mass_in_box": mass_in_box(heat, box),
            "box_fraction": mass_in_box(np.ones_like(heat), box),
            "constant_map": bool(heat.max() == heat.min()),
            "defect_score": float(scores[int(index)]) if scores is not None else float("nan"),
        })
    per_image = pd.DataFrame(rows, columns=["index", "class", "pointing_hit", "mass_in_box", "box_fraction",
                                            "constant_map", "defect_score"])
    summary = []
    for name, part in [*per_image.groupby("class", sort=True), ("all", per_image)]:
        positions = [int(np.flatnonzero(heatmaps.indices == i)[0]) for i in part["index"]]
        scores_ = localisation_scores(heatmaps.maps[positions] if positions else np.zeros((0, 1, 1)),
                                      [boxes[int(i)] for i in part["index"]])
        summary.append({"class": name, "n": int(scores_["n"]), "pointing_game": scores_["pointing_game"],
                        "mass_in_box": scores_["mass_in_box"],
                        "chance": float(part["box_fraction"].mean()) if len(part) else float("nan"),
                        "constant_maps": int(part["constant_map"].sum())})
    return pd.DataFrame(summary).set_index("class"), per_image

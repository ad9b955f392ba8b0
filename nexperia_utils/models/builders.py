"""Model construction for every architecture of the report (sections 3.2-3.4).

``build_model(arch, num_classes, weights)`` returns a torchvision backbone with its classification
head sized to ``num_classes`` (ResNet ``fc``, VGG ``classifier[-1]``), optionally behind a spatial
transformer (``*_stn``, :mod:`nexperia_utils.models.stn`) or extended with attention
(``resnet18_att2``, :mod:`nexperia_utils.models.attention`).

Weights never come from the network: ``"imagenet"`` reads torchvision's ImageNet file from the
local torch hub cache (:func:`imagenet_weights_path`) and fails with a clear message when it is
not there; a path loads a state dict saved earlier (a whole model or a torchvision backbone).

Input normalisation (``input_norm``): ``"imagenet"`` feeds the model the ImageNet-normalised
input of :mod:`nexperia_utils.data.transforms` as is (the report); ``"image"`` standardises every image
to zero mean and unit variance first (:func:`standardise_per_image`, a forward pre-hook on the
model, so parameter names and layers stay torchvision's). The images are grey and the ImageNet
normalisation is affine per channel, so that is the per-image standardisation of the grey image.
It removes each image's gain and offset (lighting, exposure), which a from-scratch model otherwise
spends its first epochs learning to ignore (measured in ``docs/LEARNING.md``).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from nexperia_utils.models.attention import ResNetAtt2
from nexperia_utils.errors import ConfigError
from nexperia_utils.validation import check_int
from nexperia_utils.models.stn import TRANSFORMS, STNClassifier, SpatialTransformer

logger = logging.getLogger(__name__)

ARCHITECTURES: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "vgg19_bn",
    "resnet18_stn",
    "vgg19_bn_stn",
    "resnet18_att2",
)

#: Names as the report prints them (tables 2 and 3).
DISPLAY_NAMES: dict[str, str] = {
    "resnet18": "ResNet18",
    "resnet34": "ResNet34",
    "resnet50": "ResNet50",
    "vgg19_bn": "VGG19_bn",
    "resnet18_stn": "ResNet18_stn",
    "vgg19_bn_stn": "VGG19_bn_stn",
    "resnet18_att2": "ResNet_att_2",
}

_BACKBONES: dict[str, str] = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "vgg19_bn": "vgg19_bn",
    "resnet18_stn": "resnet18",
    "vgg19_bn_stn": "vgg19_bn",
    "resnet18_att2": "resnet18",
}

#: Class name of each backbone's weights enum in ``torchvision.models`` (for messages).
_WEIGHTS_ENUMS: dict[str, str] = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "vgg19_bn": "VGG19_BN_Weights",
}

#: Key prefix of the classification head inside each torchvision backbone's state dict.
_HEAD_PREFIXES: dict[str, str] = {
    "resnet18": "fc.",
    "resnet34": "fc.",
    "resnet50": "fc.",
    "vgg19_bn": "classifier.6.",
}

#: Input normalisations a model can be built with (see the module docstring).
INPUT_NORMS: tuple[str, ...] = ("imagenet", "image")

#: Keys under which training checkpoints commonly nest the model state dict.
_NESTED_STATE_KEYS: tuple[str, ...] = ("model_state_dict", "state_dict", "model_state", "model")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def canonical_arch(arch: str) -> str:
    """The canonical architecture name for ``arch`` (accepts display names, any case).

    Raises:
        ConfigError: ``arch`` is not one of :data:`ARCHITECTURES` (the message lists them).
    """
    if not isinstance(arch, str):
        raise ConfigError(f"Architecture must be a string; got {arch!r}. Valid: {', '.join(ARCHITECTURES)}.")
    key = arch.strip().lower()
    if key in ARCHITECTURES:
        return key
    by_display = {display.lower(): name for name, display in DISPLAY_NAMES.items()}
    if key in by_display:
        return by_display[key]
    raise ConfigError(f"Unknown architecture {arch!r}. Valid architectures: {', '.join(ARCHITECTURES)}.")


def backbone_name(arch: str) -> str:
    """The torchvision backbone of ``arch`` (``resnet18_stn`` -> ``resnet18``)."""
    return _BACKBONES[canonical_arch(arch)]


def imagenet_weights_path(arch: str) -> Path:
    """Where torchvision's ImageNet (``IMAGENET1K_V1``) weights for ``arch``'s backbone would be.

    That is ``torch.hub.get_dir()/checkpoints/<file name of the weights URL>``, the file
    torchvision itself downloads to; ``TORCH_HOME`` moves it. Nothing is downloaded here.
    """
    backbone = backbone_name(arch)
    url = torchvision.models.get_model_weights(backbone).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _torchvision_backbone(backbone: str, num_classes: int) -> nn.Module:
    """A randomly initialised torchvision backbone with its head resized to ``num_classes``."""
    if backbone.startswith("resnet"):
        # zero_init_residual: every residual block starts as the identity (Goyal et al. 2017), which
        # trains a from-scratch ResNet faster; ImageNet weights overwrite it.
        model = torchvision.models.get_model(backbone, weights=None, zero_init_residual=True)
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        model = torchvision.models.get_model(backbone, weights=None)
        last = model.classifier[-1]
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)
    return model


def backbone_module(model: nn.Module, arch: str) -> nn.Module:
    """The torchvision backbone inside ``model`` (the model itself for the plain architectures)."""
    arch = canonical_arch(arch)
    return model.backbone if arch.endswith(("_stn", "_att2")) else model


def classifier_head(model: nn.Module, arch: str) -> nn.Linear:
    """The final linear layer of ``model`` (its ``out_features`` is the number of classes)."""
    arch = canonical_arch(arch)
    if arch == "resnet18_att2":
        return model.classifier
    backbone = backbone_module(model, arch)
    return backbone.fc if backbone_name(arch).startswith("resnet") else backbone.classifier[-1]


def _create(arch: str, num_classes: int, stn_transform: str) -> nn.Module:
    if arch == "resnet18_att2":
        return ResNetAtt2(num_classes)
    backbone = _torchvision_backbone(_BACKBONES[arch], num_classes)
    if arch.endswith("_stn"):
        return STNClassifier(SpatialTransformer(in_channels=3, transform=stn_transform), backbone)
    return backbone


def _unwrap_state_dict(raw: object, path: Path) -> dict[str, torch.Tensor]:
    """Extract a flat ``{name: tensor}`` dict from what ``torch.load`` returned."""
    if isinstance(raw, Mapping) and not all(isinstance(v, torch.Tensor) for v in raw.values()):
        for key in _NESTED_STATE_KEYS:
            nested = raw.get(key)
            if isinstance(nested, Mapping) and nested and all(isinstance(v, torch.Tensor) for v in nested.values()):
                logger.info("Using the state dict under key %r of %s", key, path)
                raw = nested
                break
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ConfigError(
            f"{path} does not hold a model state dict (a mapping of parameter names to tensors, possibly "
            f"nested under one of {list(_NESTED_STATE_KEYS)}). Save one with torch.save(model.state_dict(), path)."
        )
    state = dict(raw)
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _mismatches(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and keys whose shapes differ."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    return missing, unexpected, shapes


def _short(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else (shown or "none")


def load_weights(model: nn.Module, arch: str, state: Mapping[str, torch.Tensor], source: str) -> str:
    """Load ``state`` into ``model``; returns ``"model"`` or ``"backbone"`` (what was loaded).

    Accepts the state dict of the whole model (same keys and shapes), or of a torchvision
    backbone: then everything but the backbone's classification head is loaded into the
    backbone (``model.backbone`` for the ``_stn`` / ``_att2`` variants) and the head keeps its
    fresh initialisation.

    Raises:
        ConfigError: neither fits; lists the missing, unexpected and mis-shaped keys.
    """
    arch = canonical_arch(arch)
    whole = model.state_dict()
    whole_problems = _mismatches(state, whole)
    if not any(whole_problems):
        model.load_state_dict(state, strict=True)
        return "model"

    backbone = backbone_module(model, arch)
    head = _HEAD_PREFIXES[_BACKBONES[arch]]
    expected = {k: v for k, v in backbone.state_dict().items() if not k.startswith(head)}
    body = {k: v for k, v in state.items() if not k.startswith(head)}
    backbone_problems = _mismatches(body, expected)
    if not any(backbone_problems):
        head_keys = {k: tuple(v.shape) for k, v in state.items() if k.startswith(head)}
        if head_keys and any(shape[0] != 1000 for shape in head_keys.values()):
            logger.warning(
                "%s: the head %s is not a 1000-class ImageNet head; it is not loaded (the %s head stays freshly "
                "initialised).", source, head_keys, DISPLAY_NAMES[arch])
        backbone.load_state_dict(body, strict=False)  # only the head's keys are absent (checked above)
        logger.info("Loaded backbone weights for %s from %s (head %s* left initialised)", arch, source, head)
        return "backbone"

    # Report the comparison with fewer problems: it is the more likely intent.
    label, (missing, unexpected, shapes) = min(
        (("the whole model", whole_problems), (f"the {_BACKBONES[arch]} backbone", backbone_problems)),
        key=lambda item: sum(len(part) for part in item[1]),
    )
    raise ConfigError(
        f"{source} does not match {DISPLAY_NAMES[arch]}: compared with {label}, "
        f"missing keys: {_short(missing)}; unexpected keys: {_short(unexpected)}; "
        f"shape mismatches: {_short(shapes)}. Pass a state dict saved from the same architecture "
        f"(model.state_dict()) or a torchvision {_BACKBONES[arch]} state dict."
    )


def _imagenet_state(arch: str) -> tuple[dict[str, torch.Tensor], Path]:
    path = imagenet_weights_path(arch)
    if not path.is_file():
        backbone = backbone_name(arch)
        enum = _WEIGHTS_ENUMS[backbone]
        raise ConfigError(
            f"ImageNet weights for {DISPLAY_NAMES[canonical_arch(arch)]} ({backbone}) are not in the local torch hub "
            f"cache: expected {path}. This pipeline never downloads. To get them, on a machine with internet run "
            f"`torchvision.models.{enum}.IMAGENET1K_V1.get_state_dict()` (it saves the file to that machine's "
            f"torch hub cache, {Path('<TORCH_HOME>') / 'hub' / 'checkpoints' / path.name}) and copy the .pth to {path} "
            f"(or set TORCH_HOME to where it is); or pass weights=<path to a state dict>; or use weights='none'."
        )
    return _load_state_file(path), path


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable / not a torch file / unsafe pickle
        raise ConfigError(
            f"Could not read weights file {path}: {exc}. It must be a state dict saved with torch.save."
        ) from exc
    return _unwrap_state_dict(raw, path)


def standardise_per_image(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Forward pre-hook: each image of the batch ``(B, C, H, W)`` to zero mean and unit variance.

    Mean and variance are taken per image over all its channels and pixels; a flat image (variance
    below 1e-6) becomes all zeros instead of dividing by zero.
    """
    x = args[0]
    flat = x.float().flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = flat.std(dim=1).clamp_min(1e-3).view(-1, 1, 1, 1)
    return ((x - mean) / std).to(x.dtype), *args[1:]


def build_model(
    arch: str, num_classes: int, weights: str | Path | None = "none", stn_transform: str = "affine",
    input_norm: str = "imagenet",
) -> nn.Module:
    """Build ``arch`` with a ``num_classes``-way head.

    Args:
        arch: one of :data:`ARCHITECTURES` (display names such as ``"ResNet_att_2"`` work too).
        num_classes: outputs of the final linear layer.
        weights: ``"none"`` (random initialisation), ``"imagenet"`` (torchvision's ImageNet
            weights for the backbone, read from the local torch hub cache only), or the path of
            a state dict file: of the whole model, or of a torchvision backbone (its head is
            skipped). For ``_stn`` / ``_att2`` the ImageNet/backbone weights go to the backbone.
        stn_transform: ``"affine"`` or ``"scale_translation"`` (``_stn`` architectures only).
        input_norm: ``"imagenet"`` (the input as the transforms give it) or ``"image"``
            (per-image standardisation first, :func:`standardise_per_image`).

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        ConfigError: unknown architecture, bad ``num_classes``, missing ImageNet file, or a state
            dict that does not fit.
    """
    arch = canonical_arch(arch)
    check_int("num_classes", num_classes, 1)
    if stn_transform not in TRANSFORMS:
        raise ConfigError(f"Unknown stn_transform {stn_transform!r}; use one of {sorted(TRANSFORMS)}.")
    if input_norm not in INPUT_NORMS:
        raise ConfigError(f"Unknown input_norm {input_norm!r}; use one of {list(INPUT_NORMS)}.")
    model = _create(arch, num_classes, stn_transform)
    if input_norm == "image":
        model.register_forward_pre_hook(standardise_per_image)

    if weights is None or (isinstance(weights, str) and weights.strip().lower() == "none"):
        return model
    if isinstance(weights, str) and weights.strip().lower() == "imagenet":
        state, path = _imagenet_state(arch)
        load_weights(model, arch, state, f"ImageNet weights {path}")
        return model
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"weights={str(weights)!r} is neither 'none', 'imagenet' nor an existing state dict file "
            f"(no file at {path})."
        )
    load_weights(model, arch, _load_state_file(path), str(path))
    return model

"""Spatial transformer network (report sections 2.2 and 3.3) and the ``*_stn`` classifiers.

A :class:`SpatialTransformer` predicts an affine transform ``A_theta`` per image with a small
localisation network and resamples the image with it (``F.affine_grid`` + ``F.grid_sample``,
``align_corners=False``). Its last layer starts at the identity transform, so an untrained STN
passes images through unchanged. :class:`STNClassifier` puts it in front of a backbone
(``ResNet18_stn``, ``VGG19_bn_stn``).

Coordinates follow ``F.affine_grid``: normalised to [-1, 1], x to the right, y downwards. The
output pixel at normalised position ``q`` takes its value from the input at ``theta @ [q; 1]``,
so a translation ``tx > 0`` moves the image content to the *left*.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nexperia_utils.errors import ConfigError

#: Supported parameterisations and the number of parameters the localisation network predicts.
TRANSFORMS: dict[str, int] = {"affine": 6, "scale_translation": 3}


def _identity_parameters(transform: str) -> torch.Tensor:
    """The parameter vector that encodes the identity transform for ``transform``."""
    if transform == "affine":
        return torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    return torch.tensor([1.0, 0.0, 0.0])  # scale s = 1, tx = 0, ty = 0


def parameters_to_theta(params: torch.Tensor, transform: str) -> torch.Tensor:
    """Turn the localisation output ``(B, P)`` into affine matrices ``(B, 2, 3)``.

    ``affine``: the six numbers are the rows of ``A_theta``. ``scale_translation``: ``(s, tx, ty)``
    gives ``[[s, 0, tx], [0, s, ty]]`` (isotropic scaling and translation, report section 2.2).
    """
    if transform not in TRANSFORMS:
        raise ConfigError(f"Unknown STN transform {transform!r}; use one of {sorted(TRANSFORMS)}.")
    expected = TRANSFORMS[transform]
    if params.ndim != 2 or params.shape[1] != expected:
        raise ConfigError(
            f"STN transform {transform!r} needs parameters of shape (B, {expected}); got {tuple(params.shape)}."
        )
    if transform == "affine":
        return params.view(-1, 2, 3)
    scale, tx, ty = params.unbind(dim=1)
    zeros = torch.zeros_like(scale)
    row0 = torch.stack([scale, zeros, tx], dim=1)
    row1 = torch.stack([zeros, scale, ty], dim=1)
    return torch.stack([row0, row1], dim=1)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` (B, C, H, W) with affine matrices ``theta`` (B, 2, 3); output has x's size.

    Points sampled outside the input are zero (``padding_mode="zeros"``).
    """
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class SpatialTransformer(nn.Module):
    """Localisation network + grid generator + sampler (Jaderberg et al. 2015).

    Localisation network as in the report: two convolutions, each followed by max pooling and a
    ReLU, then (after an adaptive average pool, so any input of at least 32x32 pixels works) two
    fully connected layers that output the transform parameters. The last layer is initialised
    with zero weights and the identity as bias, so the initial transform is the identity.

    Args:
        in_channels: channels of the input (3 for RGB images).
        transform: ``"affine"`` (6 parameters) or ``"scale_translation"`` (3 parameters).
        pooled_size: side of the adaptive pool before the fully connected layers.
        hidden: width of the first fully connected layer.
    """

    def __init__(
        self, in_channels: int = 3, transform: str = "affine", pooled_size: int = 4, hidden: int = 32
    ) -> None:
        super().__init__()
        if transform not in TRANSFORMS:
            raise ConfigError(
                f"Unknown STN transform {transform!r}; use one of {sorted(TRANSFORMS)} "
                "(report section 2.2: full affine or isotropic scale + translation)."
            )
        if in_channels < 1 or pooled_size < 1 or hidden < 1:
            raise ConfigError(
                f"SpatialTransformer needs positive sizes; got in_channels={in_channels}, "
                f"pooled_size={pooled_size}, hidden={hidden}."
            )
        self.transform = transform
        self.localization = nn.Sequential(
            nn.Conv2d(in_channels, 8, kernel_size=7),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 10, kernel_size=5),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(pooled_size),
            nn.Flatten(),
        )
        self.fc_loc = nn.Sequential(
            nn.Linear(10 * pooled_size * pooled_size, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, TRANSFORMS[transform]),
        )
        self.reset_to_identity()

    def reset_to_identity(self) -> None:
        """Set the last layer to output the identity transform for every input."""
        last = self.fc_loc[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(_identity_parameters(self.transform))

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        """Affine matrices ``(B, 2, 3)`` predicted for the images ``x`` (B, C, H, W)."""
        if x.ndim != 4:
            raise ValueError(f"SpatialTransformer expects a (B, C, H, W) batch; got shape {tuple(x.shape)}.")
        params = self.fc_loc(self.localization(x))
        return parameters_to_theta(params, self.transform)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The images transformed by their predicted ``theta`` (same size as ``x``)."""
        return warp(x, self.theta(x))


class STNClassifier(nn.Module):
    """A spatial transformer in front of a classification backbone: ``backbone(stn(x))``."""

    def __init__(self, stn: SpatialTransformer, backbone: nn.Module) -> None:
        super().__init__()
        self.stn = stn
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.stn(x))

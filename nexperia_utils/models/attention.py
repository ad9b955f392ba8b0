"""``ResNet_att_2``: ResNet18 with two attention blocks (report sections 2.3, 3.4 and Table 1).

Built after "Learn to pay attention" (Jetley et al., ICLR 2018):

* the ResNet18 trunk (torchvision ``conv1`` ... ``layer4``; the report's conv1-conv5);
* ``conv6``: a 3x3 convolution with 512 channels (+ BN + ReLU) followed by a global max pool,
  replacing the average pool; its output is the global feature ``g`` (512 values);
* an attention block on the outputs of ``layer3`` (conv4, 256 channels) and ``layer4`` (conv5,
  512 channels). Each block projects the local features ``l_i`` to 512 channels with a bias-free
  1x1 convolution where the channel count differs from ``g``'s, scores every position with the
  compatibility ``c_i = <u, [l_i ; g]>`` (a bias-free linear map of the concatenation, report
  section 2.3), takes a softmax over the positions (the attention map ``a``) and returns
  ``g_a = sum_i a_i l_i`` (of the projected ``l_i``);
* the two attended vectors, concatenated (1024 values), feed the final linear classifier.

Note on the report's compatibility function: ``<u, [l_i ; g]> = <u_l, l_i> + <u_g, g>`` and the
second term is the same at every position, so the softmax cancels it: with ``"concat"`` the
attention maps do not depend on ``g`` and ``conv6`` gets no gradient. This module implements the
report's choice by default; ``compatibility="dot"`` (``c_i = <l_i, g>``, the paper's
dot-product variant) makes the maps depend on ``g``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from nexperia_utils.errors import ConfigError

COMPATIBILITIES: tuple[str, ...] = ("concat", "dot")


class AttentionBlock(nn.Module):
    """Attention over the positions of a local feature map given a global feature ``g``.

    Args:
        local_channels: channels of the local feature map ``L`` (B, C_l, H, W).
        global_channels: length of the global feature ``g`` (B, C_g).
        compatibility: ``"concat"`` (``<u, [l_i ; g]>``, the report's) or ``"dot"`` (``<l_i, g>``).
    """

    def __init__(self, local_channels: int, global_channels: int, compatibility: str = "concat") -> None:
        super().__init__()
        if compatibility not in COMPATIBILITIES:
            raise ConfigError(f"Unknown compatibility {compatibility!r}; use one of {list(COMPATIBILITIES)}.")
        self.compatibility = compatibility
        self.projector: nn.Module = (
            nn.Conv2d(local_channels, global_channels, kernel_size=1, bias=False)
            if local_channels != global_channels
            else nn.Identity()
        )
        # u: one score per position from [l_i ; g] (2 * global_channels values), no bias.
        self.score = nn.Linear(2 * global_channels, 1, bias=False) if compatibility == "concat" else None

    def forward(self, local: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the attended vector ``g_a`` (B, C_g) and the attention map ``a`` (B, H, W)."""
        projected = self.projector(local)  # (B, C_g, H, W)
        batch, channels, height, width = projected.shape
        flat = projected.flatten(2).transpose(1, 2)  # (B, N, C_g), N = H * W
        if self.score is not None:
            g_expanded = g.unsqueeze(1).expand(batch, flat.shape[1], channels)
            scores = self.score(torch.cat([flat, g_expanded], dim=2)).squeeze(2)  # (B, N)
        else:
            scores = torch.bmm(flat, g.unsqueeze(2)).squeeze(2)  # (B, N)
        attention = F.softmax(scores, dim=1)
        attended = torch.bmm(attention.unsqueeze(1), flat).squeeze(1)  # (B, C_g)
        return attended, attention.view(batch, height, width)


class ResNetAtt2(nn.Module):
    """ResNet18 with attention after conv4 and conv5 and a conv6 + max-pool global feature.

    ``backbone`` is a torchvision ResNet18 whose ``avgpool`` and ``fc`` are unused (set to
    ``nn.Identity``), so torchvision ResNet18 weights (without ``fc.*``) load into it directly.
    The classifier is ``classifier`` (``nn.Linear(1024, num_classes)``).
    """

    def __init__(self, num_classes: int, compatibility: str = "concat") -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be positive; got {num_classes}.")
        backbone = resnet18(weights=None)
        backbone.avgpool = nn.Identity()
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.conv6 = nn.Sequential(
            nn.Conv2d(512, 512, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(512),
            nn.ReLU(inplace=True),
        )
        self.global_pool = nn.AdaptiveMaxPool2d(1)
        self.attention3 = AttentionBlock(256, 512, compatibility)
        self.attention4 = AttentionBlock(512, 512, compatibility)
        self.classifier = nn.Linear(1024, num_classes)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, num_classes) and the attention maps ``[a_layer3 (B,H3,W3), a_layer4 (B,H4,W4)]``."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.layer2(b.layer1(x))
        local3 = b.layer3(x)
        local4 = b.layer4(local3)
        g = self.global_pool(self.conv6(local4)).flatten(1)  # (B, 512)
        attended3, map3 = self.attention3(local3, g)
        attended4, map4 = self.attention4(local4, g)
        logits = self.classifier(torch.cat([attended3, attended4], dim=1))
        return logits, [map3, map4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(x)[0]

"""A SegFormer-style segmentation network: all-MLP decoder on a hierarchical timm encoder.

Not the paper's network (Puzzle-CAM trains DeepLabV3+, spec 8.1): a second segmentation network
for `deeplab.network: segformer`. The decoder follows SegFormer (Xie et al., NeurIPS 2021,
section 3.2): each of the encoder's last four feature maps (strides 4/8/16/32 for `pvt_v2_b*`
or a ResNet) gets a per-pixel linear projection to `head_channels`, is upsampled bilinearly to
the stride-4 grid, the four are concatenated, fused by a linear layer with norm and ReLU, and a
linear classifier (after dropout 0.1) gives the logits, resized to the input.
The one deviation from SegFormer: the fusion norm is GroupNorm(4) instead of SyncBN, as in this
project's DeepLab head, so the head does not depend on the (micro-)batch size.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pcam.errors import ConfigError
from pcam.models.backbone import backbone_from_settings

LEVELS = 4  # SegFormer decodes the encoder's four stages
GN_GROUPS = 4
DROPOUT = 0.1  # SegFormer: dropout before the classifier


class SegFormer(nn.Module):
    """An encoder (any timm model with `features_only`, e.g. pvt_v2_b0) + MLP decoder over
    `num_classes` classes, background included.

    forward: x (B, 3, H, W) float32 normalised -> logits (B, num_classes, H, W). pvt_v2 needs
    H, W >= 32 (its first stage's spatial-reduction attention pools 8x8 stride-4 pixels).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head_channels: int) -> None:
        """backbone: a timm `features_only` module giving the four levels, finest first."""
        super().__init__()
        self.backbone = backbone
        channels = backbone.feature_info.channels()
        if len(channels) != LEVELS:
            raise ConfigError(f"deeplab.backbone: {len(channels)} feature levels, not {LEVELS}")
        self.project = nn.ModuleList(nn.Conv2d(c, head_channels, 1) for c in channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(LEVELS * head_channels, head_channels, 1, bias=False),
            nn.GroupNorm(math.gcd(GN_GROUPS, head_channels), head_channels),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(DROPOUT)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)

    @classmethod
    def from_settings(cls, settings: dict[str, Any], num_classes: int) -> SegFormer:
        """Build from the `deeplab` config section (backbone, pretrained, output_stride, norm,
        head_channels: the decoder width); `num_classes` includes the background."""
        backbone = backbone_from_settings(settings, out_indices=LEVELS)
        return cls(backbone, num_classes, settings["head_channels"])

    @property
    def num_outputs(self) -> int:
        """Classes the logits cover (background included)."""
        return self.classifier.out_channels

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        grid = feats[0].shape[-2:]  # the finest (stride-4) level
        maps = [
            F.interpolate(proj(f), size=grid, mode="bilinear", align_corners=False)
            for proj, f in zip(self.project, feats, strict=True)
        ]
        logits = self.classifier(self.dropout(self.fuse(torch.cat(maps, dim=1))))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def parameter_groups(self) -> list[dict]:
        """The 1x/2x (encoder weights/biases) and 10x/20x (decoder) optimiser groups, as for
        DeepLab (spec 8.2)."""
        from pcam.optim import param_groups

        head = [
            (f"decoder.{name}", p)
            for part in (self.project, self.fuse, self.classifier)
            for name, p in part.named_parameters()
        ]
        return param_groups(self.backbone.named_parameters(), head)

"""AffinityNet: a boundary branch on a frozen backbone (spec 5.1, 6.1).

Every backbone stage (timm features 0..4) -> 1x1 conv (no bias) -> GroupNorm(4, 32) -> resize to
the stride-4 grid -> ReLU; the five maps are concatenated and a 1x1 conv gives one boundary logit
per stride-4 pixel. The backbone (FixedBatchNorm, ImageNet weights) is never trained: its
parameters need no gradient, it stays in eval mode and runs without autograd.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pcam.models.backbone import create_backbone

STRIDE = 4  # the boundary map's stride
BACKBONE_STRIDE = 16  # spec 5.1: the official backbone reaches stride 16 (stage 5 at 16)
SIDE_CHANNELS = 32  # spec 5.1: each side branch gives 32 channels
GN_GROUPS = 4  # spec 5.1: GroupNorm(4, 32)


class AffinityNet(nn.Module):
    """Boundary detector over a frozen `backbone` (any timm ResNet-style name)."""

    def __init__(
        self, backbone: str, *, pretrained: bool | str = False, side_kernel: int = 1
    ) -> None:
        """side_kernel: the side branches' convolution size, 1 (the paper's) or an odd k > 1
        (NOT the paper: each branch then sees its k x k neighbourhood, so it can answer to
        local change, not only to what a position's features say)."""
        super().__init__()
        if side_kernel < 1 or side_kernel % 2 == 0:
            raise ValueError(f"side_kernel must be a positive odd integer, got {side_kernel}")
        self.backbone = create_backbone(
            backbone,
            pretrained=pretrained,
            output_stride=BACKBONE_STRIDE,
            out_indices=(0, 1, 2, 3, 4),
            frozen_bn=True,
        )
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        info = self.backbone.feature_info
        self.reductions = tuple(int(r) for r in info.reduction())
        self.pad_multiple = max(max(self.reductions), STRIDE)
        self.sides = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, SIDE_CHANNELS, side_kernel, padding=side_kernel // 2, bias=False),
                nn.GroupNorm(GN_GROUPS, SIDE_CHANNELS),
            )
            for c in info.channels()
        )
        self.fuse = nn.Conv2d(SIDE_CHANNELS * len(self.sides), 1, 1, bias=True)

    @classmethod
    def from_settings(cls, settings: dict[str, Any], num_classes: int) -> AffinityNet:
        """Build from the `affinitynet` config section (backbone, pretrained, side_kernel);
        `num_classes` is accepted for the model-file interface and unused (boundaries know no
        classes). Model files saved before `side_kernel` existed hold the paper's 1x1 branches."""
        del num_classes
        return cls(
            settings["backbone"],
            pretrained=settings["pretrained"],
            side_kernel=int(settings.get("side_kernel", 1)),
        )

    def train(self, mode: bool = True) -> AffinityNet:
        """Set the side branches' mode; the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: Tensor, canvas: int | None = None) -> Tensor:
        """x (B, 3, H, W) normalised -> boundary logits (B, 1, ceil(H/4), ceil(W/4)).

        The input is zero-padded right/bottom to a multiple of the deepest stride (after first
        padding it to a canvas x canvas square when `canvas` is given) and the logits cropped
        back, so any H, W works. The padding matters beyond the crop: the side branches'
        GroupNorm statistics cover the whole padded map (spec 6.1).
        """
        height, width = x.shape[-2:]
        padded_h, padded_w = (self._padded(side, canvas) for side in (height, width))
        x = F.pad(x, (0, padded_w - width, 0, padded_h - height))
        grid = (x.shape[-2] // STRIDE, x.shape[-1] // STRIDE)
        with torch.no_grad():
            feats = self.backbone(x)
        maps = []
        for feat, reduction, side in zip(feats, self.reductions, self.sides, strict=True):
            while reduction < STRIDE:  # the stem's own 3x3/2 max-pool (spec 5.1: stage 1)
                feat = F.max_pool2d(feat, 3, stride=2, padding=1)
                reduction *= 2
            out = side(feat)
            if out.shape[-2:] != grid:
                out = F.interpolate(out, size=grid, mode="bilinear", align_corners=False)
            maps.append(F.relu(out))
        logits = self.fuse(torch.cat(maps, dim=1))
        return logits[..., : math.ceil(height / STRIDE), : math.ceil(width / STRIDE)]

    def _padded(self, side: int, canvas: int | None) -> int:
        """A side's padded length: at least `canvas`, rounded up to the deepest stride."""
        side = max(side, canvas or 0)
        return side + (-side % self.pad_multiple)

    @torch.no_grad()
    def boundary(self, x: Tensor, canvas: int | None = None) -> Tensor:
        """x (B, 3, H, W) -> boundary probabilities (B, ceil(H/4), ceil(W/4)) in [0, 1]:
        sigmoid of the mean of the image's and its mirror's logits (spec 6.1). The mirror is
        taken before padding, so both are padded right/bottom (`forward`'s `canvas`)."""
        logits = self(torch.cat([x, x.flip(-1)]), canvas)[:, 0]
        b = x.shape[0]
        return torch.sigmoid(logits[:b] / 2 + logits[b:].flip(-1) / 2)

    def parameter_groups(self) -> list[dict]:
        """One group over the trainable (side-branch) parameters (spec 5.5)."""
        from pcam.optim import single_group

        return single_group(self.named_parameters())

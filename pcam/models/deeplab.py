"""DeepLabV3+ for the final segmentation stage (spec 8.1).

timm backbone (layer1 at stride 4 for the decoder, layer4 at the output stride for ASPP) ->
ASPP (1x1, three atrous 3x3, image pooling; concat -> 1x1 -> norm -> ReLU -> Dropout 0.5) ->
decoder (low-level 1x1 to 48, concat with the upsampled ASPP output, two 3x3 convs with dropouts
0.5 / 0.1, 1x1 classifier with bias) -> logits bilinearly resized to the input size.

The head always uses GroupNorm (the official `use_gn True`, its default and the README's);
`norm` only decides the backbone's BN: "frozen" = running statistics fixed ("Fix + GN", the
paper's setting), "bn" = trainable BN (SyncBN under DDP).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pcam.errors import ConfigError
from pcam.models.backbone import create_backbone

NORMS = ("frozen", "bn")
GN_GROUPS = 4  # spec 8.1: GroupNorm with 4 groups in ASPP and decoder
LOW_LEVEL_CHANNELS = 48  # spec 8.1: decoder reduction of the stride-4 features


def _conv_gn_relu(in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> GroupNorm -> ReLU.

    Group count gcd(4, out_ch): 4 for every width the paper and the config use (256, 128, 48),
    fewer only when 4 does not divide the width.
    """
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        nn.GroupNorm(math.gcd(GN_GROUPS, out_ch), out_ch),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (spec 8.1): (B, in_ch, h, w) -> (B, out_ch, h, w)."""

    def __init__(self, in_ch: int, out_ch: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_gn_relu(in_ch, out_ch, 1)]
            + [_conv_gn_relu(in_ch, out_ch, 3, dilation=int(r)) for r in rates]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_gn_relu(in_ch, out_ch, 1))
        self.project = nn.Sequential(
            _conv_gn_relu(out_ch * (len(rates) + 2), out_ch, 1), nn.Dropout(0.5)
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        outs = [branch(x) for branch in self.branches]
        pooled = self.image_pool(x)
        outs.append(F.interpolate(pooled, size=size, mode="bilinear", align_corners=True))
        return self.project(torch.cat(outs, dim=1))


class Decoder(nn.Module):
    """DeepLabV3+ decoder (spec 8.1): (ASPP out (B, head, h, w), low-level (B, low_ch, H4, W4))
    -> logits (B, num_classes, H4, W4)."""

    def __init__(self, low_ch: int, head_ch: int, num_classes: int) -> None:
        super().__init__()
        self.reduce = _conv_gn_relu(low_ch, LOW_LEVEL_CHANNELS, 1)
        self.fuse = nn.Sequential(
            _conv_gn_relu(head_ch + LOW_LEVEL_CHANNELS, head_ch, 3),
            nn.Dropout(0.5),
            _conv_gn_relu(head_ch, head_ch, 3),
            nn.Dropout(0.1),
        )
        self.classifier = nn.Conv2d(head_ch, num_classes, 1, bias=True)

    def forward(self, x: Tensor, low: Tensor) -> Tensor:
        low = self.reduce(low)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=True)
        return self.classifier(self.fuse(torch.cat([x, low], dim=1)))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ over `num_classes` classes, background included (spec 8.1).

    forward: x (B, 3, H, W) float32 normalised -> logits (B, num_classes, H, W) (any H, W >= 1).
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        pretrained: bool | str = False,
        output_stride: int | None = 16,
        norm: str = "frozen",
        head_channels: int = 256,
        aspp_rates: Sequence[int] = (6, 12, 18),
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"deeplab.norm: {norm!r} is not one of {list(NORMS)}")
        self.backbone = create_backbone(
            backbone,
            pretrained=pretrained,
            output_stride=output_stride,
            out_indices=(1, 4),
            frozen_bn=norm == "frozen",
        )
        low_ch, high_ch = self.backbone.feature_info.channels()
        self.aspp = ASPP(high_ch, head_channels, aspp_rates)
        self.decoder = Decoder(low_ch, head_channels, num_classes)
        for m in chain(self.aspp.modules(), self.decoder.modules()):
            if isinstance(m, nn.Conv2d):  # spec 8.1: Kaiming-normal weights, default bias
                nn.init.kaiming_normal_(m.weight)

    @classmethod
    def from_settings(cls, settings: dict[str, Any], num_classes: int) -> DeepLabV3Plus:
        """Build from the `deeplab` config section (backbone, pretrained, output_stride, norm,
        head_channels, aspp_rates); `num_classes` includes the background."""
        return cls(
            settings["backbone"],
            num_classes,
            pretrained=settings["pretrained"],
            output_stride=settings["output_stride"],
            norm=settings["norm"],
            head_channels=settings["head_channels"],
            aspp_rates=tuple(settings["aspp_rates"]),
        )

    @property
    def num_outputs(self) -> int:
        """Classes the logits cover (background included)."""
        return self.decoder.classifier.out_channels

    def forward(self, x: Tensor) -> Tensor:
        low, high = self.backbone(x)
        logits = self.decoder(self.aspp(high), low)
        # spec 8.1: final logits resized to the input with align_corners=True
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)

    def parameter_groups(self) -> list[dict]:
        """The 1x/2x (backbone weights/biases) and 10x/20x (head) optimiser groups (spec 8.2)."""
        from pcam.optim import param_groups

        head = chain(self.aspp.named_parameters("aspp"), self.decoder.named_parameters("decoder"))
        return param_groups(self.backbone.named_parameters(), head)

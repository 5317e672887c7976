"""The CAM classifier and its puzzle wrapper (spec 2.2, 2.3).

`Classifier`: timm backbone -> 1x1 conv head (no bias, Kaiming-normal) giving raw class activation
maps A (no ReLU); logits = spatial mean of A (GAP). `PuzzleClassifier` runs the full image and its
tiles through the same Classifier in one `forward`, so DDP sees a single forward per step.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from pcam.models.backbone import create_backbone
from pcam.puzzle import merge, pieces_per_side, tile


class Classifier(nn.Module):
    """Multi-label classifier with CAM output over `num_classes` foreground classes."""

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        pretrained: bool | str = False,
        output_stride: int | None = 16,
        frozen_bn: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = create_backbone(
            backbone,
            pretrained=pretrained,
            output_stride=output_stride,
            out_indices=(4,),
            frozen_bn=frozen_bn,
        )
        self.output_stride = int(self.backbone.feature_info.reduction()[-1])
        self.head = nn.Conv2d(self.backbone.feature_info.channels()[-1], num_classes, 1, bias=False)
        nn.init.kaiming_normal_(self.head.weight)  # spec 2.2

    @classmethod
    def from_settings(cls, settings: dict[str, Any], num_classes: int) -> Classifier:
        """Build from the `classifier` config section: backbone, pretrained, output_stride, norm."""
        return cls(
            settings["backbone"],
            num_classes,
            pretrained=settings["pretrained"],
            output_stride=settings["output_stride"],
            frozen_bn=settings["norm"] == "frozen",
        )

    @property
    def num_outputs(self) -> int:
        """Classes the CAMs cover (foreground only)."""
        return self.head.out_channels

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, 3, H, W) normalised -> (logits (B, C), cams (B, C, ceil(H/s), ceil(W/s))).

        cams are the raw head output A (no ReLU); logits = mean of A over h, w (spec 2.2).
        """
        cams = self.head(self.backbone(x)[-1])
        return cams.mean(dim=(2, 3)), cams

    def parameter_groups(self) -> list[dict]:
        """The 1x/2x/10x/20x optimiser groups: backbone pretrained, head from scratch (spec 2.5)."""
        from pcam.optim import param_groups

        return param_groups(self.backbone.named_parameters(), self.head.named_parameters())


class PuzzleClassifier(nn.Module):
    """Full image and its `num_pieces` tiles through one shared `Classifier` (spec 2.3)."""

    def __init__(self, classifier: Classifier, num_pieces: int) -> None:
        super().__init__()
        pieces_per_side(num_pieces)  # validate early: a perfect square
        self.classifier = classifier
        self.num_pieces = num_pieces

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x (B, 3, H, W) -> dict of
        logits (B, C), cams (B, C, h, w): the full image;
        tiled_logits (num_pieces*B, C): each tile (piece-major, spec 2.3);
        merged_cams (B, C, h, w): the tiles' CAMs put back together (A_re).
        H and W must be multiples of sqrt(num_pieces) * output stride, so A_re matches A_s.
        """
        logits, cams = self.classifier(x)
        tiled_logits, tiled_cams = self.classifier(tile(x, self.num_pieces))
        merged = merge(tiled_cams, self.num_pieces)
        if merged.shape != cams.shape:
            step = pieces_per_side(self.num_pieces) * self.classifier.output_stride
            raise ValueError(
                f"input {tuple(x.shape[2:])}: merged tile CAMs {tuple(merged.shape[2:])} do not "
                f"match the full CAMs {tuple(cams.shape[2:])}; use sizes divisible by {step}"
            )
        return {
            "logits": logits,
            "cams": cams,
            "tiled_logits": tiled_logits,
            "merged_cams": merged,
        }

    def parameter_groups(self) -> list[dict]:
        """Those of the wrapped classifier (the wrapper adds no parameters)."""
        return self.classifier.parameter_groups()

"""Multi-scale CAM aggregation (spec 3.1). Pure: no files; the caller picks device and precision.

The network is any callable `forward(batch) -> raw CAMs (N, C, h, w)`; each scale's image and its
mirror go through it as one batch of two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from pcam.segment import scaled_batch

NORM_EPS = 1e-5  # spec 3.1: each channel is divided by (its max + 1e-5)


def strided_size(height: int, width: int, stride: int = 4) -> tuple[int, int]:
    """(ceil(H/stride), ceil(W/stride)): the strided CAM's size."""
    return (height - 1) // stride + 1, (width - 1) // stride + 1


def multiscale_cams(
    forward: Callable[[Tensor], Tensor],
    image: np.ndarray,
    scales: Sequence[float],
    flip: bool,
) -> tuple[Tensor, Tensor]:
    """Summed ReLU CAMs of every scale (and flip) for uint8 HxWx3 `image`, all C classes:
    (strided (C, ceil(H/4), ceil(W/4)), high-res (C, H, W)), float32, unnormalised.

    Strided maps are resized straight to the stride-4 size; high-res maps to 16*ceil(H/16) x
    16*ceil(W/16) and cropped to H x W (spec 3.1), both bilinear with align_corners=False.
    """
    if not scales:
        raise ValueError("CAM inference needs at least one scale")
    height, width = image.shape[:2]
    small = strided_size(height, width)
    big = tuple(16 * s for s in strided_size(height, width, 16))
    strided: Tensor | None = None
    high: Tensor | None = None
    for scale in scales:
        cams = F.relu(forward(scaled_batch(image, scale, flip)).float())
        cams = (cams[0] + cams[1].flip(-1) if flip else cams[0])[None]
        s = F.interpolate(cams, size=small, mode="bilinear", align_corners=False)[0]
        h = F.interpolate(cams, size=big, mode="bilinear", align_corners=False)[0]
        strided = s if strided is None else strided + s
        high = h if high is None else high + h
    return strided, high[:, :height, :width]


def normalise_present(cams: Tensor, present: Sequence[int]) -> Tensor:
    """The channels of `present` classes (ascending), each divided by its max + 1e-5."""
    picked = cams[list(present)]
    peak = picked.flatten(1).amax(dim=1) if picked.numel() else picked.new_zeros(0)
    return picked / (peak[:, None, None] + NORM_EPS)

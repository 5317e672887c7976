"""Multi-scale CAM aggregation (spec 3.1). Pure: no files; the caller picks device and precision.

The network is any callable `forward(batch) -> raw CAMs (N, C, h, w)`; each scale's image and its
mirror go through it as one batch of two (`pcam.segment.scaled_inputs`). Only the channels the
caller keeps (the classes present in the image) are rectified, resized and summed: the official
code resizes every class and drops the absent ones afterwards, which gives the same maps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor

NORM_EPS = 1e-5  # spec 3.1: each channel is divided by (its max + 1e-5)


def strided_size(height: int, width: int, stride: int = 4) -> tuple[int, int]:
    """(ceil(H/stride), ceil(W/stride)): the strided CAM's size."""
    return (height - 1) // stride + 1, (width - 1) // stride + 1


def multiscale_cams(
    forward: Callable[[Tensor], Tensor],
    inputs: Sequence[Tensor],
    size: tuple[int, int],
    flip: bool,
    channels: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Summed ReLU CAMs of the `scaled_inputs` batches of an image of `size` (H, W):
    (strided (K, ceil(H/4), ceil(W/4)), high-res (K, H, W)), float32, unnormalised, on the
    device `forward` returns on. K = len(channels) (the CAM channels kept, in that order), or
    every channel when `channels` is None.

    Strided maps are resized straight to the stride-4 size; high-res maps to 16*ceil(H/16) x
    16*ceil(W/16) and cropped to H x W (spec 3.1), both bilinear with align_corners=False.
    """
    if not inputs:
        raise ValueError("CAM inference needs at least one scale")
    height, width = size
    small = strided_size(height, width)
    big = tuple(16 * s for s in strided_size(height, width, 16))
    strided: Tensor | None = None
    high: Tensor | None = None
    for batch in inputs:
        cams = forward(batch)
        if channels is not None:
            cams = cams[:, list(channels)]
        cams = F.relu(cams.float())
        cams = (cams[0] + cams[1].flip(-1) if flip else cams[0])[None]
        s = F.interpolate(cams, size=small, mode="bilinear", align_corners=False)[0]
        h = F.interpolate(cams, size=big, mode="bilinear", align_corners=False)[0]
        strided = s if strided is None else strided + s
        high = h if high is None else high + h
    return strided, high[:, :height, :width]


def max_normalise(cams: Tensor) -> Tensor:
    """(K, h, w) maps, each channel divided by its max + 1e-5 (spec 3.1); K may be 0."""
    peak = cams.flatten(1).amax(dim=1) if cams.numel() else cams.new_zeros(cams.shape[0])
    return cams / (peak[:, None, None] + NORM_EPS)

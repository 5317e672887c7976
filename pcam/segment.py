"""Multi-scale, flip-augmented segmentation inference (spec 8.3). Pure: no files, no devices.

The network is any callable `forward(batch) -> logits`; the caller decides the device, the
precision and `torch.inference_mode()` inside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pcam.data.transforms import normalize, resize_image, to_chw


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(round(H*s), round(W*s)), each at least 1; Python's round, as upstream (spec 1.4)."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def scaled_batch(image: np.ndarray, scale: float, flip: bool) -> Tensor:
    """uint8 HxWx3 -> float32 (1 or 2, 3, h, w) CPU batch: the bicubic-resized, normalised image,
    followed by its left-right mirror when `flip`."""
    h, w = scaled_size(image.shape[0], image.shape[1], scale)
    x = torch.from_numpy(to_chw(normalize(resize_image(image, h, w))))[None]
    return torch.cat([x, x.flip(-1)]) if flip else x


def multiscale_logits(
    forward: Callable[[Tensor], Tensor],
    image: np.ndarray,
    scales: Sequence[float],
    flip: bool,
) -> Tensor:
    """Summed logits (C, H, W) float32, on the device `forward` returns them on (spec 8.3).

    For each scale: resize the uint8 HxWx3 `image` bicubically, normalise, batch it with its
    flip, run `forward` ((N, 3, h, w) float32 CPU -> (N, C, h', w') logits), resize the logits to
    (H, W) bilinearly (align_corners=False) and add the original and the flipped-back maps; sum
    over scales (len(scales) * (1 + flip) maps in total).
    """
    if not scales:
        raise ValueError("multiscale inference needs at least one scale")
    size = image.shape[:2]
    total: Tensor | None = None
    for scale in scales:
        logits = forward(scaled_batch(image, scale, flip)).float()
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        summed = logits[0] + logits[1].flip(-1) if flip else logits[0]
        total = summed if total is None else total + summed
    return total


def multiscale_probs(
    forward: Callable[[Tensor], Tensor],
    image: np.ndarray,
    scales: Sequence[float],
    flip: bool,
) -> Tensor:
    """Class probabilities (C, H, W) float32 in [0, 1], summing to 1 over C: the softmax of
    `multiscale_logits` (spec 8.3: softmax of the sum of logit maps)."""
    return torch.softmax(multiscale_logits(forward, image, scales, flip), dim=0)

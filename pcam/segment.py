"""Multi-scale, flip-augmented segmentation inference (spec 8.3). Pure: no files, no devices.

`scaled_inputs` builds the network inputs of one image on the CPU (bicubic resize through PIL,
the official behaviour, spec 1.4), so it can run in DataLoader workers; `summed_logits` runs any
callable `forward(batch) -> logits` on them and sums the maps on whatever device `forward`
returns them on. The caller decides the device, the precision and `torch.inference_mode()`.
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


def scaled_inputs(image: np.ndarray, scales: Sequence[float], flip: bool) -> list[Tensor]:
    """One `scaled_batch` per scale, in the order of `scales` (at least one)."""
    if not scales:
        raise ValueError("multiscale inference needs at least one scale")
    return [scaled_batch(image, scale, flip) for scale in scales]


def summed_logits(
    forward: Callable[[Tensor], Tensor],
    inputs: Sequence[Tensor],
    size: tuple[int, int],
    flip: bool,
) -> Tensor:
    """Summed logits (C, H, W) float32 of the `scaled_inputs` batches of an image of `size`.

    Each batch goes through `forward` ((N, 3, h, w) -> (N, C, h', w') logits, any float dtype);
    the logits are resized to (H, W) bilinearly (align_corners=False) and the original and the
    flipped-back mirror added; the maps of every scale are summed (spec 8.3: len(scales) *
    (1 + flip) maps in total).
    """
    if not inputs:
        raise ValueError("multiscale inference needs at least one scale")
    total: Tensor | None = None
    for batch in inputs:
        logits = forward(batch).float()
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        summed = logits[0] + logits[1].flip(-1) if flip else logits[0]
        total = summed if total is None else total + summed
    return total


def multiscale_logits(
    forward: Callable[[Tensor], Tensor],
    image: np.ndarray,
    scales: Sequence[float],
    flip: bool,
) -> Tensor:
    """`summed_logits` of uint8 HxWx3 `image` at `scales` (inputs built here, on the CPU)."""
    return summed_logits(forward, scaled_inputs(image, scales, flip), image.shape[:2], flip)


def multiscale_probs(
    forward: Callable[[Tensor], Tensor],
    image: np.ndarray,
    scales: Sequence[float],
    flip: bool,
) -> Tensor:
    """Class probabilities (C, H, W) float32 in [0, 1], summing to 1 over C: the softmax of
    `multiscale_logits` (spec 8.3: softmax of the sum of logit maps)."""
    return torch.softmax(multiscale_logits(forward, image, scales, flip), dim=0)

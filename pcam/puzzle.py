"""The puzzle module: cut feature maps or images into tiles and put them back (spec 2.3).

Pure tensor functions. Tiles are enumerated row-major (for 4 pieces: top-left, top-right,
bottom-left, bottom-right) and stacked piece-major along the batch axis: rows [0, B) hold piece 0
of every image, rows [B, 2B) piece 1, and so on. Unlike the official code, a size that does not
divide evenly is an error instead of silently producing extra pieces.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def pieces_per_side(num_pieces: int) -> int:
    """sqrt(num_pieces) for a perfect square >= 1; anything else -> ValueError."""
    side = math.isqrt(num_pieces) if num_pieces >= 1 else 0
    if side < 1 or side * side != num_pieces:
        raise ValueError(f"num_pieces must be a perfect square >= 1, got {num_pieces}")
    return side


def _check_divisible(height: int, width: int, side: int) -> None:
    if height % side or width % side:
        raise ValueError(
            f"a {height}x{width} map cannot be cut into {side}x{side} equal pieces: "
            f"height and width must be divisible by {side}"
        )


def tile(x: Tensor, num_pieces: int) -> Tensor:
    """(B, C, H, W) -> (num_pieces*B, C, H/n, W/n), n = sqrt(num_pieces), piece-major order."""
    side = pieces_per_side(num_pieces)
    _, _, height, width = x.shape
    _check_divisible(height, width, side)
    rows = x.split(height // side, dim=2)
    return torch.cat([piece for row in rows for piece in row.split(width // side, dim=3)], dim=0)


def merge(x: Tensor, num_pieces: int) -> Tensor:
    """Inverse of `tile`: (num_pieces*B, C, h, w) -> (B, C, n*h, n*w)."""
    side = pieces_per_side(num_pieces)
    if x.shape[0] % num_pieces:
        raise ValueError(f"batch of {x.shape[0]} tiles is not a multiple of {num_pieces} pieces")
    pieces = x.chunk(num_pieces, dim=0)
    rows = [torch.cat(pieces[r * side : (r + 1) * side], dim=3) for r in range(side)]
    return torch.cat(rows, dim=2)

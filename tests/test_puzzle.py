"""tile / merge (spec 2.3): piece order, round trip, and errors instead of extra pieces."""

from __future__ import annotations

import pytest
import torch

from pcam.puzzle import merge, pieces_per_side, tile


def test_tile_order_is_piece_major_and_row_major():
    # Two images, one channel, 4x4; image b holds 100*b + 10*row + col.
    rows = torch.arange(4).view(1, 1, 4, 1)
    cols = torch.arange(4).view(1, 1, 1, 4)
    x = torch.cat([100 * b + 10 * rows + cols for b in range(2)], dim=0).float()
    tiles = tile(x, 4)
    assert tiles.shape == (8, 1, 2, 2)
    # Rows [0, B) are piece 0 (top-left) of every image, then top-right, bottom-left, bottom-right.
    top_left_corner = [0, 100, 2, 102, 20, 120, 22, 122]
    assert tiles[:, 0, 0, 0].tolist() == top_left_corner
    assert tiles[1, 0].tolist() == [[100, 101], [110, 111]]  # image 1, top-left piece
    assert tiles[7, 0].tolist() == [[122, 123], [132, 133]]  # image 1, bottom-right piece


def test_merge_inverts_tile_exactly():
    x = torch.randn(3, 5, 6, 9)
    for n in (1, 9):
        assert torch.equal(merge(tile(x, n), n), x)
    y = torch.randn(2, 3, 8, 4)
    assert torch.equal(merge(tile(y, 4), 4), y)


def test_merge_puts_pieces_in_their_quadrants():
    pieces = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    merged = merge(pieces, 4)  # one image from four constant pieces
    assert merged[0, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


@pytest.mark.parametrize("n", [0, 2, 3, 8, -4])
def test_num_pieces_must_be_a_perfect_square(n):
    with pytest.raises(ValueError, match="perfect square"):
        tile(torch.zeros(1, 1, 4, 4), n)


def test_indivisible_size_is_an_error_not_extra_pieces():
    with pytest.raises(ValueError, match="divisible by 2"):
        tile(torch.zeros(1, 1, 5, 4), 4)
    with pytest.raises(ValueError, match="divisible by 3"):
        tile(torch.zeros(1, 1, 6, 8), 9)
    with pytest.raises(ValueError, match="multiple of 4"):
        merge(torch.zeros(6, 1, 2, 2), 4)


def test_pieces_per_side():
    assert [pieces_per_side(n) for n in (1, 4, 9, 16, 25)] == [1, 2, 3, 4, 5]

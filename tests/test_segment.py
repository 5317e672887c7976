"""Multi-scale + flip inference (spec 8.3) against hand computations on synthetic networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcam.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pcam.segment import multiscale_logits, multiscale_probs, scaled_batch, scaled_size


def _softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _normalised(image: np.ndarray) -> np.ndarray:
    """Hand normalisation, CHW float64."""
    return ((image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def test_scaled_size_uses_python_rounding() -> None:
    # 6.5 -> 6 and 8.5 -> 8 (banker's rounding), 19.5 -> 20, 25.5 -> 26; never below 1
    assert scaled_size(13, 17, 0.5) == (6, 8)
    assert scaled_size(13, 17, 1.5) == (20, 26)
    assert scaled_size(3, 2, 0.1) == (1, 1)


def test_scaled_batch_is_image_then_mirror() -> None:
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    batch = scaled_batch(image, 1.0, flip=True)
    assert batch.shape == (2, 3, 5, 7) and batch.dtype == torch.float32
    np.testing.assert_allclose(batch[0].numpy(), _normalised(image), atol=1e-5)
    np.testing.assert_array_equal(batch[1].numpy(), batch[0].numpy()[:, :, ::-1])
    assert scaled_batch(image, 1.0, flip=False).shape == (1, 3, 5, 7)


def test_constant_image_sums_every_scale_and_flip() -> None:
    # A constant image stays constant under bicubic resizing, so each of the
    # len(scales) * 2 maps holds the per-pixel logits (a, -a, 0), a = normalised red.
    image = np.full((10, 14, 3), 200, dtype=np.uint8)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0], -x[:, 0], torch.zeros_like(x[:, 0])], dim=1)

    a = (200 / 255 - 0.485) / 0.229
    for flip, maps in ((True, 6), (False, 3)):
        probs = multiscale_probs(forward, image, [0.5, 1.0, 1.5], flip)
        expected = _softmax(np.array([maps * a, -maps * a, 0.0]))
        assert probs.shape == (3, 10, 14) and probs.dtype == torch.float32
        np.testing.assert_allclose(
            probs.numpy(), np.broadcast_to(expected[:, None, None], (3, 10, 14)), atol=1e-5
        )


def test_flip_is_flipped_back_before_summing() -> None:
    # An equivariant network (logits = first two input channels): image + flipped-back flip
    # must equal twice the image's logits; forgetting to flip back would mirror half of it.
    image = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    probs = multiscale_probs(lambda x: x[:, :2], image, [1.0], flip=True)
    expected = _softmax(2 * _normalised(image)[:2])
    np.testing.assert_allclose(probs.numpy(), expected, atol=1e-5)


def test_position_dependent_network() -> None:
    # Logits = column index whatever the input: flip=True sums j and (W-1-j) = W-1 everywhere.
    image = np.zeros((4, 6, 3), dtype=np.uint8)

    def ramp(x: torch.Tensor) -> torch.Tensor:
        cols = torch.arange(x.shape[-1], dtype=torch.float32).expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([cols, torch.zeros_like(cols)], dim=1)

    flipped = multiscale_logits(ramp, image, [1.0], flip=True)
    np.testing.assert_array_equal(flipped[0].numpy(), np.full((4, 6), 5.0))
    plain = multiscale_logits(ramp, image, [1.0], flip=False)
    np.testing.assert_array_equal(plain[0].numpy(), np.tile(np.arange(6.0), (4, 1)))
    np.testing.assert_array_equal(plain[1].numpy(), np.zeros((4, 6)))


def test_logits_resized_bilinear_without_corner_alignment() -> None:
    # A 1x2 logit map [0, 1] resized to 1x4: sources x = (j + 0.5) / 2 - 0.5 clamped to [0, 1]
    # -> 0, 0.25, 0.75, 1 (align_corners=True would give 0, 1/3, 2/3, 1).
    image = np.zeros((1, 4, 3), dtype=np.uint8)
    fixed = torch.tensor([[[[0.0, 1.0]]]])
    logits = multiscale_logits(lambda x: fixed.expand(x.shape[0], -1, -1, -1), image, [1.0], False)
    np.testing.assert_allclose(logits.numpy(), [[[0.0, 0.25, 0.75, 1.0]]], atol=1e-6)


def test_odd_sizes_reach_the_network_rounded_and_come_back_full_size() -> None:
    image = np.zeros((13, 17, 3), dtype=np.uint8)
    seen = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        # a stride-4 network in half precision: the output must still be float32, full size
        return torch.zeros(x.shape[0], 4, -(-x.shape[2] // 4), -(-x.shape[3] // 4)).half()

    probs = multiscale_probs(forward, image, [0.5, 1.5], flip=True)
    assert seen == [(2, 3, 6, 8), (2, 3, 20, 26)]
    assert probs.shape == (4, 13, 17) and probs.dtype == torch.float32
    np.testing.assert_allclose(probs.numpy(), 0.25)


def test_no_scales_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one scale"):
        multiscale_probs(lambda x: x, np.zeros((2, 2, 3), np.uint8), [], True)

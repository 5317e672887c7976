"""Training transforms (spec 1.4): normalisation, resize, flip, crop/pad, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from pcam.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    item_rng,
    normalize,
    random_crop,
    random_hflip,
    random_resize_long,
    to_chw,
    train_augment,
)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_normalize_by_hand():
    img = np.array([[[0, 255, 128]]], dtype=np.uint8)
    out = normalize(img)
    assert out.dtype == np.float32
    expected = (np.array([0, 1, 128 / 255]) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)
    assert out[0, 0, 0] == pytest.approx(-0.485 / 0.229)
    with pytest.raises(ValueError, match="uint8"):
        normalize(img.astype(np.float32))


def test_to_chw():
    img = _image(2, 3)
    chw = to_chw(img)
    assert chw.shape == (3, 2, 3) and chw.flags.c_contiguous
    assert chw[2, 1, 0] == img[1, 0, 2]


def test_random_resize_long_side_in_range_and_mask_nearest():
    img, mask = _image(30, 20), np.arange(600, dtype=np.uint8).reshape(30, 20) % 7
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(40):
        out, out_mask = random_resize_long(img, mask, 10, 14, rng)
        assert out.shape[2] == 3 and out.dtype == np.uint8
        assert out.shape[:2] == out_mask.shape
        long = max(out.shape[:2])
        assert 10 <= long <= 14 and out.shape[0] == long
        assert out.shape[1] == round(20 * long / 30)
        assert set(np.unique(out_mask)) <= set(np.unique(mask))  # nearest: no new values
        seen.add(long)
    assert seen == set(range(10, 15))  # inclusive on both ends


def test_random_resize_uses_bankers_rounding():
    out, none = random_resize_long(_image(10, 5), None, 5, 5, np.random.default_rng(0))
    assert none is None
    assert out.shape[:2] == (5, 2)  # 5 * 0.5 = 2.5 rounds to even, as Python's round


def test_random_hflip_flips_image_and_mask_together():
    img, mask = _image(4, 5), np.arange(20, dtype=np.uint8).reshape(4, 5)
    outcomes = set()
    for seed in range(20):
        out, out_mask = random_hflip(img, mask, np.random.default_rng(seed))
        flipped = np.array_equal(out, img[:, ::-1])
        assert flipped or np.array_equal(out, img)
        assert np.array_equal(out_mask, mask[:, ::-1] if flipped else mask)
        outcomes.add(flipped)
    assert outcomes == {True, False}


def test_random_crop_pads_small_images_with_0_and_255():
    img = normalize(_image(3, 4))
    mask = np.full((3, 4), 7, dtype=np.uint8)
    out, out_mask = random_crop(img, mask, 6, np.random.default_rng(3))
    assert out.shape == (6, 6, 3) and out_mask.shape == (6, 6)
    inside = out_mask == 7
    assert inside.sum() == 12  # the whole image is kept
    ys, xs = np.nonzero(inside)
    y0, x0 = ys.min(), xs.min()
    np.testing.assert_array_equal(out[y0 : y0 + 3, x0 : x0 + 4], img)
    assert np.all(out[~inside] == 0.0)
    assert np.all(out_mask[~inside] == 255)


def test_random_crop_of_a_large_image_is_a_window():
    img = _image(10, 12)
    out, none = random_crop(img, None, 5, np.random.default_rng(4))
    assert none is None and out.shape == (5, 5, 3)
    windows = [img[y : y + 5, x : x + 5] for y in range(6) for x in range(8)]
    assert any(np.array_equal(out, w) for w in windows)


def test_crop_mixed_axes():
    img = np.arange(2 * 9 * 3, dtype=np.float32).reshape(2, 9, 3) + 1
    mask = np.ones((2, 9), dtype=np.uint8)
    out, out_mask = random_crop(img, mask, 4, np.random.default_rng(5))
    assert (out_mask == 1).sum() == 8 and (out_mask == 255).sum() == 8


def test_train_augment_is_deterministic_per_seed_epoch_and_index():
    img, mask = _image(40, 30), np.zeros((40, 30), dtype=np.uint8)

    def run(seed, index, epoch):
        return train_augment(img, mask, (20, 50), 32, item_rng(seed, index, epoch))

    a, am = run(0, 3, 0)
    b, bm = run(0, 3, 0)
    assert a.shape == (32, 32, 3) and a.dtype == np.float32 and am.shape == (32, 32)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(am, bm)
    assert not np.array_equal(a, run(0, 3, 1)[0])  # another epoch, other draws
    assert not np.array_equal(a, run(0, 4, 0)[0])  # another item
    assert not np.array_equal(a, run(1, 3, 0)[0])  # another seed

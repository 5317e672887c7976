"""Dense CRF wrappers and the image process pool (pcam.crf)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pcam.config import load_config
from pcam.crf import crf_from_labels, crf_from_probs, map_images
from pcam.errors import DataError

CONFIG = load_config(Path(__file__).resolve().parent.parent / "config" / "config.yaml")
LABEL_CRF = CONFIG["affinity_labels"]["crf"]  # spec 4: 10 iterations, gt_prob 0.7, ...
PROB_CRF = CONFIG["deeplab_inference"]["crf"]  # spec 8.3

H, W = 40, 56  # not square, so a transposed image would show


def _disk(radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return ((yy - 20) ** 2 + (xx - 30) ** 2 < radius**2).astype(np.int64)


TRUTH = _disk(14)


def _image(noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """An orange disk (TRUTH == 1) on a blue background, with Gaussian pixel noise."""
    colours = np.where(TRUTH[..., None] == 1, [200, 150, 90], [30, 60, 160]).astype(float)
    colours += np.random.default_rng(seed).normal(0, noise, colours.shape)
    return np.clip(colours, 0, 255).astype(np.uint8)


def test_crf_from_labels_removes_label_noise() -> None:
    rng = np.random.default_rng(1)
    noisy = np.where(rng.random(TRUTH.shape) < 0.3, 1 - TRUTH, TRUTH)
    out = crf_from_labels(_image(noise=4), noisy, 2, LABEL_CRF)
    assert out.shape == (H, W)
    assert (noisy == TRUTH).mean() < 0.75
    assert (out == TRUTH).mean() > 0.99


@pytest.mark.parametrize("radius", [11, 17])
def test_crf_from_labels_snaps_to_image_edges(radius: int) -> None:
    """A region 3 px too small or too large follows the colour edge after refinement."""
    labels = _disk(radius)
    out = crf_from_labels(_image(), labels, 2, LABEL_CRF)
    assert (labels == TRUTH).mean() < 0.9
    assert (out == TRUTH).mean() > 0.99


def test_crf_from_labels_unused_label_and_no_iterations() -> None:
    noisy = np.where(np.random.default_rng(2).random(TRUTH.shape) < 0.2, 1 - TRUTH, TRUTH)
    out = crf_from_labels(_image(), noisy, 3, LABEL_CRF)
    assert set(np.unique(out)) <= {0, 1}
    assert (out == TRUTH).mean() > 0.99
    unchanged = crf_from_labels(_image(), noisy, 3, {**LABEL_CRF, "iterations": 0})
    np.testing.assert_array_equal(unchanged, noisy)


def test_crf_from_labels_single_label_is_all_zero() -> None:
    out = crf_from_labels(_image(), np.zeros((H, W), dtype=np.int64), 1, LABEL_CRF)
    assert out.shape == (H, W) and not out.any()


def test_crf_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"\(40, 55\).*\(40, 56\)"):
        crf_from_labels(_image(), np.zeros((H, W - 1), dtype=np.int64), 2, LABEL_CRF)
    with pytest.raises(ValueError, match=r"\(56, 40\).*\(40, 56\)"):
        crf_from_probs(_image(), np.full((2, W, H), 0.5, dtype=np.float32), PROB_CRF)
    with pytest.raises(ValueError, match="outside 0..1"):
        crf_from_labels(_image(), TRUTH * 2, 2, LABEL_CRF)
    with pytest.raises(ValueError, match="uint8"):
        crf_from_labels(_image().astype(np.float32), TRUTH, 2, LABEL_CRF)


def test_crf_from_probs_refines_and_normalises() -> None:
    rng = np.random.default_rng(3)
    fg = np.clip(TRUTH * 0.7 + 0.15 + rng.normal(0, 0.4, TRUTH.shape), 0.01, 0.99)
    extra = np.full_like(fg, 0.05)  # a third, unlikely class
    probs = np.stack([(1 - fg) * 0.95, fg * 0.95, extra]).astype(np.float32)
    out = crf_from_probs(_image(noise=2), probs, PROB_CRF)
    assert out.shape == probs.shape and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)
    assert (probs.argmax(0) == TRUTH).mean() < 0.9
    assert (out.argmax(0) == TRUTH).mean() > 0.99


def _refine(seed: int) -> np.ndarray:
    """A pool task: refine a noisy label map (module level, so spawned workers can import it)."""
    noisy = np.where(np.random.default_rng(seed).random(TRUTH.shape) < 0.3, 1 - TRUTH, TRUTH)
    return crf_from_labels(_image(noise=8, seed=seed), noisy, 2, LABEL_CRF)


def _fail_on_b(item: tuple[str, int]) -> int:
    if item[0] == "b":
        raise DataError("/data/b.npz: broken")
    if item[1] < 0:
        raise ValueError("negative")
    return item[1]


def test_map_images_two_workers_equal_one() -> None:
    seeds = list(range(5))
    one = list(map_images(_refine, seeds, workers=1))
    two = list(map_images(_refine, seeds, workers=2))
    assert len(one) == len(two) == 5
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(one[0], x) for x in one[1:])  # order matters
    assert list(map_images(_refine, [], workers=2)) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_map_images_errors_name_the_item(workers: int) -> None:
    with pytest.raises(DataError, match=r"^b: /data/b.npz: broken$"):
        list(map_images(_fail_on_b, [("a", 1), ("b", 2), ("c", 3)], workers))
    with pytest.raises(ValueError, match="negative") as info:
        list(map_images(_fail_on_b, [("a", 1), ("z", -1)], workers))
    assert info.value.__notes__ == ["while processing z"]

"""Training-time image transforms shared by the classifier, AffinityNet and DeepLab (spec 1.4).

numpy + PIL only (no torch). Images are HxWx3 arrays (uint8 before `normalize`, float32 after),
masks HxW uint8 class indices with 255 = ignore. Every random choice comes from an explicit
`numpy.random.Generator`, which the Dataset seeds per item, so a run is reproducible.
A `mask` argument may be None wherever the caller has no mask; it is then returned as None.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pcam.io import IGNORE_INDEX

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalize(img: np.ndarray) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 HxWx3, (x/255 - mean)/std per channel (ImageNet statistics)."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"normalize expects an HxWx3 uint8 image, got {img.dtype} {img.shape}")
    return (img.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def to_chw(img: np.ndarray) -> np.ndarray:
    """HxWxC -> contiguous CxHxW (same dtype)."""
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def resize_image(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of an HxWxC image (uint8 through PIL's RGB path, float per channel)."""
    if img.shape[:2] == (height, width):
        return img
    if img.dtype == np.uint8:
        return np.asarray(Image.fromarray(img).resize((width, height), Image.BICUBIC))
    channels = [
        np.asarray(
            Image.fromarray(img[..., c].astype(np.float32)).resize((width, height), Image.BICUBIC)
        )
        for c in range(img.shape[2])
    ]
    return np.stack(channels, axis=2).astype(img.dtype, copy=False)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an HxW uint8 label map (PIL NEAREST)."""
    if mask.shape == (height, width):
        return mask
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))


def random_resize_long(
    img: np.ndarray, mask: np.ndarray | None, lo: int, hi: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize so the longer side is an integer L drawn uniformly from [lo, hi] (spec 1.4).

    New size = (round(w*s), round(h*s)) with s = L / max(h, w) and Python's round (banker's
    rounding, as the official code); image bicubic, mask nearest.
    """
    if not 1 <= lo <= hi:
        raise ValueError(f"resize range must satisfy 1 <= lo <= hi, got [{lo}, {hi}]")
    height, width = img.shape[:2]
    scale = int(rng.integers(lo, hi + 1)) / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    out_mask = None if mask is None else resize_mask(mask, new_h, new_w)
    return resize_image(img, new_h, new_w), out_mask


def random_hflip(
    img: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Flip image and mask together, left-right, with probability 0.5."""
    if rng.random() < 0.5:
        return img, mask
    flipped_mask = None if mask is None else np.ascontiguousarray(mask[:, ::-1])
    return np.ascontiguousarray(img[:, ::-1]), flipped_mask


def _crop_window(length: int, size: int, rng: np.random.Generator) -> tuple[slice, slice]:
    """Source and destination slices along one axis for a random crop/pad to `size`."""
    if length >= size:
        start = int(rng.integers(0, length - size + 1))
        return slice(start, start + size), slice(0, size)
    start = int(rng.integers(0, size - length + 1))
    return slice(0, length), slice(start, start + length)


def _paste(
    img: np.ndarray,
    mask: np.ndarray | None,
    size: int,
    rows: tuple[slice, slice],
    cols: tuple[slice, slice],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Copy img[src] into a size x size canvas at dst (image filled with 0, mask with 255);
    `rows` and `cols` are (source slice, destination slice) pairs."""
    out = np.zeros((size, size, *img.shape[2:]), dtype=img.dtype)
    out[rows[1], cols[1]] = img[rows[0], cols[0]]
    if mask is None:
        return out, None
    out_mask = np.full((size, size), IGNORE_INDEX, dtype=mask.dtype)
    out_mask[rows[1], cols[1]] = mask[rows[0], cols[0]]
    return out, out_mask


def random_crop(
    img: np.ndarray, mask: np.ndarray | None, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """A size x size crop: a random window along an axis longer than `size`, else the whole
    axis at a random offset in a canvas filled with 0 (image; the mean colour once normalised)
    and 255 (mask) (spec 1.4). Returns (size x size x C image, size x size mask or None)."""
    rows = _crop_window(img.shape[0], size, rng)
    cols = _crop_window(img.shape[1], size, rng)
    return _paste(img, mask, size, rows, cols)


def train_augment(
    img: np.ndarray,
    mask: np.ndarray | None,
    resize_range: tuple[int, int] | list[int],
    crop_size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The training pipeline of spec 1.4: random resize -> flip -> normalise -> random crop.

    uint8 HxWx3 in; float32 crop_size x crop_size x 3 out (and the mask, padded with 255).
    """
    img, mask = random_resize_long(img, mask, int(resize_range[0]), int(resize_range[1]), rng)
    img, mask = random_hflip(img, mask, rng)
    return random_crop(normalize(img), mask, crop_size, rng)


def item_rng(seed: int, index: int, epoch: int = 0) -> np.random.Generator:
    """The per-item generator: independent streams for each (seed, epoch, index)."""
    return np.random.default_rng([seed, epoch, index])

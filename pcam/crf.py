"""Dense CRF refinement (pydensecrf) and the process pool that runs it one image per task.

Two ways in, as the official code has them:

- `crf_from_labels` (spec 4, 7): the unary comes from a hard label map that is right with
  probability `gt_prob`; every other label shares the rest. Returns the refined label map.
- `crf_from_probs` (spec 8.3): the unary is -log p of a softmax. Returns refined probabilities.

Both add a Gaussian (smoothness) and a bilateral (appearance) kernel and run `iterations`
mean-field steps. The `crf` dict is a config `crf` section: iterations, gt_prob (labels only),
gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat.

Dense CRF runs on one core per image, so `map_images` spreads images over processes. This module
must not import torch: CRF stages run in torch-free processes.
"""

from __future__ import annotations

import multiprocessing
import reprlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels, unary_from_softmax
from tqdm import tqdm

from pcam.errors import PcamError

T = TypeVar("T")
R = TypeVar("R")

PROB_FLOOR = 1e-5  # probabilities are clipped here before -log (a zero would be an infinite cost)


def _check_image(image: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    """`image` must be (H, W, 3) uint8 with (H, W) == `shape`; ValueError naming both shapes."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if tuple(shape) != image.shape[:2]:
        raise ValueError(f"{what} size {tuple(shape)} does not match image size {image.shape[:2]}")


def _mean_field(image: np.ndarray, unary: np.ndarray, crf: dict[str, Any]) -> np.ndarray:
    """Run the dense CRF on (n, H*W) float32 unary energies; (n, H*W) float32 marginals."""
    height, width = image.shape[:2]
    model = dcrf.DenseCRF2D(width, height, unary.shape[0])
    model.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    model.addPairwiseGaussian(sxy=crf["gaussian_sxy"], compat=crf["gaussian_compat"])
    model.addPairwiseBilateral(
        sxy=crf["bilateral_sxy"],
        srgb=crf["bilateral_srgb"],
        rgbim=np.require(image, requirements=["C", "W"]),  # pydensecrf takes writable buffers
        compat=crf["bilateral_compat"],
    )
    return np.asarray(model.inference(int(crf["iterations"])), dtype=np.float32)


def crf_from_labels(
    image: np.ndarray, labels: np.ndarray, n_labels: int, crf: dict[str, Any]
) -> np.ndarray:
    """Refine an (H, W) label map with values in 0..n_labels-1; returns (H, W) int64 labels.

    Unary (spec 4): -log(gt_prob) for the given label, -log((1 - gt_prob) / (n_labels - 1)) for
    each other one; no label means "unsure". With a single label there is nothing to refine.
    """
    _check_image(image, labels.shape, "label map")
    if n_labels < 1:
        raise ValueError(f"n_labels must be at least 1, got {n_labels}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(
            f"labels span {labels.min()}..{labels.max()}, outside 0..{n_labels - 1} (n_labels)"
        )
    if n_labels == 1:
        return np.zeros(labels.shape, dtype=np.int64)
    unary = unary_from_labels(labels, n_labels, gt_prob=crf["gt_prob"], zero_unsure=False)
    q = _mean_field(image, unary, crf)
    return q.argmax(axis=0).reshape(labels.shape)


def crf_from_probs(image: np.ndarray, probs: np.ndarray, crf: dict[str, Any]) -> np.ndarray:
    """Refine (C, H, W) class probabilities (summing to 1 over C); returns (C, H, W) float32.

    Unary (spec 8.3): -log p, with p clipped to `PROB_FLOOR`. The result sums to 1 per pixel.
    """
    if probs.ndim != 3:
        raise ValueError(f"probabilities must be (C, H, W), got shape {probs.shape}")
    _check_image(image, probs.shape[1:], "probability map")
    unary = unary_from_softmax(probs.astype(np.float32, copy=False), clip=PROB_FLOOR)
    return _mean_field(image, unary, crf).reshape(probs.shape)


_item_repr = reprlib.Repr()
_item_repr.maxstring = _item_repr.maxother = 200


def _describe(index: int, item: Any) -> str:
    """How an error names its item: a tuple item's leading string (an image id) or its repr."""
    if isinstance(item, tuple) and item and isinstance(item[0], str):
        return item[0]
    return f"item {index} ({_item_repr.repr(item)})"


def map_images(fn: Callable[[T], R], items: Sequence[T], workers: int) -> Iterator[R]:
    """Yield `fn(item)` for each item, in order, computing them in `workers` processes.

    `fn` must be a picklable module-level function; each item is one task (one image). With
    `workers <= 1` (or a single item) everything runs in this process. Processes are spawned,
    not forked, so a parent holding threads (torch) is safe. The first failure stops the pool:
    a `PcamError` is re-raised as the same type with the item's name in front of its message,
    any other exception gets a note naming the item. A tqdm bar shows progress on a terminal.
    """
    items = list(items)
    processes = min(workers, len(items))
    with tqdm(total=len(items), disable=None, unit="image") as bar:
        if processes <= 1:
            yield from _collect(map(fn, items), items, bar)
            return
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            yield from _collect(pool.imap(fn, items, chunksize=1), items, bar)


def _collect(results: Iterator[R], items: list[Any], bar: tqdm) -> Iterator[R]:
    """Pair each result with its item, so a failure can say which item it was."""
    for index, item in enumerate(items):
        try:
            result = next(results)
        except PcamError as exc:
            raise type(exc)(f"{_describe(index, item)}: {exc}") from exc
        except Exception as exc:
            exc.add_note(f"while processing {_describe(index, item)}")
            raise
        bar.update()
        yield result

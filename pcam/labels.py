"""Label maps from score maps (spec 3.4, 4, 7), and the per-image driver of the CRF label stages.

A score archive holds K foreground maps (K, H, W) and `keys` = [0, c1, ..., cK], the dataset
labels of background and of each map. A label map is made by prepending a constant background
channel equal to a threshold, taking the argmax (ties go to background), optionally refining the
channel indices with a dense CRF, and mapping channel k to `keys[k]`.

`write_label_maps` runs one such computation per image in a process pool and writes palette PNGs;
the affinity-label and pseudo-label stages differ only in the function they hand it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pcam.crf import crf_from_labels, crf_from_probs, map_images
from pcam.data.voc import DatasetSpec, load_image
from pcam.errors import DataError
from pcam.io import find_in_dirs, load_scores, save_label_png, unfinished

log = logging.getLogger(__name__)

# (image, scores (K, H, W), keys (K+1,)) -> (H, W) uint8 label map
LabelMapFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def threshold_argmax(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Channel indices (H, W) int64 in 0..K of (K, H, W) scores behind a background channel.

    Index 0 is background, chosen where no score exceeds `threshold`; k >= 1 is channel k-1.
    """
    background = np.full((1, *scores.shape[1:]), threshold, dtype=scores.dtype)
    return np.concatenate([background, scores]).argmax(axis=0)


def keys_to_labels(indices: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Map channel indices through `keys` to dataset labels, (H, W) uint8."""
    return np.asarray(keys, dtype=np.uint8)[indices]


def crf_label_map(
    image: np.ndarray,
    scores: np.ndarray,
    keys: np.ndarray,
    threshold: float,
    crf: dict[str, Any],
) -> np.ndarray:
    """Threshold (K, H, W) scores, refine with a label CRF when `crf["iterations"]` > 0, map
    through `keys`: an (H, W) uint8 label map of dataset labels (spec 4 steps 1-2, spec 7)."""
    indices = threshold_argmax(scores, threshold)
    if crf["iterations"] > 0:
        indices = crf_from_labels(image, indices, len(keys), crf)
    return keys_to_labels(indices, keys)


class _Task(NamedTuple):
    """One image's work for a pool process (the image id comes first: errors name it)."""

    image_id: str
    image_path: Path
    scores_path: Path
    array: str
    out_path: Path
    palette: np.ndarray
    num_classes: int
    make_map: LabelMapFn


def _checked_scores(task: _Task, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """`keys` and the `task.array` maps of a score archive, checked against the image size."""
    path = task.scores_path
    data = load_scores(path)
    if task.array not in data:
        raise DataError(f"{path}: score archive has no {task.array!r} array")
    keys, scores = data["keys"], data[task.array]
    if scores.ndim != 3 or scores.shape[1:] != size:
        raise DataError(
            f"{path}: {task.array} has shape {scores.shape}, expected (K, {size[0]}, {size[1]}) "
            f"for image {task.image_path}"
        )
    if keys.shape != (len(scores) + 1,) or keys[0] != 0:
        raise DataError(f"{path}: keys {keys.tolist()} do not match {len(scores)} score maps")
    if keys.size > 1 and (keys[1:].min() < 1 or keys[1:].max() >= task.num_classes):
        raise DataError(f"{path}: keys {keys.tolist()} outside 1..{task.num_classes - 1}")
    if not np.isfinite(scores).all():
        raise DataError(f"{path}: {task.array} holds NaN or infinite values")
    return keys, scores


def _run_task(task: _Task) -> str:
    """Load one image and its scores, make its label map and write it (runs in a worker)."""
    image = load_image(task.image_path)
    keys, scores = _checked_scores(task, image.shape[:2])
    save_label_png(task.out_path, task.make_map(image, scores, keys), task.palette)
    return task.image_id


def write_label_maps(
    spec: DatasetSpec,
    ids: Sequence[str],
    *,
    score_dirs: Sequence[Path],
    array: str,
    out_dir: Path,
    workers: int,
    make_map: LabelMapFn,
) -> None:
    """Write `out_dir/{id}.png` = make_map(image, scores, keys) for each id, in `workers` processes.

    Scores come from `{id}.npz` (array `array`) in the first of `score_dirs` holding it. Ids whose
    PNG exists are skipped: PNGs are written atomically, so an existing one is finished. `make_map`
    must be picklable (a module-level function or a partial of one). `out_dir` is always created.
    """
    todo = unfinished(ids, out_dir, ".png")
    tasks = [
        _Task(
            image_id,
            spec.image_path(image_id),
            find_in_dirs(score_dirs, image_id, ".npz"),
            array,
            out_dir / f"{image_id}.png",
            spec.palette,
            spec.num_classes,
            make_map,
        )
        for image_id in todo
    ]
    for _ in map_images(_run_task, tasks, workers):
        pass


def crf_refine_file(item: tuple[str, Path, Path, Path, np.ndarray, dict]) -> str:
    """CRF-refine one spilled probability map (.npy) and write its label PNG (a pool task:
    torch-free, so CRF workers start fast)."""
    image_id, image_path, probs_path, out_path, palette, crf = item
    probs = np.load(probs_path, allow_pickle=False).astype(np.float32)
    refined = crf_from_probs(load_image(image_path), probs, crf)
    save_label_png(out_path, refined.argmax(0).astype(np.uint8), palette)
    return image_id

"""`pcam evaluate`: score label PNGs or score maps against ground-truth masks (spec 9, 15.4).

The file and CSV edge of the metrics in `pcam.metrics`: checks every prediction and mask file
(a missing or malformed one is a DataError naming it), sums the per-image confusion counts in a
process pool, and writes and reads the long-format evaluation CSV (docs/evaluation.md). Every
image of the list by default (`every=8` gives the official subset, spec 9.3). Torch-free: runs
in a process pool.
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pcam.data.voc import DatasetSpec, gt_mask, read_split, training_mask
from pcam.errors import ConfigError, DataError
from pcam.io import IGNORE_INDEX, find_in_dirs, load_label_png, load_scores, write_text
from pcam.metrics import (
    EvalResult,
    Scores,
    class_image_counts,
    label_confusion,
    nanmean,
    score_confusion,
)

# ----------------------------------------------------------------------------- files


@dataclass(frozen=True)
class _Job:
    """What a worker needs to score a chunk of ids."""

    spec: DatasetSpec
    pred_dirs: tuple[Path, ...]
    score_key: str | None
    grid: np.ndarray | None  # sorted float32 thresholds; None for label PNGs
    aug_masks: bool = False  # the training masks (SegmentationClassAug first)


def _load_gt(spec: DatasetSpec, image_id: str, aug_masks: bool = False) -> np.ndarray:
    if aug_masks:  # DataError naming both files when neither exists
        mask = training_mask(spec, image_id)
        path = spec.mask_path(image_id, aug=spec.mask_path(image_id, aug=True).exists())
    else:
        mask = gt_mask(spec, image_id)
        path = spec.mask_path(image_id)
    if mask is None:
        raise DataError(f"{path}: ground-truth mask is missing")
    _check_labels(mask, spec.num_classes, path)
    return mask


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    bad = (labels >= num_classes) & (labels != IGNORE_INDEX)
    if bad.any():
        raise DataError(
            f"{path}: holds label {int(labels[bad].max())} (classes are 0..{num_classes - 1}, "
            f"and {IGNORE_INDEX})"
        )


def _check_shape(shape: tuple[int, ...], gt: np.ndarray, path: Path) -> None:
    if tuple(shape) != gt.shape:
        raise DataError(f"{path}: prediction is {tuple(shape)}, ground truth is {gt.shape}")


def _load_score_map(
    path: Path, score_key: str, gt: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scores (K, H, W) float32, keys (K+1,) int64) of a score archive, checked against GT."""
    data = load_scores(path)
    if score_key not in data:
        raise DataError(f"{path}: no array {score_key!r} (has {sorted(data)})")
    scores, keys = data[score_key], data["keys"]
    if keys.ndim != 1 or len(keys) < 1 or keys[0] != 0:
        raise DataError(f"{path}: 'keys' must be [0, c1, ..., cK], got {keys.tolist()}")
    if len(keys) > 1 and (keys[1:].min() < 1 or keys[1:].max() >= num_classes):
        raise DataError(f"{path}: 'keys' {keys.tolist()} outside classes 1..{num_classes - 1}")
    if scores.ndim != 3 or scores.shape[0] != len(keys) - 1:
        raise DataError(
            f"{path}: {score_key!r} has shape {scores.shape}, expected ({len(keys) - 1}, H, W)"
        )
    _check_shape(scores.shape[1:], gt, path)
    return scores, keys


def _image_confusion(job: _Job, image_id: str) -> np.ndarray:
    """(T, C, C+1) counts of one image (T = 1 for label PNGs)."""
    gt = _load_gt(job.spec, image_id, job.aug_masks)
    c = job.spec.num_classes
    if job.grid is None:
        path = find_in_dirs(job.pred_dirs, image_id, ".png")
        pred = load_label_png(path)
        _check_shape(pred.shape, gt, path)
        _check_labels(pred, c, path)
        return label_confusion(gt, pred, c)[None]
    path = find_in_dirs(job.pred_dirs, image_id, ".npz")
    scores, keys = _load_score_map(path, job.score_key, gt, c)
    return score_confusion(gt, scores, keys, job.grid, c)


def _chunk_counts(job: _Job, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Summed pixel confusion (T, C, C+1) and class-level counts (T, C, C) of a chunk of ids
    (one pool task)."""
    confusion = class_images = 0
    for image_id in ids:
        counts = _image_confusion(job, image_id)
        confusion = confusion + counts
        class_images = class_images + class_image_counts(counts)
    return confusion, class_images


def _threshold_grid(
    score_key: str | None, threshold: float | None, thresholds: list[float] | None
) -> list[float] | None:
    """Every threshold to score (configured one first), or None for label PNGs."""
    if score_key is None:
        if threshold is not None or thresholds:
            raise ConfigError("--threshold/--sweep: apply only to score maps (give --score-key)")
        return None
    if threshold is None:
        raise ConfigError(
            f"--threshold: score maps ({score_key!r}) need one: the pass reported as the "
            "result (--sweep only adds the ground-truth-chosen diagnostic)"
        )
    return [threshold, *(thresholds or [])]


def evaluate_predictions(
    spec: DatasetSpec,
    split: str,
    pred_dirs: list[Path],
    *,
    score_key: str | None,
    threshold: float | None,
    thresholds: list[float] | None,
    every: int,
    workers: int,
    aug_masks: bool = False,
) -> EvalResult:
    """Score the predictions of split `split` (ids 0, every, 2*every, ...) against GT masks.

    Label PNGs `{id}.png` when `score_key` is None, else score archives `{id}.npz` whose array
    `score_key` is thresholded at `threshold` and at each of `thresholds` (the sweep). Predictions
    are looked up in `pred_dirs` (shards). `aug_masks`: against the training masks
    (SegmentationClassAug, else SegmentationClass) instead of SegmentationClass. Missing or
    malformed files -> DataError naming them.
    """
    if every < 1 or workers < 1:
        raise ConfigError(f"--every/--workers: must be >= 1, got {every}, {workers}")
    wanted = _threshold_grid(score_key, threshold, thresholds)
    ids = read_split(spec, split)[::every]
    if not ids:
        raise DataError(f"{spec.split_path(split)}: split list is empty")
    grid = None if wanted is None else np.unique(np.asarray(wanted, dtype=np.float32))
    job = _Job(spec, tuple(Path(d) for d in pred_dirs), score_key, grid, aug_masks)
    per_task = max(1, min(32, math.ceil(len(ids) / (4 * workers))))
    chunks = [ids[i : i + per_task] for i in range(0, len(ids), per_task)]
    progress = partial(tqdm, total=len(chunks), desc=f"evaluate {split}", disable=None)
    task = partial(_chunk_counts, job)
    if workers == 1 or len(chunks) == 1:
        parts = list(progress(map(task, chunks)))
    else:
        with multiprocessing.Pool(min(workers, len(chunks))) as pool:
            parts = list(progress(pool.imap_unordered(task, chunks)))
    total, classes = (sum(p[k] for p in parts) for k in (0, 1))
    if grid is None:
        return EvalResult(
            split, spec.class_names, every, len(ids), None, total[0], class_images=classes[0]
        )
    at = np.searchsorted(grid, np.asarray(wanted, dtype=np.float32))
    swept = bool(thresholds)
    return EvalResult(
        split,
        spec.class_names,
        every,
        len(ids),
        threshold,
        total[at[0]],
        sweep_thresholds=list(thresholds or []),
        sweep_confusion=total[at[1:]] if swept else None,
        class_images=classes[at[0]],
        sweep_class_images=classes[at[1:]] if swept else None,
    )


# ----------------------------------------------------------------------------- CSV

COLUMNS = [
    "pass",
    "threshold",
    "chosen_with_gt",
    "class_index",
    "class",
    "iou",
    "iou_official",
    "fp",
    "fn",
    "precision",
    "recall",
    "tp",
    "gt_pixels",
    "pred_pixels",
    "pixel_accuracy",
    "split",
    "every",
    "n_images",
]
# Class-level counts (`pcam.metrics.class_image_counts`), after the columns above: a CSV written
# before they existed still reads (its counts are None).
CLASS_COLUMNS = ["class_images", "confused_images", "confused_as"]
MEAN, FG_MEAN = "mean", "fg_mean"


def _pct(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.4f}"


def _class_cells(names: list[str], counts: np.ndarray | None) -> list[dict]:
    """The `CLASS_COLUMNS` cells of a pass's rows (each class's, then the two mean rows': the
    foreground totals) from its (C, C) class-level counts; empty for background, without counts."""
    empty = dict.fromkeys(CLASS_COLUMNS, "")
    if counts is None:
        return [empty] * (len(names) + 2)
    present = np.diagonal(counts).copy()
    confused = counts.sum(axis=1) - present
    others = counts - np.diag(present)
    cells = [empty] + [
        {
            "class_images": int(present[c]),
            "confused_images": int(confused[c]),
            "confused_as": names[int(others[c].argmax())] if confused[c] else "",
        }
        for c in range(1, len(names))
    ]
    total = {"class_images": int(present.sum()), "confused_images": int(confused.sum())}
    return [*cells, *[total | {"confused_as": ""}] * 2]


def _rows(
    result: EvalResult, name: str, threshold: float | None, chosen: bool, s: Scores
) -> Iterator[dict]:
    """Per-class rows, then the `mean` and `fg_mean` rows, of one pass."""
    common = {
        "pass": name,
        "threshold": "" if threshold is None else f"{threshold:g}",
        "chosen_with_gt": int(chosen),
        "split": result.split,
        "every": result.every,
        "n_images": result.n_images,
    }
    iou, fp, fn, precision, recall = s.iou, s.fp, s.fn, s.precision, s.recall
    for c, class_name in enumerate(result.class_names):
        yield common | {
            "class_index": c,
            "class": class_name,
            "iou": _pct(iou[c]),
            "iou_official": _pct(np.nan_to_num(iou[c], nan=0.0)),
            "fp": _pct(fp[c]),
            "fn": _pct(fn[c]),
            "precision": _pct(precision[c]),
            "recall": _pct(recall[c]),
            "tp": int(s.tp[c]),
            "gt_pixels": int(s.gt_pixels[c]),
            "pred_pixels": int(s.pred_pixels[c]),
            "pixel_accuracy": "",
        }
    for label, first in ((MEAN, 0), (FG_MEAN, 1)):
        yield common | {
            "class_index": "",
            "class": label,
            "iou": _pct(s.miou(first)),
            "iou_official": _pct(s.miou_official(first)),
            "fp": _pct(nanmean(fp[first:])),
            "fn": _pct(nanmean(fn[first:])),
            "precision": _pct(nanmean(precision[first:])),
            "recall": _pct(nanmean(recall[first:])),
            "tp": int(s.tp[first:].sum()),
            "gt_pixels": int(s.gt_pixels[first:].sum()),
            "pred_pixels": int(s.pred_pixels[first:].sum()),
            "pixel_accuracy": _pct(s.pixel_accuracy) if first == 0 else "",
        }


def write_csv(result: EvalResult, path: Path) -> None:
    """Write the long-format evaluation CSV atomically (format: docs/evaluation.md)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*COLUMNS, *CLASS_COLUMNS], lineterminator="\n")
    writer.writeheader()
    best = result.best_index
    sweep = zip(result.sweep, result.sweep_class_counts(), strict=True)
    passes = [
        ("configured", result.threshold, False, result.scores, result.class_images),
        *(("sweep", th, i == best, s, counts) for i, ((th, s), counts) in enumerate(sweep)),
    ]
    for name, threshold, chosen, scores, counts in passes:
        rows = _rows(result, name, threshold, chosen, scores)
        cells = _class_cells(result.class_names, counts)
        writer.writerows(row | cell for row, cell in zip(rows, cells, strict=True))
    write_text(path, buf.getvalue())


def _read_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read evaluation CSV ({exc})") from exc
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: not an evaluation CSV (missing columns {missing})")
    return [dict.fromkeys(CLASS_COLUMNS, "") | row for row in rows]  # empty in an older CSV


def _find(rows: list[dict[str, str]], path: Path, **match: str) -> dict[str, str]:
    for row in rows:
        if all(row[k] == v for k, v in match.items()):
            return row
    raise DataError(f"{path}: no row with {match}")


def _number(row: dict[str, str], key: str, path: Path) -> float | None:
    text = row[key]
    if text == "":
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise DataError(f"{path}: column {key!r} holds {text!r}, not a number") from exc


def read_summary(path: Path) -> dict:
    """Main numbers of an evaluation CSV; IoUs and accuracy in percent, sweep fields None if none.

    Keys: n_images, threshold, miou, fg_miou, miou_official, pixel_accuracy, best_threshold,
    best_miou, class_images, confused_images (the foreground totals; None in a CSV without them).
    """
    path = Path(path)
    rows = _read_rows(path)
    mean = _find(rows, path, **{"pass": "configured", "class_index": "", "class": MEAN})
    fg = _find(rows, path, **{"pass": "configured", "class_index": "", "class": FG_MEAN})
    best = [
        r
        for r in rows
        if r["pass"] == "sweep" and r["chosen_with_gt"] == "1" and r["class"] == MEAN
    ]
    try:
        n_images = int(mean["n_images"])
    except ValueError as exc:
        raise DataError(f"{path}: n_images {mean['n_images']!r} is not an integer") from exc
    return {
        "n_images": n_images,
        "threshold": _number(mean, "threshold", path),
        "miou": _number(mean, "iou", path),
        "fg_miou": _number(fg, "iou", path),
        "miou_official": _number(mean, "iou_official", path),
        "pixel_accuracy": _number(mean, "pixel_accuracy", path),
        "best_threshold": _number(best[0], "threshold", path) if best else None,
        "best_miou": _number(best[0], "iou", path) if best else None,
        **{k: _count(fg, k, path) for k in ("class_images", "confused_images")},
    }


def _count(row: dict[str, str], key: str, path: Path) -> int | None:
    """An integer cell of a `CLASS_COLUMNS` column; None when empty."""
    value = _number(row, key, path)
    return None if value is None else int(value)


def read_class_rows(path: Path) -> list[dict[str, str]]:
    """The per-class rows of the configured/PNG pass, cells as written (`CLASS_COLUMNS` empty
    in a CSV without them); DataError naming the file when it has none."""
    path = Path(path)
    rows = [r for r in _read_rows(path) if r["pass"] == "configured" and r["class_index"] != ""]
    if not rows:
        raise DataError(f"{path}: no per-class rows")
    return rows


def read_per_class(path: Path) -> dict[str, float]:
    """Class name -> IoU as a fraction (NaN: absent from both) of the configured/PNG pass."""
    out = {}
    for row in read_class_rows(path):
        value = _number(row, "iou", Path(path))
        out[row["class"]] = math.nan if value is None else value / 100
    return out

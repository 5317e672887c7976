"""Score label PNGs or score maps against ground-truth masks (spec 3.4, 9, 15.4).

The core is one int64 confusion matrix per background threshold, built with `np.bincount`.
Rows are ground-truth classes 0..C-1 (GT pixels equal to 255 are dropped); columns are predicted
classes 0..C-1 plus a last column C for predictions of 255, which are in no class's predicted
pixels and so count as misses of the GT class (spec 9.1).

A score map (K, H, W) of foreground scores is turned into labels as upstream does: pad a constant
background channel equal to the threshold, take the argmax (ties go to the lower channel, so a
score equal to the threshold is background) and map channel k to `keys[k]`. All thresholds of a
sweep come from one pass over the pixels: a pixel is foreground at threshold t exactly when its
best foreground score exceeds t, so it is binned by how many thresholds lie below that score.

Conventions (spec 15.4): every image of the list by default (`every=8` gives the official
subset, spec 9.3); a class absent from both prediction and GT has IoU NaN and is left out of
`miou`, while `miou_official` counts it as 0 as upstream does. Torch-free: runs in a process pool.
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pcam.data.voc import DatasetSpec, gt_mask, read_split
from pcam.errors import ConfigError, DataError
from pcam.io import IGNORE_INDEX, find_in_dirs, load_label_png, load_scores, write_text

# ----------------------------------------------------------------------------- pure core


def _indices(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels as intp indices, 255 moved to `num_classes` (GT: dropped row; pred: last column)."""
    out = labels.astype(np.intp)
    out[labels == IGNORE_INDEX] = num_classes
    return out


def label_confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C+1) int64 counts of (GT class, predicted class) for HxW uint8 label maps.

    GT 255 pixels are ignored; predicted 255 goes to column C. Values must lie in 0..C-1 or 255.
    """
    c = num_classes
    index = _indices(gt, c)
    index *= c + 1
    index += _indices(pred, c)
    counts = np.bincount(index.ravel(), minlength=(c + 1) ** 2)
    return counts.reshape(c + 1, c + 1)[:c].astype(np.int64, copy=False)


def _top_channel(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argmax, max) over the channels of (K>=1, H, W); ties go to the lower channel.

    A loop over the few channels is several times faster than `argmax(axis=0)` here.
    """
    top = scores[0].copy()
    best = np.zeros(top.shape, dtype=np.intp)
    for k in range(1, len(scores)):
        best[scores[k] > top] = k
        np.maximum(top, scores[k], out=top)
    return best, top


def score_confusion(
    gt: np.ndarray, scores: np.ndarray, keys: np.ndarray, grid: np.ndarray, num_classes: int
) -> np.ndarray:
    """(T, C, C+1) int64 confusion matrices, one per background threshold of `grid`.

    `scores` is (K, H, W) float32 foreground scores whose channel k is class `keys[k + 1]`
    (`keys[0]` is background); `grid` is the sorted float32 thresholds (T,). At threshold t a
    pixel is `keys[1 + argmax]` when its best score exceeds t, else background.
    """
    c, t = num_classes, len(grid)
    index = _indices(gt, c)
    index *= c
    if scores.shape[0]:
        best, top = _top_channel(scores)
        index += np.asarray(keys, dtype=np.intp)[1:][best]
        index *= t + 1
        for threshold in grid:  # + the number of thresholds strictly below `top`
            index += top > threshold
    else:
        index *= t + 1  # label background, below every threshold
    counts = np.bincount(index.ravel(), minlength=(c + 1) * c * (t + 1))
    counts = counts.reshape(c + 1, c, t + 1)[:c]
    # Foreground at grid[j] <=> level > j: reversed cumulative sums over the level axis.
    above = np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1][..., 1:]  # (C, C, T)
    out = np.zeros((t, c, c + 1), dtype=np.int64)
    out[:, :, :c] = above.transpose(2, 0, 1)
    out[:, :, 0] += (counts.sum(axis=(1, 2))[:, None] - above.sum(axis=1)).T  # background
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite entries; NaN (without a warning) when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ratio as float64, NaN where the denominator is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


@dataclass(frozen=True)
class Scores:
    """Per-class statistics of one confusion matrix (spec 9.1); ratios are fractions.

    `tp`, `gt_pixels`, `pred_pixels` are (C,) int64 counts over non-void GT pixels. IoU, FP and
    FN divide by the union and are NaN for a class absent from both prediction and GT.
    """

    tp: np.ndarray
    gt_pixels: np.ndarray
    pred_pixels: np.ndarray

    @classmethod
    def from_confusion(cls, confusion: np.ndarray) -> Scores:
        """Scores of a (C, C+1) confusion matrix (rows GT, columns prediction, last = 255)."""
        c = confusion.shape[0]
        return cls(
            tp=np.diagonal(confusion[:, :c]).copy(),
            gt_pixels=confusion.sum(axis=1),
            pred_pixels=confusion[:, :c].sum(axis=0),
        )

    def _ratio(self, numerator: np.ndarray) -> np.ndarray:
        return _divide(numerator, self.gt_pixels + self.pred_pixels - self.tp)

    @property
    def iou(self) -> np.ndarray:
        """TP / (T + P - TP) per class."""
        return self._ratio(self.tp)

    @property
    def fp(self) -> np.ndarray:
        """(P - TP) / union per class: over-activation."""
        return self._ratio(self.pred_pixels - self.tp)

    @property
    def fn(self) -> np.ndarray:
        """(T - TP) / union per class: under-activation (predicted 255 counts here)."""
        return self._ratio(self.gt_pixels - self.tp)

    @property
    def precision(self) -> np.ndarray:
        """TP / P per class (NaN when the class is never predicted)."""
        return _divide(self.tp, self.pred_pixels)

    @property
    def recall(self) -> np.ndarray:
        """TP / T per class (NaN when the class is not in the GT)."""
        return _divide(self.tp, self.gt_pixels)

    def miou(self, first: int = 0) -> float:
        """Mean IoU over classes `first`.. that occur in prediction or GT (absent ones skipped)."""
        return _nanmean(self.iou[first:])

    def miou_official(self, first: int = 0) -> float:
        """Mean IoU over classes `first`.., absent-from-both counted as 0 (upstream)."""
        return float(np.nan_to_num(self.iou[first:], nan=0.0).mean())

    @property
    def pixel_accuracy(self) -> float:
        """Correct pixels / non-void GT pixels (NaN when there are none)."""
        total = int(self.gt_pixels.sum())
        return int(self.tp.sum()) / total if total else math.nan


# ----------------------------------------------------------------------------- result


@dataclass(frozen=True)
class EvalResult:
    """Confusion matrices of one evaluation.

    `confusion` (C, C+1) is the pass at `threshold` (None for label PNGs); `sweep_confusion`
    (T, C, C+1) holds one matrix per entry of `sweep_thresholds` (empty without a sweep).
    """

    split: str
    class_names: list[str]
    every: int
    n_images: int
    threshold: float | None
    confusion: np.ndarray
    sweep_thresholds: list[float] = field(default_factory=list)
    sweep_confusion: np.ndarray | None = None

    @property
    def scores(self) -> Scores:
        """Scores at the configured threshold (or of the PNG pass)."""
        return Scores.from_confusion(self.confusion)

    @property
    def sweep(self) -> list[tuple[float, Scores]]:
        """(threshold, scores) for each threshold of the sweep, in the given order."""
        if self.sweep_confusion is None:
            return []
        return [
            (th, Scores.from_confusion(cm))
            for th, cm in zip(self.sweep_thresholds, self.sweep_confusion, strict=True)
        ]

    @property
    def best_index(self) -> int | None:
        """Index of the sweep threshold with the highest mIoU (first on ties), chosen WITH GT."""
        mious = [s.miou() for _, s in self.sweep]
        valid = [i for i, m in enumerate(mious) if not math.isnan(m)]
        return max(valid, key=mious.__getitem__) if valid else None

    def describe(self) -> str:
        """A few human-readable lines: main numbers, then the sweep's best threshold."""
        s = self.scores
        at = "label PNGs" if self.threshold is None else f"threshold {self.threshold:g}"
        subset = (
            "" if self.every == 1 else f" (list indices 0, {self.every}, {2 * self.every}, ...)"
        )
        lines = [
            f"{self.split}: {self.n_images} images{subset}, {at}: mIoU {100 * s.miou():.2f}% "
            f"(absent classes as 0: {100 * s.miou_official():.2f}%), "
            f"fg mIoU {100 * s.miou(1):.2f}%, pixel accuracy {100 * s.pixel_accuracy:.2f}%"
        ]
        if self.best_index is not None:
            th, best = self.sweep[self.best_index]
            lines.append(
                f"sweep {min(self.sweep_thresholds):g}..{max(self.sweep_thresholds):g}: best "
                f"threshold {th:g}, mIoU {100 * best.miou():.2f}% "
                "(threshold chosen with ground truth)"
            )
        return "\n".join(lines)


# ----------------------------------------------------------------------------- file edges


@dataclass(frozen=True)
class _Job:
    """What a worker needs to score a chunk of ids."""

    spec: DatasetSpec
    pred_dirs: tuple[Path, ...]
    score_key: str | None
    grid: np.ndarray | None  # sorted float32 thresholds; None for label PNGs


def _load_gt(spec: DatasetSpec, image_id: str) -> np.ndarray:
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
    gt = _load_gt(job.spec, image_id)
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


def _chunk_confusion(job: _Job, ids: Sequence[str]) -> np.ndarray:
    """Summed counts of a chunk of ids (one pool task)."""
    return sum((_image_confusion(job, i) for i in ids[1:]), _image_confusion(job, ids[0]))


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
) -> EvalResult:
    """Score the predictions of split `split` (ids 0, every, 2*every, ...) against GT masks.

    Label PNGs `{id}.png` when `score_key` is None, else score archives `{id}.npz` whose array
    `score_key` is thresholded at `threshold` and at each of `thresholds` (the sweep). Predictions
    are looked up in `pred_dirs` (shards). Missing or malformed files -> DataError naming them.
    """
    if every < 1 or workers < 1:
        raise ConfigError(f"--every/--workers: must be >= 1, got {every}, {workers}")
    wanted = _threshold_grid(score_key, threshold, thresholds)
    ids = read_split(spec, split)[::every]
    if not ids:
        raise DataError(f"{spec.split_path(split)}: split list is empty")
    grid = None if wanted is None else np.unique(np.asarray(wanted, dtype=np.float32))
    job = _Job(spec, tuple(Path(d) for d in pred_dirs), score_key, grid)
    per_task = max(1, min(32, math.ceil(len(ids) / (4 * workers))))
    chunks = [ids[i : i + per_task] for i in range(0, len(ids), per_task)]
    progress = partial(tqdm, total=len(chunks), desc=f"evaluate {split}", disable=None)
    task = partial(_chunk_confusion, job)
    if workers == 1 or len(chunks) == 1:
        total = sum(progress(map(task, chunks)))
    else:
        with multiprocessing.Pool(min(workers, len(chunks))) as pool:
            total = sum(progress(pool.imap_unordered(task, chunks)))
    if grid is None:
        return EvalResult(split, spec.class_names, every, len(ids), None, total[0])
    at = np.searchsorted(grid, np.asarray(wanted, dtype=np.float32))
    return EvalResult(
        split,
        spec.class_names,
        every,
        len(ids),
        threshold,
        total[at[0]],
        sweep_thresholds=list(thresholds or []),
        sweep_confusion=total[at[1:]] if thresholds else None,
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
MEAN, FG_MEAN = "mean", "fg_mean"


def _pct(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.4f}"


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
            "fp": _pct(_nanmean(fp[first:])),
            "fn": _pct(_nanmean(fn[first:])),
            "precision": _pct(_nanmean(precision[first:])),
            "recall": _pct(_nanmean(recall[first:])),
            "tp": int(s.tp[first:].sum()),
            "gt_pixels": int(s.gt_pixels[first:].sum()),
            "pred_pixels": int(s.pred_pixels[first:].sum()),
            "pixel_accuracy": _pct(s.pixel_accuracy) if first == 0 else "",
        }


def write_csv(result: EvalResult, path: Path) -> None:
    """Write the long-format evaluation CSV atomically (format: docs/evaluation.md)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_rows(result, "configured", result.threshold, False, result.scores))
    best = result.best_index
    for i, (th, s) in enumerate(result.sweep):
        writer.writerows(_rows(result, "sweep", th, i == best, s))
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
    return rows


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
    best_miou.
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
    }


def read_per_class(path: Path) -> dict[str, float]:
    """Class name -> IoU as a fraction (NaN: absent from both) of the configured/PNG pass."""
    path = Path(path)
    out = {}
    for row in _read_rows(path):
        if row["pass"] == "configured" and row["class_index"] != "":
            value = _number(row, "iou", path)
            out[row["class"]] = math.nan if value is None else value / 100
    if not out:
        raise DataError(f"{path}: no per-class rows")
    return out

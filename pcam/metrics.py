"""Segmentation metrics: confusion counts, the background-threshold sweep and the scores
(spec 3.4, 9, 15.4). Pure: arrays in, arrays and numbers out, no files (`pcam.evaluate` is the
file and CSV edge).

The core is one int64 confusion matrix per background threshold, built with `np.bincount`.
Rows are ground-truth classes 0..C-1 (GT pixels equal to 255 are dropped); columns are predicted
classes 0..C-1 plus a last column C for predictions of 255, which are in no class's predicted
pixels and so count as misses of the GT class (spec 9.1).

A score map (K, H, W) of foreground scores is turned into labels as upstream does: pad a constant
background channel equal to the threshold, take the argmax (ties go to the lower channel, so a
score equal to the threshold is background) and map channel k to `keys[k]`. All thresholds of a
sweep come from one pass over the pixels: a pixel is foreground at threshold t exactly when its
best foreground score exceeds t, so it is binned by how many thresholds lie below that score.

Conventions (spec 15.4): a class absent from both prediction and GT has IoU NaN and is left out
of `miou`, while `miou_official` counts it as 0 as upstream does.

Besides the pixels, each image's confusion matrix says which of its classes were given to another
class wholesale (`class_image_counts`): a pixel mIoU mixes such whole-region swaps with border
errors, and a segmentation network trained on the labels learns the swaps as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pcam.io import IGNORE_INDEX


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


def class_image_counts(confusion: np.ndarray) -> np.ndarray:
    """(..., C, C) int64 class-level counts of one image's (..., C, C+1) confusion matrices.

    [c, c] is 1 when foreground class c is in the image's GT; [c, d] (d != c, both foreground)
    is 1 when class d holds more than half of c's GT pixels: the class's region was labelled as
    another class. Row and column 0 (background) are 0. Summed over images, [c, c] counts the
    images with class c and the rest of row c the images where it was taken for d.
    """
    c = confusion.shape[-2]
    gt = confusion.sum(axis=-1)  # (..., C)
    out = (2 * confusion[..., :c] > gt[..., :, None]).astype(np.int64)
    diagonal = np.arange(c)
    out[..., diagonal, diagonal] = gt > 0
    out[..., 0, :] = 0
    out[..., :, 0] = 0
    return out


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


def nanmean(values: np.ndarray) -> float:
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
        return nanmean(self.iou[first:])

    def miou_official(self, first: int = 0) -> float:
        """Mean IoU over classes `first`.., absent-from-both counted as 0 (upstream)."""
        return float(np.nan_to_num(self.iou[first:], nan=0.0).mean())

    @property
    def pixel_accuracy(self) -> float:
        """Correct pixels / non-void GT pixels (NaN when there are none)."""
        total = int(self.gt_pixels.sum())
        return int(self.tp.sum()) / total if total else math.nan


@dataclass(frozen=True)
class EvalResult:
    """Confusion matrices of one evaluation.

    `confusion` (C, C+1) is the pass at `threshold` (None for label PNGs); `sweep_confusion`
    (T, C, C+1) holds one matrix per entry of `sweep_thresholds` (empty without a sweep).
    `class_images` (C, C) and `sweep_class_images` (T, C, C) are the matching sums of
    `class_image_counts` over the images (None when not counted).
    """

    split: str
    class_names: list[str]
    every: int
    n_images: int
    threshold: float | None
    confusion: np.ndarray
    sweep_thresholds: list[float] = field(default_factory=list)
    sweep_confusion: np.ndarray | None = None
    class_images: np.ndarray | None = None
    sweep_class_images: np.ndarray | None = None

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

    def sweep_class_counts(self) -> list[np.ndarray | None]:
        """The (C, C) class-level counts of each sweep threshold (None when not counted)."""
        if self.sweep_class_images is None:
            return [None] * len(self.sweep)
        return list(self.sweep_class_images)

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

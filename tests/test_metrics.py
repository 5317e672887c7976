"""The metric core: confusion counts by hand, the one-pass threshold sweep, IoU conventions."""

from __future__ import annotations

import numpy as np
import pytest

from pcam.metrics import EvalResult, Scores, label_confusion, score_confusion

# 2x4 ground truth and prediction, worked by hand (255 = void):
#   GT    0 0 1   1       pred  0 1 1 255
#         1 1 255 0             0 1 0 0
# GT background (3 px) is predicted 0, 1, 0; GT cat (4 px) 1, 255, 0, 1; the void GT pixel is
# ignored. background: TP 2, T 3, P 3 -> IoU 2/4; cat: TP 2, T 4, P 3 -> IoU 2/5.
GT = np.array([[0, 0, 1, 1], [1, 1, 255, 0]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 255], [0, 1, 0, 0]], dtype=np.uint8)


def test_label_confusion_counts_by_hand() -> None:
    cm = label_confusion(GT, PRED, 4)
    assert cm.dtype == np.int64 and cm.shape == (4, 5)
    assert cm[0].tolist() == [2, 1, 0, 0, 0]
    assert cm[1].tolist() == [1, 2, 0, 0, 1]  # the predicted 255 lands in the last column
    assert cm[2:].sum() == 0 and cm.sum() == 7


def test_scores_iou_fp_fn_and_absent_classes() -> None:
    s = Scores.from_confusion(label_confusion(GT, PRED, 4))
    assert s.iou[:2].tolist() == [0.5, 0.4]
    assert np.isnan(s.iou[2:]).all()  # dog and bird are absent from both
    assert s.fp[0] == pytest.approx(1 / 4) and s.fn[0] == pytest.approx(1 / 4)
    assert s.fp[1] == pytest.approx(1 / 5) and s.fn[1] == pytest.approx(2 / 5)  # 255: a miss
    assert s.precision[:2] == pytest.approx([2 / 3, 2 / 3]) and np.isnan(s.precision[2])
    assert s.recall[:2] == pytest.approx([2 / 3, 1 / 2]) and np.isnan(s.recall[3])
    assert s.miou() == pytest.approx(0.45)  # absent classes excluded
    assert s.miou_official() == pytest.approx(0.9 / 4)  # absent classes count as 0
    assert s.miou(1) == pytest.approx(0.4)
    assert s.pixel_accuracy == pytest.approx(4 / 7)


def test_score_confusion_matches_padded_argmax() -> None:
    """The one-pass sweep equals upstream's recipe: pad threshold channel, argmax, map keys."""
    rng = np.random.default_rng(0)
    grid = np.array([0.1, 0.25, 0.5, 0.75], dtype=np.float32)
    for _ in range(20):
        k = int(rng.integers(0, 4))
        keys = np.array([0, *np.sort(rng.choice([1, 2, 3], k, replace=False))])
        scores = (rng.integers(0, 5, (k, 6, 7)) / 4).astype(np.float32)  # many exact ties
        gt = rng.integers(0, 4, (6, 7)).astype(np.uint8)
        gt[rng.random((6, 7)) < 0.2] = 255
        out = score_confusion(gt, scores, keys, grid, 4)
        for j, th in enumerate(grid):
            padded = np.concatenate([np.full((1, 6, 7), th, np.float32), scores])
            pred = keys[padded.argmax(axis=0)].astype(np.uint8)
            np.testing.assert_array_equal(out[j], label_confusion(gt, pred, 4))


def test_best_sweep_threshold_is_the_first_of_the_highest_miou() -> None:
    """Sweep passes of 0.1/0.2/0.3: the last two score the same mIoU, so 0.2 is chosen; the
    configured pass is reported apart from the sweep."""
    good = np.array([[3, 0, 0], [0, 3, 0]], dtype=np.int64)  # (C=2, C+1) confusion: all right
    bad = np.array([[1, 2, 0], [2, 1, 0]], dtype=np.int64)
    result = EvalResult(
        "train", ["background", "cat"], 1, 2, 0.1, bad,
        sweep_thresholds=[0.1, 0.2, 0.3], sweep_confusion=np.stack([bad, good, good]),
    )  # fmt: skip
    assert result.scores.miou() == pytest.approx(0.2)
    assert result.best_index == 1 and result.sweep[1][0] == 0.2
    assert "best threshold 0.2, mIoU 100.00%" in result.describe()
    empty = EvalResult("val", ["background", "cat"], 8, 1, None, bad)
    assert empty.sweep == [] and empty.best_index is None and "sweep" not in empty.describe()

"""Evaluation: confusion counts, IoU conventions, thresholds, the every-N subset and the CSV."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from pcam.data.voc import DatasetSpec, read_split, voc_palette
from pcam.errors import ConfigError, DataError
from pcam.evaluate import evaluate_predictions, read_per_class, read_summary, write_csv
from pcam.io import save_label_png, save_scores, write_text
from pcam.metrics import label_confusion
from tests.test_metrics import GT, PRED

CLASSES = ["background", "cat", "dog", "bird"]
PALETTE = voc_palette(len(CLASSES))


def _dataset(root: Path, masks: dict[str, np.ndarray], split: str = "train") -> DatasetSpec:
    """A VOC-layout tree holding only GT masks and one split list (no images needed here)."""
    spec = DatasetSpec(root, CLASSES, PALETTE)
    for image_id, mask in masks.items():
        save_label_png(spec.mask_path(image_id), mask, PALETTE)
    write_text(spec.split_path(split), "".join(f"{i}\n" for i in masks))
    return spec


def _evaluate(spec: DatasetSpec, pred_dirs: list[Path], **kwargs):
    options = dict(score_key=None, threshold=None, thresholds=None, every=1, workers=1)
    return evaluate_predictions(spec, "train", pred_dirs, **(options | kwargs))


def test_png_pass_scores_the_hand_worked_confusion(tmp_path: Path) -> None:
    spec = _dataset(tmp_path / "data", {"a": GT})
    save_label_png(tmp_path / "pred" / "a.png", PRED, PALETTE)
    result = _evaluate(spec, [tmp_path / "pred"])
    np.testing.assert_array_equal(result.confusion, label_confusion(GT, PRED, 4))
    assert result.scores.miou() == pytest.approx(0.45) and result.n_images == 1


def test_tie_goes_to_background_and_keys_map_channels(tmp_path: Path) -> None:
    gt = np.array([[0, 2, 3, 2]], dtype=np.uint8)
    spec = _dataset(tmp_path / "data", {"a": gt})
    # channel 0 is dog (2), channel 1 bird (3); column 0: score == threshold -> background;
    # column 3: dog and bird tie above the threshold -> the lower channel (dog)
    scores = np.array([[[0.5, 0.9, 0.1, 0.8]], [[0.5, 0.2, 0.7, 0.8]]])
    save_scores(tmp_path / "pred" / "a.npz", np.array([0, 2, 3]), hr_cam=scores)
    result = _evaluate(spec, [tmp_path / "pred"], score_key="hr_cam", threshold=0.5)
    assert result.scores.pixel_accuracy == 1.0
    assert result.confusion[0, 0] == 1 and result.confusion[2, 2] == 2


def test_float16_archive_gives_the_same_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 3, (16, 16)).astype(np.uint8)
    spec = _dataset(tmp_path / "data", {"a": gt})
    scores = rng.random((2, 16, 16)).astype(np.float16)  # exactly representable in both dtypes
    results = []
    for dtype in ("float32", "float16"):
        save_scores(tmp_path / dtype / "a.npz", np.array([0, 1, 2]), dtype=dtype, rw=scores)
        results.append(
            _evaluate(spec, [tmp_path / dtype], score_key="rw", threshold=0.4, thresholds=[0.2])
        )
    np.testing.assert_array_equal(results[0].confusion, results[1].confusion)
    np.testing.assert_array_equal(results[0].sweep_confusion, results[1].sweep_confusion)
    assert 0 < results[0].scores.miou() < 1


def _sweep_case(tmp_path: Path) -> tuple[DatasetSpec, Path]:
    """Cat pixels score 0.5, background pixels 0.3: thresholds in [0.3, 0.5) are perfect."""
    gt = np.zeros((4, 4), dtype=np.uint8)
    gt[1:3, 1:3] = 1
    spec = _dataset(tmp_path / "data", {"a": gt})
    scores = np.where(gt == 1, 0.5, 0.3)[None]
    save_scores(tmp_path / "pred" / "a.npz", np.array([0, 1]), hr_cam=scores)
    return spec, tmp_path / "pred"


def test_aug_masks_score_against_the_training_masks(tmp_path: Path) -> None:
    # "a" has both masks (they differ: the aug one wins), "b" only SegmentationClassAug (the
    # extra train_aug images of VOC)
    spec = _dataset(tmp_path / "data", {"a": GT})
    save_label_png(spec.mask_path("a", aug=True), PRED, PALETTE)
    save_label_png(spec.mask_path("b", aug=True), GT, PALETTE)
    write_text(spec.split_path("train"), "a\nb\n")
    for image_id, pred in (("a", PRED), ("b", GT)):
        save_label_png(tmp_path / "pred" / f"{image_id}.png", pred, PALETTE)
    with pytest.raises(DataError, match=r"SegmentationClass/b\.png: ground-truth mask is missing"):
        _evaluate(spec, [tmp_path / "pred"])
    result = _evaluate(spec, [tmp_path / "pred"], aug_masks=True)
    assert result.scores.pixel_accuracy == 1.0 and result.n_images == 2
    (spec.mask_path("b", aug=True)).unlink()
    with pytest.raises(DataError, match=r"SegmentationClassAug/b\.png: missing, and so is"):
        _evaluate(spec, [tmp_path / "pred"], aug_masks=True)


def test_sweep_picks_the_best_threshold(tmp_path: Path) -> None:
    spec, pred = _sweep_case(tmp_path)
    sweep = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    result = _evaluate(spec, [pred], score_key="hr_cam", threshold=0.1, thresholds=sweep)
    assert result.scores.miou() == pytest.approx((0 + 4 / 16) / 2)  # all cat at 0.1
    mious = [s.miou() for _, s in result.sweep]
    assert mious[2] == mious[3] == 1.0 and max(mious[:2] + mious[4:]) < 1
    assert result.best_index == 2  # 0.3: ties with 0.4, the first wins
    assert "best threshold 0.3" in result.describe()
    assert "chosen with ground truth" in result.describe()


def test_every_scores_only_the_official_subset(tmp_path: Path) -> None:
    gt = np.zeros((4, 4), dtype=np.uint8)
    gt[:2] = 2
    masks = {f"im{i:02d}": gt for i in range(17)}
    spec = _dataset(tmp_path / "data", masks)
    for i, image_id in enumerate(masks):
        pred = gt if i % 8 == 0 else np.zeros_like(gt)  # right only at indices 0, 8, 16
        save_label_png(tmp_path / "pred" / f"{image_id}.png", pred, PALETTE)
    subset = _evaluate(spec, [tmp_path / "pred"], every=8)
    full = _evaluate(spec, [tmp_path / "pred"])
    assert (subset.n_images, full.n_images) == (3, 17)
    assert subset.scores.miou() == 1.0 and full.scores.miou() < 0.5


def test_shards_and_two_workers_agree_with_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    masks = {f"im{i}": rng.integers(0, 4, (8, 8)).astype(np.uint8) for i in range(10)}
    spec = _dataset(tmp_path / "data", masks)
    for i, image_id in enumerate(masks):  # predictions spread over two shard directories
        pred = rng.integers(0, 4, (8, 8)).astype(np.uint8)
        save_label_png(tmp_path / f"shard{i % 2}" / f"{image_id}.png", pred, PALETTE)
    dirs = [tmp_path / "shard0", tmp_path / "shard1"]
    one, two = _evaluate(spec, dirs), _evaluate(spec, dirs, workers=2)
    np.testing.assert_array_equal(one.confusion, two.confusion)
    assert one.confusion.sum() == 10 * 64


def test_csv_round_trip_with_sweep(tmp_path: Path) -> None:
    spec, pred = _sweep_case(tmp_path)
    result = _evaluate(spec, [pred], score_key="hr_cam", threshold=0.1, thresholds=[0.2, 0.4])
    write_csv(result, tmp_path / "eval" / "cam.csv")
    summary = read_summary(tmp_path / "eval" / "cam.csv")
    assert summary == {
        "n_images": 1,
        "threshold": 0.1,
        "miou": pytest.approx(12.5),
        "fg_miou": pytest.approx(25.0),
        "miou_official": pytest.approx(100 * 0.25 / 4),
        "pixel_accuracy": pytest.approx(25.0),
        "best_threshold": 0.4,
        "best_miou": pytest.approx(100.0),
        "class_images": 1,  # the cat of the one image
        "confused_images": 0,
    }
    per_class = read_per_class(tmp_path / "eval" / "cam.csv")
    assert list(per_class) == CLASSES
    assert per_class["background"] == 0 and per_class["cat"] == pytest.approx(0.25)
    assert math.isnan(per_class["dog"]) and math.isnan(per_class["bird"])
    assert not list((tmp_path / "eval").glob(".*"))  # no temporary file left behind


def test_class_swaps_are_counted_per_image_and_named(tmp_path: Path) -> None:
    cat_dog = np.zeros((4, 4), dtype=np.uint8)
    cat_dog[:2], cat_dog[2:, :2] = 1, 2  # 8 cat pixels, 4 dog pixels
    swapped = cat_dog.copy()
    swapped[:2, :3] = 2  # 6 of the 8 cat pixels labelled dog: the cat was taken for a dog
    half = cat_dog.copy()
    half[:2, :2] = 2  # exactly half: not a swap
    masks = {"swap": cat_dog, "half": cat_dog, "right": cat_dog}
    spec = _dataset(tmp_path / "data", masks)
    for image_id, pred in (("swap", swapped), ("half", half), ("right", cat_dog)):
        save_label_png(tmp_path / "pred" / f"{image_id}.png", pred, PALETTE)
    result = _evaluate(spec, [tmp_path / "pred"])
    counts = result.class_images
    assert counts[1, 1] == counts[2, 2] == 3 and counts[1, 2] == 1
    assert counts.sum() == 7 and counts[0].sum() == counts[:, 0].sum() == 0
    write_csv(result, tmp_path / "eval.csv")
    rows = {r["class"]: r for r in csv.DictReader(open(tmp_path / "eval.csv"))}
    assert (rows["cat"]["confused_images"], rows["cat"]["confused_as"]) == ("1", "dog")
    assert (rows["dog"]["confused_images"], rows["dog"]["confused_as"]) == ("0", "")
    assert rows["background"]["class_images"] == "" and rows["bird"]["class_images"] == "0"
    summary = read_summary(tmp_path / "eval.csv")
    assert (summary["class_images"], summary["confused_images"]) == (6, 1)


def test_class_counts_follow_the_sweep(tmp_path: Path) -> None:
    spec, pred = _sweep_case(tmp_path)
    result = _evaluate(spec, [pred], score_key="hr_cam", threshold=0.1, thresholds=[0.2, 0.4])
    assert [int(c[1, 1]) for c in result.sweep_class_counts()] == [1, 1]
    write_csv(result, tmp_path / "cam.csv")
    sweep_rows = [r for r in csv.DictReader(open(tmp_path / "cam.csv")) if r["pass"] == "sweep"]
    assert {r["class_images"] for r in sweep_rows if r["class"] == "cat"} == {"1"}


def test_a_csv_without_class_counts_still_reads(tmp_path: Path) -> None:
    spec = _dataset(tmp_path / "data", {"a": GT})
    save_label_png(tmp_path / "pred" / "a.png", PRED, PALETTE)
    write_csv(_evaluate(spec, [tmp_path / "pred"]), tmp_path / "new.csv")
    old = [",".join(line.split(",")[:-3]) for line in (tmp_path / "new.csv").read_text().split()]
    (tmp_path / "old.csv").write_text("\n".join(old) + "\n")
    summary = read_summary(tmp_path / "old.csv")
    assert summary["class_images"] is None and summary["confused_images"] is None
    assert summary["miou"] == read_summary(tmp_path / "new.csv")["miou"]


def test_csv_round_trip_png_has_no_threshold(tmp_path: Path) -> None:
    spec = _dataset(tmp_path / "data", {"a": GT})
    save_label_png(tmp_path / "pred" / "a.png", PRED, PALETTE)
    write_csv(_evaluate(spec, [tmp_path / "pred"]), tmp_path / "png.csv")
    summary = read_summary(tmp_path / "png.csv")
    assert summary["threshold"] is None and summary["best_miou"] is None
    assert summary["miou"] == pytest.approx(45.0)
    assert summary["miou_official"] == pytest.approx(22.5)
    assert summary["pixel_accuracy"] == pytest.approx(100 * 4 / 7, abs=1e-4)


def test_missing_files_and_bad_inputs_name_the_file(tmp_path: Path) -> None:
    spec = _dataset(tmp_path / "data", {"a": GT, "b": GT})
    save_label_png(tmp_path / "pred" / "a.png", PRED, PALETTE)
    for workers in (1, 2):  # raised in a pool worker, the error still reaches the caller
        with pytest.raises(DataError, match=r"b\.png: not found"):
            _evaluate(spec, [tmp_path / "pred"], workers=workers)
    spec.mask_path("b").unlink()
    with pytest.raises(DataError, match=r"SegmentationClass/b\.png"):
        _evaluate(spec, [tmp_path / "pred"])
    save_label_png(tmp_path / "pred" / "b.png", PRED[:, :3], PALETTE)
    save_label_png(spec.mask_path("b"), GT, PALETTE)
    with pytest.raises(DataError, match=r"pred/b\.png: prediction is \(2, 3\)"):
        _evaluate(spec, [tmp_path / "pred"])
    save_scores(tmp_path / "npz" / "a.npz", np.array([0, 1]), cam=np.zeros((1, 2, 4)))
    with pytest.raises(DataError, match=r"a\.npz: no array 'hr_cam'"):
        _evaluate(spec, [tmp_path / "npz"], score_key="hr_cam", threshold=0.3)
    with pytest.raises(ConfigError, match="threshold"):
        _evaluate(spec, [tmp_path / "npz"], score_key="hr_cam")
    with pytest.raises(ConfigError, match="only to score maps"):
        _evaluate(spec, [tmp_path / "pred"], threshold=0.3)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"bad\.csv"):
        read_summary(tmp_path / "bad.csv")


def test_demo_ground_truth_as_predictions_scores_100(demo_root: Path) -> None:
    spec = DatasetSpec.from_settings({"root": str(demo_root)})
    result = evaluate_predictions(
        spec,
        "train",
        [demo_root / "SegmentationClass"],
        score_key=None,
        threshold=None,
        thresholds=None,
        every=1,
        workers=2,
    )
    assert result.n_images == len(read_split(spec, "train")) == 12
    assert result.scores.miou() == 1.0 and result.scores.pixel_accuracy == 1.0
    assert result.scores.miou(1) == 1.0

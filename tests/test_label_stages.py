"""Affinity labels (spec 4) and pseudo-labels (spec 7) from score archives, with dense CRF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from pcam.config import load_config
from pcam.data.voc import DatasetSpec, read_split, training_mask
from pcam.errors import DataError
from pcam.io import IGNORE_INDEX, load_label_png, load_scores, save_label_png, save_scores
from pcam.labels import keys_to_labels, threshold_argmax
from pcam.stages.affinity_labels import combine, make_affinity_labels
from pcam.stages.pseudo_labels import ignore_if_tag_missing, make_pseudo_labels, pseudo_label_map

CONFIG = load_config(Path(__file__).resolve().parent.parent / "config" / "config.yaml")
AFFINITY = CONFIG["affinity_labels"]  # fg 0.40, bg 0.10, CRF 10 iterations (spec 15.5)
PSEUDO = CONFIG["pseudo_labels"]  # threshold 0.35, CRF 1 iteration
SPLIT = "train_aug"


def test_threshold_argmax_prefers_background_on_ties_and_maps_keys() -> None:
    scores = np.array([[[0.2, 0.5, 0.9]], [[0.1, 0.5, 0.95]]], dtype=np.float32)  # K=2, 1x3
    indices = threshold_argmax(scores, 0.5)
    np.testing.assert_array_equal(indices, [[0, 0, 2]])
    np.testing.assert_array_equal(keys_to_labels(indices, np.array([0, 4, 7])), [[0, 0, 7]])
    assert not threshold_argmax(np.zeros((0, 2, 3), np.float32), 0.3).any()  # no class: all bg


def test_combine_keeps_confident_classes_and_marks_uncertain() -> None:
    fg = np.array([[0, 0, 3, 3], [0, 5, 0, 0]], dtype=np.uint8)
    bg = np.array([[0, 3, 3, 0], [5, 5, 0, 3]], dtype=np.uint8)
    expected = np.array([[0, 255, 3, 3], [255, 5, 0, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(combine(fg, bg), expected)
    with pytest.raises(ValueError, match="shape"):
        combine(fg, bg[:1])


def _blurred_one_hot(mask: np.ndarray, classes: list[int], radius: float) -> np.ndarray:
    """(K, H, W) float32 CAM stand-ins: each class's mask blurred, max-normalised to 1."""
    maps = []
    for c in classes:
        blurred = Image.fromarray(np.uint8(mask == c) * 255).filter(
            ImageFilter.GaussianBlur(radius)
        )
        m = np.asarray(blurred, dtype=np.float32)
        maps.append(m / m.max())
    return np.stack(maps) if maps else np.zeros((0, *mask.shape), np.float32)


@pytest.fixture(scope="module")
def spec(demo_root: Path) -> DatasetSpec:
    return DatasetSpec.from_settings({"root": str(demo_root)})


@pytest.fixture(scope="module")
def score_dir(spec: DatasetSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`{id}.npz` for SPLIT and val, with `keys`, `hr_cam` and `rw` made from the GT mask."""
    out = tmp_path_factory.mktemp("scores")
    for image_id in read_split(spec, SPLIT) + read_split(spec, "val"):
        mask = training_mask(spec, image_id)
        classes = sorted(int(c) for c in np.unique(mask) if c not in (0, IGNORE_INDEX))
        cam = _blurred_one_hot(mask, classes, radius=2.0)
        save_scores(out / f"{image_id}.npz", [0, *classes], hr_cam=cam, rw=0.9 * cam)
    return out


def _accuracy(spec: DatasetSpec, out_dir: Path, ids: list[str], ignore: bool) -> float:
    """Pixel accuracy of the PNGs against the GT, over non-255 pixels; also checks their values."""
    right = total = 0
    for image_id in ids:
        pred = load_label_png(out_dir / f"{image_id}.png")
        gt = training_mask(spec, image_id)
        present = set(np.unique(gt).tolist()) | {0} | ({IGNORE_INDEX} if ignore else set())
        assert pred.shape == gt.shape
        assert set(np.unique(pred).tolist()) <= present, image_id
        valid = pred != IGNORE_INDEX
        right += int((pred[valid] == gt[valid]).sum())
        total += int(valid.sum())
    return right / total


def test_affinity_labels_agree_with_gt(spec: DatasetSpec, score_dir: Path, tmp_path: Path) -> None:
    ids = read_split(spec, SPLIT)
    for shard in range(2):
        make_affinity_labels(
            spec, AFFINITY, cam_dirs=[tmp_path / "absent", score_dir], split=SPLIT,
            shard=shard, num_shards=2, out_dir=tmp_path / f"shard{shard}", workers=1 + shard,
        )  # fmt: skip
    for shard in range(2):
        made = sorted(p.stem for p in (tmp_path / f"shard{shard}").glob("*.png"))
        assert made == sorted(ids[shard::2])
    labels = {i: load_label_png(tmp_path / f"shard{ids.index(i) % 2}" / f"{i}.png") for i in ids}
    uncertain = np.mean([np.mean(m == IGNORE_INDEX) for m in labels.values()])
    assert 0.005 < uncertain < 0.3  # a band around objects, not everywhere
    assert all(set(np.unique(m).tolist()) - {0, IGNORE_INDEX} for m in labels.values())
    for shard in range(2):
        assert _accuracy(spec, tmp_path / f"shard{shard}", ids[shard::2], ignore=True) > 0.98


def test_pseudo_labels_agree_with_gt(spec: DatasetSpec, score_dir: Path, tmp_path: Path) -> None:
    ids = read_split(spec, SPLIT)
    make_pseudo_labels(
        spec, PSEUDO, rw_dirs=[score_dir], split=SPLIT, shard=0, num_shards=1,
        out_dir=tmp_path, workers=2,
    )  # fmt: skip
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(ids)
    assert all(IGNORE_INDEX not in load_label_png(tmp_path / f"{i}.png") for i in ids)
    assert _accuracy(spec, tmp_path, ids, ignore=False) > 0.97


def test_pseudo_labels_without_crf_are_the_thresholded_argmax(
    spec: DatasetSpec, score_dir: Path, tmp_path: Path
) -> None:
    settings = {**PSEUDO, "threshold": 0.5, "crf": {**PSEUDO["crf"], "iterations": 0}}
    make_pseudo_labels(
        spec, settings, rw_dirs=[score_dir], split="val", shard=0, num_shards=1,
        out_dir=tmp_path, workers=1,
    )  # fmt: skip
    for image_id in read_split(spec, "val"):
        data = load_scores(score_dir / f"{image_id}.npz")
        rw, keys = data["rw"], data["keys"]
        expected = np.where(rw.max(0) > 0.5, keys[1:][rw.argmax(0)], 0)
        np.testing.assert_array_equal(load_label_png(tmp_path / f"{image_id}.png"), expected)


def test_a_map_missing_a_tagged_class_keeps_only_its_background() -> None:
    keys = np.array([0, 3, 5])
    labels = np.array([[0, 3], [3, 0]], dtype=np.uint8)
    assert ignore_if_tag_missing(labels, keys).tolist() == [[0, IGNORE_INDEX], [IGNORE_INDEX, 0]]
    whole = np.array([[0, 3], [5, 0]], dtype=np.uint8)
    assert ignore_if_tag_missing(whole, keys) is whole
    assert ignore_if_tag_missing(whole, np.array([0])) is whole  # no tags: nothing can be missing


@pytest.mark.parametrize("ignore", [False, True])
def test_pseudo_label_map_ignores_missing_tags_only_when_asked(ignore: bool) -> None:
    """Class 5 is tagged but never above class 3's score: its object was taken for class 3."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    rw = np.zeros((2, 8, 8), np.float32)
    rw[0, :, 4:] = 0.9
    rw[1, :, 4:] = 0.6
    settings = {**PSEUDO, "crf": {**PSEUDO["crf"], "iterations": 0}, "ignore_missing_tags": ignore}
    labels = pseudo_label_map(image, rw, np.array([0, 3, 5]), settings)
    assert (labels[:, :4] == 0).all()
    assert (labels[:, 4:] == (IGNORE_INDEX if ignore else 3)).all()


def test_existing_pngs_are_kept_and_empty_shards_make_the_dir(
    spec: DatasetSpec, score_dir: Path, tmp_path: Path
) -> None:
    ids = read_split(spec, SPLIT)
    done = np.full((64, 64), 7, dtype=np.uint8)
    save_label_png(tmp_path / "out" / f"{ids[0]}.png", done, spec.palette)
    make_pseudo_labels(
        spec, PSEUDO, rw_dirs=[score_dir], split=SPLIT, shard=0, num_shards=8,
        out_dir=tmp_path / "out", workers=1,
    )  # fmt: skip
    np.testing.assert_array_equal(load_label_png(tmp_path / "out" / f"{ids[0]}.png"), done)
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.png")) == sorted(ids[::8])
    make_affinity_labels(
        spec, AFFINITY, cam_dirs=[score_dir], split=SPLIT, shard=len(ids), num_shards=len(ids) + 1,
        out_dir=tmp_path / "empty", workers=2,
    )  # fmt: skip
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


def test_bad_score_archives_name_the_file(spec: DatasetSpec, tmp_path: Path) -> None:
    image_id = read_split(spec, "val")[0]
    args = {"split": "val", "shard": 0, "num_shards": 1, "workers": 1}
    with pytest.raises(DataError, match=f"{image_id}.npz: not found"):
        make_pseudo_labels(spec, PSEUDO, rw_dirs=[tmp_path], out_dir=tmp_path / "a", **args)
    bad = tmp_path / "bad"
    for i in read_split(spec, "val"):
        save_scores(bad / f"{i}.npz", [0, 1], hr_cam=np.zeros((1, 64, 63)))
    with pytest.raises(DataError, match=rf"{bad}/{image_id}.npz: hr_cam has shape \(1, 64, 63\)"):
        make_affinity_labels(spec, AFFINITY, cam_dirs=[bad], out_dir=tmp_path / "b", **args)
    with pytest.raises(DataError, match=rf"{bad}/{image_id}.npz: .* no 'rw' array"):
        make_pseudo_labels(spec, PSEUDO, rw_dirs=[bad], out_dir=tmp_path / "c", **args)
    for i in read_split(spec, "val"):
        save_scores(bad / f"{i}.npz", [0, 1, 9], hr_cam=np.zeros((2, 64, 64)))
    with pytest.raises(DataError, match=r"keys \[0, 1, 9\] outside 1..8"):
        make_affinity_labels(spec, AFFINITY, cam_dirs=[bad], out_dir=tmp_path / "d", **args)
    assert not list((tmp_path / "d").glob("*.png"))

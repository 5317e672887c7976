"""`pcam convert-coco`: a small COCO-format file written here, converted, and every mask checked
pixel by pixel against masks this test builds itself (numpy boxes, RLE runs expanded by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from pcam.cli import main
from pcam.config import load_config, stage_settings
from pcam.data.check import check_dataset
from pcam.data.coco import CocoPart, convert_coco
from pcam.data.voc import DatasetSpec, image_labels, load_mask, read_split
from pcam.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
H, W = 30, 40  # every test image is 40x30 (WxH)
# COCO's sparse ids, listed out of order on purpose: labels follow the sorted ids.
CATEGORIES = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
PERSON, CAR, DOG = 1, 2, 3  # contiguous labels (id order 1, 3, 18)


def box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """HxW bool mask of pixels x0..x1-1, y0..y1-1 (the pixel centres inside the rectangle)."""
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def rect_polygon(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE, computed by hand: column-major runs, starting with zeros."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode()}


def ann(ann_id, image_id, cat, segmentation, bbox, crowd=0) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "segmentation": segmentation,
        "bbox": bbox,
        "area": 1.0,
        "iscrowd": crowd,
    }


DOG_RLE = box(28, 2, 38, 12)
CAR_COMPRESSED = box(1, 20, 15, 29)
CROWD = box(16, 5, 39, 28)
DOG_IN_CROWD = box(20, 10, 26, 16)


def expected_masks() -> dict[str, np.ndarray]:
    """The class masks the converter must write, built from the boxes above."""
    a = np.zeros((H, W), dtype=np.uint8)
    a[box(2, 2, 30, 25)] = PERSON  # large person (listed second in the file)
    a[box(4, 14, 8, 20) | box(10, 10, 20, 18)] = CAR  # smaller two-part car: on top
    a[DOG_RLE] = DOG  # uncompressed RLE
    b = np.zeros((H, W), dtype=np.uint8)
    b[CROWD] = 255  # crowd person region ...
    b[DOG_IN_CROWD] = DOG  # ... except where a non-crowd instance lies
    b[CAR_COMPRESSED] = CAR  # compressed RLE
    return {"COCO_x_000000000001": a, "COCO_x_000000000002": b}


def coco_file(tmp: Path, name: str, first_id: int = 1) -> CocoPart:
    """Write images and an instances JSON: 1 = polygons + overlap + RLE, 2 = compressed RLE +
    crowd, 3 = no annotation, 4 = only a zero-width box. Ids offset by `first_id - 1`."""
    o = first_id - 1
    images = [
        {"id": o + k, "file_name": f"COCO_x_{o + k:012d}.jpg", "width": W, "height": H}
        for k in (1, 2, 3, 4)
    ]
    anns = [
        ann(
            1, o + 1, 3, [rect_polygon(10, 10, 20, 18), rect_polygon(4, 14, 8, 20)], [4, 10, 16, 10]
        ),
        ann(2, o + 1, 1, [rect_polygon(2, 2, 30, 25), [1, 1, 2, 2]], [2, 2, 28, 23]),
        ann(3, o + 1, 18, uncompressed_rle(DOG_RLE), [28, 2, 10, 10]),
        ann(4, o + 2, 1, uncompressed_rle(CROWD), [16, 5, 23, 23], crowd=1),
        ann(5, o + 2, 18, [rect_polygon(20, 10, 26, 16)], [20, 10, 6, 6]),
        ann(6, o + 2, 3, compressed_rle(CAR_COMPRESSED), [1, 20, 14, 9]),
        ann(7, o + 4, 3, [], [5, 5, 0, 3]),
    ]
    folder = tmp / f"{name}-images"
    folder.mkdir()
    rng = np.random.default_rng(first_id)
    for image in images:
        pixels = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / image["file_name"], quality=90)
    path = tmp / f"instances_{name}.json"
    payload = {"info": {}, "images": images, "annotations": anns, "categories": CATEGORIES}
    path.write_text(json.dumps(payload))
    return CocoPart(name, path, folder)


@pytest.fixture
def converted(tmp_path: Path) -> tuple[Path, list, CocoPart]:
    part = coco_file(tmp_path, "train")
    root = tmp_path / "coco"
    return root, convert_coco(root, [part], workers=1), part


def test_masks_match_independent_rasterisation(converted):
    root, _, _ = converted
    for image_id, expected in expected_masks().items():
        got = load_mask(root / "SegmentationClass" / f"{image_id}.png")
        np.testing.assert_array_equal(got, expected, err_msg=image_id)


def test_class_table_splits_and_labels(converted):
    root, reports, _ = converted
    description = json.loads((root / "dataset.json").read_text())
    assert description["class_names"] == ["background", "person", "car", "dog"]
    assert description["coco_category_ids"] == [1, 3, 18]
    spec = DatasetSpec.from_settings({"root": str(root)})
    assert read_split(spec, "train") == ["COCO_x_000000000001", "COCO_x_000000000002"]
    assert read_split(spec, "train_unannotated") == ["COCO_x_000000000003", "COCO_x_000000000004"]
    assert image_labels(spec, "COCO_x_000000000001").tolist() == [1, 1, 1]
    assert image_labels(spec, "COCO_x_000000000002").tolist() == [1, 1, 1]  # crowd counts
    (report,) = reports
    assert (report.images, report.annotated, report.unannotated) == (4, 2, 2)
    assert check_dataset(spec, ["train", "train_unannotated"], training_splits=["train"]) == []


def test_images_are_linked_not_rewritten(converted):
    root, _, part = converted
    for k in (1, 3):
        name = f"COCO_x_{k:012d}.jpg"
        source, linked = part.images / name, root / "JPEGImages" / name
        assert linked.read_bytes() == source.read_bytes()
        assert linked.stat().st_ino == source.stat().st_ino  # a hard link on one file system


def test_resume_redoes_only_missing_images(converted):
    root, _, part = converted
    mask = root / "SegmentationClass" / "COCO_x_000000000002.png"
    before = mask.read_bytes()
    mask.unlink()
    (report,) = convert_coco(root, [part], workers=1)
    assert (report.converted, report.already_done) == (1, 3)
    assert mask.read_bytes() == before
    assert not list(root.glob(".coco-spill-*")) and not list(root.rglob("*.tmp"))


def test_parallel_with_val_split_gives_the_same_files(tmp_path, converted):
    root, _, _ = converted
    (tmp_path / "p").mkdir()
    train = coco_file(tmp_path / "p", "train")
    val = coco_file(tmp_path / "p", "val", first_id=101)
    out = tmp_path / "parallel"
    code = main(
        ["convert-coco", "--annotations", str(train.annotations), "--images", str(train.images),
         "--out", str(out), "--split", "train", "--val-annotations", str(val.annotations),
         "--val-images", str(val.images), "--workers", "2"]
    )  # fmt: skip
    assert code == 0
    for image_id in expected_masks():
        a = load_mask(root / "SegmentationClass" / f"{image_id}.png")
        np.testing.assert_array_equal(load_mask(out / "SegmentationClass" / f"{image_id}.png"), a)
    spec = DatasetSpec.from_settings({"root": str(out)})
    assert read_split(spec, "val") == ["COCO_x_000000000101", "COCO_x_000000000102"]


def test_bad_input_names_the_file(tmp_path):
    part = coco_file(tmp_path, "train")
    payload = json.loads(part.annotations.read_text())
    payload["annotations"][0]["category_id"] = 99
    part.annotations.write_text(json.dumps(payload))
    with pytest.raises(DataError, match="instances_train.json.*unknown category"):
        convert_coco(tmp_path / "out", [part])
    part.annotations.write_text('{"images": [')
    with pytest.raises(DataError, match="instances_train.json: not valid JSON"):
        convert_coco(tmp_path / "out2", [part])


def test_coco_config_validates_on_top_of_the_defaults():
    coco = yaml.safe_load((ROOT / "config" / "coco.yaml").read_text())
    cfg = load_config(ROOT / "config" / "config.yaml", coco)
    assert stage_settings(cfg, "puzzle", "classifier")["backbone"] == "resnest101e"
    assert cfg["dataset"]["train_split"] == "train"

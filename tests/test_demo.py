"""The demo dataset: determinism, VOC layout, masks vs XML, the weak-supervision design."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from pcam.cli import main
from pcam.data.demo import DEMO_CLASSES, border_band, generate, make_sample, render_preview
from pcam.data.voc import (
    DatasetSpec,
    gt_mask,
    load_image,
    load_mask,
    read_split,
    read_xml_labels,
    voc_palette,
)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def spec(demo_root):
    return DatasetSpec.from_settings({"root": str(demo_root)})


@pytest.fixture(scope="module")
def all_ids(spec):
    return read_split(spec, "train_aug") + read_split(spec, "val")


def test_same_arguments_give_identical_bytes_through_api_and_cli(tmp_path):
    generate(tmp_path / "a", n_train=4, n_val=2, size=48, seed=3)
    argv = ["demo-data", "--out", str(tmp_path / "b"), "--n-train", "4", "--n-val", "2"]
    assert main([*argv, "--size", "48", "--seed", "3"]) == 0
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(first) == 6 * 3 + 4 + 3 + 1  # jpg/xml/aug per image, gt for 4, lists, json
    assert first == second
    assert not [p for p in (tmp_path / "a").rglob("*.tmp")]  # atomic writes left nothing


def test_an_image_does_not_depend_on_the_dataset_size(tmp_path):
    generate(tmp_path / "small", n_train=2, n_val=1, size=48, seed=3)
    generate(tmp_path / "large", n_train=4, n_val=1, size=48, seed=3)
    generate(tmp_path / "other", n_train=2, n_val=1, size=48, seed=4)
    for name in ("JPEGImages/demo_000001.jpg", "Annotations/demo_000001.xml"):
        small = (tmp_path / "small" / name).read_bytes()
        assert small == (tmp_path / "large" / name).read_bytes()
        assert small != (tmp_path / "other" / name).read_bytes()


def test_voc_layout_and_splits(spec, demo_root, all_ids):
    train_aug, train, val = (read_split(spec, s) for s in ("train_aug", "train", "val"))
    assert train_aug == [f"demo_{k:06d}" for k in range(24)]
    assert train == train_aug[::2]
    assert val == [f"demo_{k:06d}" for k in range(24, 32)]
    for image_id in all_ids:
        assert load_image(spec.image_path(image_id)).shape == (64, 64, 3)
        assert spec.annotation_path(image_id).exists()
        assert spec.mask_path(image_id, aug=True).exists()
        assert spec.mask_path(image_id).exists() == (image_id in train or image_id in val)
    description = json.loads((demo_root / "dataset.json").read_text())
    assert description["class_names"] == DEMO_CLASSES and len(DEMO_CLASSES) == 9
    assert np.array_equal(description["palette"], voc_palette(9))
    assert spec.class_names == DEMO_CLASSES and not spec.is_voc


def test_masks_and_xml_agree_for_every_image(spec, all_ids):
    for image_id in all_ids:
        xml_names = read_xml_labels(spec.annotation_path(image_id), DEMO_CLASSES)
        xml_classes = {DEMO_CLASSES.index(n) for n in xml_names}
        aug = load_mask(spec.mask_path(image_id, aug=True))
        assert set(np.unique(aug)) - {0, 255} == xml_classes, image_id
        gt = gt_mask(spec, image_id)
        if gt is not None:
            assert set(np.unique(gt)) - {0, 255} == xml_classes, image_id
            assert ((gt == aug) | (gt == 255)).all()  # the same masks up to the band
        assert 1 <= len(xml_classes) <= 3, image_id


def test_xml_boxes_cover_the_visible_pixels_of_their_class(spec, all_ids):
    for image_id in all_ids:
        aug = load_mask(spec.mask_path(image_id, aug=True))
        covered = np.zeros(aug.shape, dtype=bool)
        for obj in ET.parse(spec.annotation_path(image_id)).getroot().iter("object"):
            box = obj.find("bndbox")
            x0, y0, x1, y1 = (int(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= x0 <= x1 <= 64 and 1 <= y0 <= y1 <= 64
            region = np.zeros_like(covered)
            region[y0 - 1 : y1, x0 - 1 : x1] = True
            cls = DEMO_CLASSES.index(obj.findtext("name"))
            assert (aug[region] == cls).any()  # each box holds its object
            covered |= region & (aug == cls)
        assert np.array_equal(covered, (aug > 0) & (aug < 255)), image_id


def test_ground_truth_masks_carry_a_255_band_along_every_border(spec):
    for image_id in read_split(spec, "train") + read_split(spec, "val"):
        gt = gt_mask(spec, image_id)
        aug = load_mask(spec.mask_path(image_id, aug=True))
        assert (gt == 255).any() and not (aug == 255).any()
        # every pixel within 1 px of a class change is in the band; the band's other pixels
        # separate touching objects of the same class
        band, class_border = gt == 255, border_band(aug.astype(np.int32))
        assert not (class_border & ~band).any()
        assert (aug[band & ~class_border] > 0).all()
        # so no two neighbouring labelled pixels differ
        for a, b in ((gt[1:], gt[:-1]), (gt[:, 1:], gt[:, :-1])):
            assert not ((a != b) & (a != 255) & (b != 255)).any()


def test_border_band_is_two_pixels_wide():
    instances = np.zeros((6, 8), dtype=np.int32)
    instances[:, 4:] = 1
    band = border_band(instances)
    assert band.sum(axis=1).tolist() == [2] * 6
    assert band[:, 3].all() and band[:, 4].all()


def test_every_class_occurs(spec, all_ids):
    seen = set()
    for image_id in all_ids:
        seen |= set(read_xml_labels(spec.annotation_path(image_id), DEMO_CLASSES))
    assert seen == set(DEMO_CLASSES[1:])


def test_the_part_is_a_small_class_coloured_piece_of_a_class_agnostic_body():
    bodies, parts = [], {}
    for index in range(12):
        sample = make_sample(seed=0, index=index, size=96)
        image = sample.image.astype(np.float64)
        background = image[sample.instances == 0].mean(axis=0)
        assert background[0] <= background[1:].max()  # cool background: red never dominant
        for k, obj in enumerate(sample.objects, start=1):
            assert (obj.part & ~obj.mask).sum() == 0
            assert 0.15 < obj.part.sum() / obj.mask.sum() < 0.35
            body = obj.mask & ~obj.part & (sample.instances == k)
            bodies.append(image[body].mean(axis=0))
            parts.setdefault(obj.label, []).append(image[obj.part].mean(axis=0))
    bodies = np.array(bodies)
    assert (bodies[:, 0] > bodies[:, 2] + 20).all()  # every body is warm (tan), whatever the class
    assert bodies.std(axis=0).max() < 40  # and they all look alike
    mean_parts = np.array([np.mean(v, axis=0) for v in parts.values()])
    assert mean_parts.std(axis=0).max() > 40  # while parts differ between classes


def test_preview_is_a_grid_of_image_and_overlay_pairs(demo_root, tmp_path):
    out = tmp_path / "preview.png"
    render_preview(demo_root, out, n=6)
    grid = load_image(out)
    assert grid.shape == (2 * 64, 4 * 2 * 64, 3)  # 4 columns of (image | overlay), 2 rows
    first = load_image(
        DatasetSpec.from_settings({"root": str(demo_root)}).image_path("demo_000000")
    )
    assert np.array_equal(grid[:64, :64], first)  # left of each pair: the image itself
    assert (grid[64:, 4 * 64 :] == 255).all()  # the two unused cells stay blank

"""The demo datasets: determinism, VOC layout, masks vs XML, the weak-supervision design of each
style."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from pcam.cli import main
from pcam.data.demo import (
    DEMO_CLASSES,
    STYLES,
    border_band,
    generate,
    make_sample,
    render_preview,
)
from pcam.data.voc import (
    DatasetSpec,
    gt_mask,
    load_image,
    load_mask,
    read_split,
    read_xml_labels,
    voc_palette,
)
from pcam.errors import ConfigError


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module", params=sorted(STYLES))
def styled(request, demo_root, tmp_path_factory):
    """(style name, root) of a 64-px dataset of each style (24 train_aug, 8 val, seed 0)."""
    if request.param == "parts":
        return request.param, demo_root  # the shared session fixture
    root = tmp_path_factory.mktemp(request.param) / "data"
    generate(root, n_train=24, n_val=8, size=64, seed=0, style=request.param)
    return request.param, root


@pytest.fixture(scope="module")
def spec(styled):
    return DatasetSpec.from_settings({"root": str(styled[1])})


@pytest.fixture(scope="module")
def all_ids(spec):
    return read_split(spec, "train_aug") + read_split(spec, "val")


@pytest.mark.parametrize("style", sorted(STYLES))
def test_same_arguments_give_identical_bytes_through_api_and_cli(tmp_path, style):
    generate(tmp_path / "a", n_train=4, n_val=2, size=48, seed=3, style=style)
    argv = ["demo-data", "--out", str(tmp_path / "b"), "--n-train", "4", "--n-val", "2"]
    assert main([*argv, "--size", "48", "--seed", "3", "--style", style]) == 0
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(first) == 6 * 3 + 4 + 3 + 1  # jpg/xml/aug per image, gt for 4, lists, json
    assert first == second
    assert not [p for p in (tmp_path / "a").rglob("*.tmp")]  # atomic writes left nothing


def test_styles_differ_and_an_unknown_style_is_refused_by_name(tmp_path):
    parts, tools = (make_sample(0, 0, 64, s).image for s in ("parts", "tools"))
    assert not np.array_equal(parts, tools)
    with pytest.raises(ConfigError, match="'wood'.*parts.*tools"):
        generate(tmp_path / "x", n_train=2, n_val=1, size=48, seed=0, style="wood")
    argv = ["--n-train", "2", "--n-val", "1", "--size", "48", "--seed", "0", "--style", "wood"]
    assert main(["demo-data", "--out", str(tmp_path / "y"), *argv]) != 0
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_an_image_does_not_depend_on_the_dataset_size(tmp_path):
    generate(tmp_path / "small", n_train=2, n_val=1, size=48, seed=3, style="parts")
    generate(tmp_path / "large", n_train=4, n_val=1, size=48, seed=3, style="parts")
    generate(tmp_path / "other", n_train=2, n_val=1, size=48, seed=4, style="parts")
    for name in ("JPEGImages/demo_000001.jpg", "Annotations/demo_000001.xml"):
        small = (tmp_path / "small" / name).read_bytes()
        assert small == (tmp_path / "large" / name).read_bytes()
        assert small != (tmp_path / "other" / name).read_bytes()


def test_voc_layout_and_splits(spec, styled, all_ids):
    train_aug, train, val = (read_split(spec, s) for s in ("train_aug", "train", "val"))
    assert train_aug == [f"demo_{k:06d}" for k in range(24)]
    assert train == train_aug[::2]
    assert val == [f"demo_{k:06d}" for k in range(24, 32)]
    for image_id in all_ids:
        assert load_image(spec.image_path(image_id)).shape == (64, 64, 3)
        assert spec.annotation_path(image_id).exists()
        assert spec.mask_path(image_id, aug=True).exists()
        assert spec.mask_path(image_id).exists() == (image_id in train or image_id in val)
    names = STYLES[styled[0]].class_names
    description = json.loads((styled[1] / "dataset.json").read_text())
    assert description["class_names"] == names and names[0] == "background"
    assert np.array_equal(description["palette"], voc_palette(len(names)))
    assert spec.class_names == names and not spec.is_voc
    assert DEMO_CLASSES == STYLES["parts"].class_names and len(DEMO_CLASSES) == 9
    assert len(STYLES["tools"].class_names) == 7


def test_masks_and_xml_agree_for_every_image(spec, all_ids):
    for image_id in all_ids:
        xml_names = read_xml_labels(spec.annotation_path(image_id), spec.class_names)
        xml_classes = {spec.class_names.index(n) for n in xml_names}
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
            cls = spec.class_names.index(obj.findtext("name"))
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
        seen |= set(read_xml_labels(spec.annotation_path(image_id), spec.class_names))
    assert seen == set(spec.class_names[1:])


def test_the_part_is_a_small_class_coloured_piece_of_a_class_agnostic_body():
    bodies, parts = [], {}
    for index in range(12):
        sample = make_sample(seed=0, index=index, size=96, style="parts")
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


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of (..., 3) RGB values."""
    top = rgb.max(axis=-1)
    return (top - rgb.min(axis=-1)) / np.maximum(top, 1e-6)


def test_tools_are_alike_handles_told_apart_by_a_head_at_one_end():
    handles, heads = [], {}
    for index in range(16):
        sample = make_sample(seed=0, index=index, size=96, style="tools")
        image = sample.image.astype(np.float64) / 255
        for k, obj in enumerate(sample.objects, start=1):
            assert (obj.part & ~obj.mask).sum() == 0
            assert 0.08 < obj.part.sum() / obj.mask.sum() < 0.45
            ys, xs = np.nonzero(obj.mask)
            hys, hxs = np.nonzero(obj.part)
            extent = np.hypot(np.ptp(ys), np.ptp(xs))
            # the head sits at an end: far from the object's centre, unlike a part inside it
            assert np.hypot(hys.mean() - ys.mean(), hxs.mean() - xs.mean()) > 0.2 * extent
            visible = sample.instances == k
            handles.append(_saturation(image[visible & ~obj.part]).mean())
            heads.setdefault(obj.label, []).append(image[visible & obj.part].mean(axis=0))
    assert max(handles) < 0.3  # handles are desaturated whatever the class
    colours = np.array([np.mean(v, axis=0) for v in heads.values()])
    assert _saturation(colours).min() > 0.5 and colours.std(axis=0).max() > 0.15


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


def test_the_schema_accepts_exactly_the_generator_styles():
    from pcam.config import load_schema

    assert load_schema()["$defs"]["demo"]["properties"]["style"]["enum"] == sorted(STYLES)

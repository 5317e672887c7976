"""The VOC-layout reader on a hand-built VOC tree: ids, labels, masks, palette, settings."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import VOC_TREE_MASKS, VOC_TREE_SIZE
from PIL import Image

from pcam.data.voc import (
    VOC_CLASSES,
    DatasetSpec,
    gt_mask,
    image_labels,
    load_image,
    load_mask,
    read_split,
    read_xml_labels,
    training_mask,
    voc_palette,
)
from pcam.errors import ConfigError, DataError


def _names(labels: np.ndarray) -> set[str]:
    return {VOC_CLASSES[i + 1] for i in np.flatnonzero(labels)}


@pytest.fixture
def spec(voc_tree):
    return DatasetSpec.from_settings({"root": str(voc_tree)})


def test_voc_palette_matches_the_published_colour_map():
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    known = {
        0: (0, 0, 0),
        1: (128, 0, 0),
        2: (0, 128, 0),
        3: (128, 128, 0),
        8: (64, 0, 0),
        15: (192, 128, 128),
        20: (0, 64, 128),
        255: (224, 224, 192),
    }
    for index, rgb in known.items():
        assert tuple(palette[index]) == rgb
    assert np.array_equal(voc_palette(21), palette[:21])


def test_voc_classes_are_the_standard_21():
    assert len(VOC_CLASSES) == 21
    assert VOC_CLASSES[0] == "background"
    assert VOC_CLASSES[1] == "aeroplane" and VOC_CLASSES[15] == "person"
    assert VOC_CLASSES[20] == "tvmonitor"


def test_split_lists_strip_crlf_blanks_and_spaces(spec):
    assert read_split(spec, "train_aug") == ["2007_000032", "2008_000123", "2009_000456"]
    assert read_split(spec, "train") == ["2007_000032", "2008_000123"]
    assert read_split(spec, "val") == ["2007_000039"]


def test_missing_split_list_names_the_file(spec):
    with pytest.raises(DataError, match="nope.txt"):
        read_split(spec, "nope")


def test_xml_labels_keep_difficult_and_drop_zero_area_boxes(spec):
    path = spec.annotation_path("2007_000032")
    assert read_xml_labels(path, VOC_CLASSES) == ["aeroplane", "person"]
    labels = image_labels(spec, "2007_000032")
    assert labels.shape == (20,) and labels.dtype == np.float32
    assert np.flatnonzero(labels).tolist() == [0, 14]  # class c -> index c - 1


def test_labels_come_from_masks_when_the_xml_is_missing(spec):
    # SegmentationClass (dog) wins over SegmentationClassAug (cat); 255 is not a class
    assert _names(image_labels(spec, "2008_000123")) == {"dog"}
    # only the Aug mask exists
    assert _names(image_labels(spec, "2009_000456")) == {"cow", "sheep"}


def test_no_labels_at_all_is_an_error(spec):
    (spec.root / "SegmentationClassAug" / "2009_000456.png").unlink()
    with pytest.raises(DataError, match="2009_000456"):
        image_labels(spec, "2009_000456")


def test_unknown_class_in_xml_names_file_and_class(spec):
    path = spec.annotation_path("2007_000039")
    path.write_text(path.read_text().replace("tvmonitor", "unicorn"))
    with pytest.raises(DataError, match="unicorn") as err:
        image_labels(spec, "2007_000039")
    assert str(path) in str(err.value)


def test_malformed_xml_names_the_file(spec):
    path = spec.annotation_path("2007_000039")
    path.write_text("<annotation><object><name>dog</name>")
    with pytest.raises(DataError, match="malformed") as err:
        read_xml_labels(path, VOC_CLASSES)
    assert str(path) in str(err.value)


def test_images_decode_to_rgb_uint8(spec):
    image = load_image(spec.image_path("2007_000032"))
    assert image.shape == (*VOC_TREE_SIZE, 3) and image.dtype == np.uint8
    gray = spec.root / "gray.png"
    Image.fromarray(np.full((4, 5), 77, np.uint8)).save(gray)
    assert load_image(gray).shape == (4, 5, 3)
    assert (load_image(gray) == 77).all()


def test_truncated_and_missing_images_name_the_file(spec):
    path = spec.image_path("2007_000032")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="does not decode") as err:
        load_image(path)
    assert str(path) in str(err.value)
    with pytest.raises(DataError, match="missing"):
        load_image(spec.image_path("nope"))


def test_palette_masks_round_trip_with_their_255_borders(spec):
    for folder, masks in VOC_TREE_MASKS.items():
        for image_id, expected in masks.items():
            path = spec.root / folder / f"{image_id}.png"
            assert np.array_equal(load_mask(path), expected)
            with Image.open(path) as img:
                assert img.mode == "P"
                stored = np.array(img.getpalette()[: 21 * 3]).reshape(21, 3)
            assert np.array_equal(stored, voc_palette(21))
    assert (load_mask(spec.mask_path("2007_000032")) == 255).any()


def test_gt_and_training_masks_pick_the_right_folder(spec):
    assert np.array_equal(
        gt_mask(spec, "2008_000123"), VOC_TREE_MASKS["SegmentationClass"]["2008_000123"]
    )
    assert gt_mask(spec, "2009_000456") is None
    aug = VOC_TREE_MASKS["SegmentationClassAug"]
    assert np.array_equal(training_mask(spec, "2008_000123"), aug["2008_000123"])
    assert np.array_equal(
        training_mask(spec, "2007_000039"), VOC_TREE_MASKS["SegmentationClass"]["2007_000039"]
    )
    with pytest.raises(DataError, match="nope"):
        training_mask(spec, "nope")


def test_settings_fall_back_to_voc_2012(spec, voc_tree):
    assert spec.is_voc and spec.num_classes == 21
    assert np.array_equal(spec.palette, voc_palette(21))
    assert spec.image_path("a") == voc_tree / "JPEGImages" / "a.jpg"
    assert spec.mask_path("a") == voc_tree / "SegmentationClass" / "a.png"
    assert spec.mask_path("a", aug=True) == voc_tree / "SegmentationClassAug" / "a.png"
    assert spec.annotation_path("a") == voc_tree / "Annotations" / "a.xml"
    assert spec.split_path("val") == voc_tree / "ImageSets" / "Segmentation" / "val.txt"
    assert (spec.train_split, spec.eval_split, spec.val_split) == ("train_aug", "train", "val")
    assert spec.test_split is None


def test_settings_read_dataset_json(voc_tree):
    palette = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    description = {"class_names": ["background", "cat", "dog"], "palette": palette}
    (voc_tree / "dataset.json").write_text(json.dumps(description))
    spec = DatasetSpec.from_settings({"root": str(voc_tree), "class_names": None})
    assert spec.class_names == ["background", "cat", "dog"] and not spec.is_voc
    assert spec.palette.tolist() == palette and spec.palette.dtype == np.uint8
    # explicit settings win over dataset.json
    spec = DatasetSpec.from_settings({"root": str(voc_tree), "class_names": VOC_CLASSES})
    assert spec.is_voc and np.array_equal(spec.palette, voc_palette(21))


def test_the_config_files_dataset_section_is_accepted(voc_tree):
    with open(Path(__file__).resolve().parents[1] / "config" / "config.yaml") as fh:
        section = yaml.safe_load(fh)["dataset"]
    spec = DatasetSpec.from_settings({**section, "root": str(voc_tree)})
    assert spec.is_voc and spec.split_dir == "ImageSets/Segmentation"


def test_bad_settings_name_the_key(voc_tree):
    with pytest.raises(ConfigError, match="dataset.colour_map"):
        DatasetSpec.from_settings({"root": str(voc_tree), "colour_map": None})
    with pytest.raises(ConfigError, match="dataset.palette"):
        DatasetSpec.from_settings(
            {"root": str(voc_tree), "class_names": ["bg", "a", "b"], "palette": [[0, 0, 0]]}
        )
    with pytest.raises(ConfigError, match="dataset.root"):
        DatasetSpec.from_settings({"class_names": None})
    (voc_tree / "dataset.json").write_text("{not json")
    with pytest.raises(ConfigError, match="dataset.json"):
        DatasetSpec.from_settings({"root": str(voc_tree)})

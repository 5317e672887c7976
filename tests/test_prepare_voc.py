"""`pcam prepare-voc` and `check-data --require-masks` on a small fake VOCdevkit + SBD tree
written here (SBD's `.mat` files through scipy.io.savemat, in SBD's GTcls structure)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from pcam.cli import main
from pcam.data.prepare_voc import (
    TRAIN_AUG_SHA256,
    prepare_voc,
    standard_train_aug,
    supervisions_of,
)
from pcam.data.voc import voc_palette
from pcam.errors import DataError
from pcam.io import save_label_png

ROOT = Path(__file__).resolve().parent.parent
SIDE = (12, 16)  # H, W
XML = (
    "<annotation><size><width>16</width><height>12</height><depth>3</depth></size>"
    "<object><name>person</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>9</xmax>"
    "<ymax>9</ymax></bndbox></object></annotation>"
)


def sbd_mask(k: int) -> np.ndarray:
    """A distinct HxW class map per image: a person box whose width depends on k."""
    mask = np.zeros(SIDE, dtype=np.uint8)
    mask[2:9, 2 : 3 + k % 12] = 15
    mask[0, 0] = k % 21
    return mask


def fake_voc(tmp: Path, train: list[str], val: list[str], extra: list[str]) -> tuple[Path, Path]:
    """VOC2012 (JPEG + XML for every id, SegmentationClass for train and val, train.txt and
    val.txt) and SBD (`dataset/cls/{id}.mat` for train + extra). Files of equal content are
    hard links of one, so a 10,582-id tree stays cheap."""
    root, sbd = tmp / "VOCdevkit" / "VOC2012", tmp / "benchmark_RELEASE"
    for folder in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    (sbd / "dataset" / "cls").mkdir(parents=True)
    picture, xml = tmp / "picture.jpg", tmp / "annotation.xml"
    Image.fromarray(np.full((*SIDE, 3), 120, dtype=np.uint8)).save(picture)
    xml.write_text(XML)
    voc_mask = tmp / "voc_mask.png"
    save_label_png(voc_mask, sbd_mask(0), voc_palette(21))
    for image_id in train + val + extra:
        os.link(picture, root / "JPEGImages" / f"{image_id}.jpg")
        os.link(xml, root / "Annotations" / f"{image_id}.xml")
    for image_id in train + val:
        os.link(voc_mask, root / "SegmentationClass" / f"{image_id}.png")
    for k, image_id in enumerate(train + extra):
        gt = {"Segmentation": sbd_mask(k), "Boundaries": np.zeros(1), "CategoriesPresent": 15}
        scipy.io.savemat(sbd / "dataset" / "cls" / f"{image_id}.mat", {"GTcls": gt})
    for name, ids in (("train", train), ("val", val)):
        (root / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return root, sbd


TRAIN, VAL, EXTRA = ["2007_000032", "2007_000039"], ["2007_000033"], ["2008_000002", "2008_000003"]
LIST = "".join(f"{i}\n" for i in sorted(TRAIN + EXTRA))


@pytest.fixture
def tree(tmp_path) -> tuple[Path, Path]:
    return fake_voc(tmp_path, TRAIN, VAL, EXTRA)


def test_shipped_list_is_the_standard_one():
    text = standard_train_aug()
    assert hashlib.sha256(text.encode()).hexdigest() == TRAIN_AUG_SHA256
    ids = text.split()
    assert len(ids) == len(set(ids)) == 10582 and ids == sorted(ids)


def test_writes_the_list_and_converts_sbd_masks(tree):
    root, sbd = tree
    report = prepare_voc(root, sbd, train_aug_text=LIST)
    assert (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text() == LIST
    assert report.sbd == (4, 0) and report.complete
    for k, image_id in enumerate(TRAIN + EXTRA):
        with Image.open(root / "SegmentationClassAug" / f"{image_id}.png") as img:
            assert img.mode == "P"
            assert img.getpalette()[3 * 15 : 3 * 16] == voc_palette(21)[15].tolist()
            np.testing.assert_array_equal(np.array(img), sbd_mask(k))


def test_resume_converts_only_missing_masks_and_keeps_a_users_list(tree):
    root, sbd = tree
    prepare_voc(root, sbd, train_aug_text=LIST)
    (root / "SegmentationClassAug" / f"{EXTRA[0]}.png").unlink()
    mine = root / "ImageSets" / "Segmentation" / "train_aug.txt"
    mine.write_text("2007_000032\n")
    report = prepare_voc(root, sbd, train_aug_text=LIST)
    assert report.sbd == (1, 3)
    assert mine.read_text() == "2007_000032\n" and "kept yours (1 ids" in report.train_aug


def test_reports_what_full_supervision_lacks_without_sbd(tree, capsys):
    root, _ = tree
    report = prepare_voc(root, None, ("weak", "full"), train_aug_text=LIST)
    assert not report.complete
    full = report.lacking["full"]
    assert list(full.values()) == [2]  # the two SBD-only ids have no mask at all
    assert not any(report.lacking["weak"].values())
    assert "supervision full: 2 train_aug images without" in "\n".join(report.lines())


def test_check_data_fails_early_when_full_supervision_lacks_masks(tree, capsys):
    root, sbd = tree
    prepare_voc(root, None, train_aug_text=LIST)
    args = ["check-data", "--root", str(root), "--split", "train_aug", "--split", "val"]
    assert main(args) == 0  # weak supervision is satisfied
    assert main([*args, "--require-masks", "train_aug"]) == 1
    err = capsys.readouterr().err
    assert f"SegmentationClassAug/{EXTRA[0]}.png: missing, and so is" in err
    prepare_voc(root, sbd, train_aug_text=LIST)
    assert main([*args, "--require-masks", "train_aug"]) == 0


def test_bad_inputs_name_the_file(tree, tmp_path):
    root, sbd = tree
    (sbd / "dataset" / "cls" / f"{EXTRA[1]}.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match=f"{EXTRA[1]}.mat: not an SBD class mask"):
        prepare_voc(root, sbd, train_aug_text=LIST)
    with pytest.raises(DataError, match="no cls/ folder"):
        prepare_voc(root, tmp_path, train_aug_text=LIST)
    with pytest.raises(DataError, match="no JPEGImages"):
        prepare_voc(tmp_path / "nowhere", None)


def test_supervisions_follow_the_config_files(tmp_path):
    files = [ROOT / "config" / "config.yaml", ROOT / "config" / "voc.yaml"]
    assert supervisions_of(files) == ("full", "weak")
    only = tmp_path / "weak.yaml"
    only.write_text("run_experiments: [puzzle]\n")
    assert supervisions_of([*files, only]) == ("weak",)

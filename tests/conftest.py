"""Shared fixtures: a tiny generated demo dataset and a small hand-built VOC-layout tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcam.data.demo import generate
from pcam.data.voc import voc_palette
from pcam.io import save_label_png
from tests.snakemake_runner import Project, make_project

# threads of the end-to-end run: CRF rules and evaluations get 2, torch rules 1 each, so two
# concurrent torch jobs on 2 cores do not each start 2 threads
THREADS = "compute:\n  crf_threads: 2\n  torch_threads: 1\nevaluation:\n  workers: 2\n"
VOC_TREE_SIZE = (18, 24)  # H, W: not square, so a transposed array would show


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo dataset (24 train_aug images, 12 of them in train, 8 val; 64 px; seed 0).

    Session-scoped and shared: tests must not modify it (copy it first).
    """
    root = tmp_path_factory.mktemp("demo") / "data"
    generate(root, n_train=24, n_val=8, size=64, seed=0, style="parts")
    return root


def _box_mask(boxes: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    """HxW uint8 mask of filled boxes (label, y0, x0, y1, x1) with a 255 border ring each."""
    mask = np.zeros(VOC_TREE_SIZE, dtype=np.uint8)
    for label, y0, x0, y1, x1 in boxes:
        mask[y0:y1, x0:x1] = 255
        mask[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = label
    return mask


def _xml(objects: list[tuple[str, int, tuple[int, int, int, int]]]) -> str:
    """A VOC annotation of a 24x18 image; objects are (name, difficult, (x0, y0, x1, y1))."""
    body = "".join(
        f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
        f"<difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, difficult, (x0, y0, x1, y1) in objects
    )
    return (
        "<annotation><folder>VOC2012</folder><filename>x.jpg</filename>"
        "<size><width>24</width><height>18</height><depth>3</depth></size>"
        f"<segmented>1</segmented>{body}</annotation>"
    )


# Masks of the VOC tree, by folder and id; the tests compare reads against these.
VOC_TREE_MASKS = {
    "SegmentationClass": {
        "2007_000032": _box_mask([(1, 2, 2, 10, 12), (15, 8, 14, 17, 23)]),  # aeroplane, person
        "2007_000039": _box_mask([(20, 3, 3, 15, 20)]),  # tvmonitor
        "2008_000123": _box_mask([(12, 4, 4, 14, 14)]),  # dog
    },
    "SegmentationClassAug": {
        "2007_000032": _box_mask([(1, 2, 2, 10, 12), (15, 8, 14, 17, 23)]),
        "2008_000123": _box_mask([(8, 4, 4, 14, 14)]),  # cat: SegmentationClass wins
        "2009_000456": _box_mask([(10, 1, 1, 8, 10), (17, 9, 12, 17, 22)]),  # cow, sheep
    },
}
VOC_TREE_XML = {
    "2007_000032": _xml(
        [
            ("aeroplane", 0, (3, 3, 12, 10)),
            ("person", 1, (15, 9, 23, 17)),  # difficult: still a label (spec 1.3)
            ("bird", 0, (30, 2, 40, 9)),  # outside the 24-px width: zero width when clipped
            ("cat", 0, (2, 5, 9, 5)),  # zero height
        ]
    ),
    "2007_000039": _xml([("tvmonitor", 0, (4, 4, 20, 15))]),
}
VOC_TREE_SPLITS = {
    # CRLF, a blank line and stray spaces, as the official train_aug list has
    "train_aug": "2007_000032\r\n 2008_000123 \r\n\r\n2009_000456\r\n",
    "train": "2007_000032\n2008_000123\n",
    "val": "2007_000039\n",
}


@pytest.fixture
def voc_tree(tmp_path: Path) -> Path:
    """A small VOC 2012-layout tree (VOC class names, no dataset.json), 24x18 images.

    2007_000032: XML (aeroplane, difficult person, a box clipped to zero width, a zero-height box)
    and both masks; 2007_000039 (val): XML + SegmentationClass; 2008_000123: no XML, masks
    disagree (SegmentationClass: dog, Aug: cat); 2009_000456: only SegmentationClassAug (cow,
    sheep). Masks carry 255 borders. The contents are `VOC_TREE_*` in this module.
    """
    root = tmp_path / "VOC2012"
    rng = np.random.default_rng(0)
    for image_id in ("2007_000032", "2007_000039", "2008_000123", "2009_000456"):
        path = root / "JPEGImages" / f"{image_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(*VOC_TREE_SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
    for folder, masks in VOC_TREE_MASKS.items():
        for image_id, mask in masks.items():
            save_label_png(root / folder / f"{image_id}.png", mask, voc_palette(21))
    (root / "Annotations").mkdir()
    for image_id, text in VOC_TREE_XML.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(text)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for name, text in VOC_TREE_SPLITS.items():
        (root / "ImageSets" / "Segmentation" / f"{name}.txt").write_bytes(text.encode())
    return root


@pytest.fixture(scope="session")
def done(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A project (a git checkout of the code) whose whole DAG has run once on the tiny config,
    under a results folder and a dataset root whose names hold spaces.

    Shared by the end-to-end test modules: tests may plan and build more (e.g. the report), and
    may edit code only to restore it.
    """
    base = tmp_path_factory.mktemp("e2e")
    project = make_project(base, results="my results", data="my data/demo", git=True)
    threads = base / "threads.yaml"
    threads.write_text(THREADS)
    project.configfiles += (threads,)
    project.run("--cores", "2", timeout=3600)  # a bound for a loaded machine, not a target
    return project

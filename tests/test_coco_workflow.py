"""The whole DAG (one weak experiment, tiny config) on a small COCO set made by `convert-coco`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcam.data.coco import CocoPart, convert_coco
from tests.snakemake_runner import make_project
from tests.test_coco import rect_polygon

pytestmark = pytest.mark.slow

SIDE_W, SIDE_H = 80, 64
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}]
COLOURS = {1: (220, 40, 40), 5: (40, 200, 60)}


def _coco_split(folder: Path, split: str, n_images: int, seed: int) -> CocoPart:
    """Images with one or two coloured rectangles, annotated as COCO polygons."""
    rng = np.random.default_rng(seed)
    images_dir = folder / f"{split}2014"
    images_dir.mkdir(parents=True)
    images, anns = [], []
    for k in range(n_images):
        image_id = seed * 1000 + k + 1
        name = f"COCO_{split}2014_{image_id:012d}.jpg"
        pixels = np.full((SIDE_H, SIDE_W, 3), 90, dtype=np.uint8)
        for cat in rng.choice([1, 5], size=int(rng.integers(1, 3)), replace=False):
            x0, y0 = int(rng.integers(0, SIDE_W // 2)), int(rng.integers(0, SIDE_H // 2))
            x1, y1 = (
                x0 + int(rng.integers(12, SIDE_W // 2)),
                y0 + int(rng.integers(12, SIDE_H // 2)),
            )
            pixels[y0:y1, x0:x1] = COLOURS[int(cat)]
            anns.append(
                {"id": len(anns) + 1, "image_id": image_id, "category_id": int(cat),
                 "segmentation": [rect_polygon(x0, y0, x1, y1)], "iscrowd": 0,
                 "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float((x1 - x0) * (y1 - y0))}
            )  # fmt: skip
        Image.fromarray(pixels).save(images_dir / name, quality=90)
        images.append({"id": image_id, "file_name": name, "width": SIDE_W, "height": SIDE_H})
    path = folder / f"instances_{split}2014.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return CocoPart(split, path, images_dir)


def test_dag_runs_on_converted_coco(tmp_path):
    project = make_project(tmp_path)
    source = tmp_path / "coco-source"
    parts = [_coco_split(source, "train", 10, seed=1), _coco_split(source, "val", 4, seed=2)]
    convert_coco(project.work / "data" / "coco", parts, workers=1)
    override = project.work / "coco.yaml"
    override.write_text(
        "dataset:\n  root: data/coco\n  train_split: train\n  eval_split: train\n"
        "  val_split: val\ndemo:\n  enabled: false\nrun_experiments: [puzzle]\n"
    )
    project.run("--cores", "2", configfiles=(override,))
    with open(project.results_path("summary.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    stages = {"cam", "rw", "rw_crf", "rw_crf_aug", "deeplab", "deeplab_crf"}
    assert {row["stage"] for row in rows} == stages
    assert {row["experiment"] for row in rows} == {"puzzle"}
    for row in rows:
        assert 0.0 <= float(row["miou"]) <= 100.0
        assert int(row["n_images"]) == (4 if row["stage"].startswith("deeplab") else 10)
    per_class = project.results_path("puzzle", "eval", "cam.csv")
    assert "airplane" in per_class.read_text()

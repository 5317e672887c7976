"""MS-COCO instance annotations -> a VOC-layout dataset (`pcam convert-coco`).

What is written under the output root, per split (`train`, `val`, ...):

- `JPEGImages/{id}.jpg`: the COCO image, hard-linked, else symlinked, else copied; `id` is the
  file name's stem (`COCO_train2014_000000000009`).
- `SegmentationClass/{id}.png`: palette PNG, value = class label 1..80, 0 = background,
  255 = crowd region. Overlaps: non-crowd instances are painted largest first (pixel count of
  the decoded mask, ties in file order), so a smaller instance lying on a larger one stays
  visible, the rule of the usual COCO-to-mask converters; crowd (`iscrowd: 1`) regions become
  255 only where no non-crowd instance is painted.
- `Annotations/{id}.xml`: one `<object>` per annotation, crowd ones included (the class is in
  the picture), box = COCO's `[x, y, x + w, y + h]`; the reader keeps an object unless its box
  has zero width or height (spec 1.3), so these are the image-level labels.
- `ImageSets/Segmentation/{split}.txt`: the images with at least one kept label;
  `{split}_unannotated.txt`: the others (no annotation, or only zero-size boxes). They are
  linked but get no mask or XML and stay out of every training split (the usual practice).
- `dataset.json`: background + the 80 names in COCO category order (sorted category id; the
  sparse ids 1..90 become labels 1..80, kept as `coco_category_ids`) and the VOC colour map.

Memory. The JSON is streamed (`pcam.data.coco_json`): its images and annotations are spilled
into buckets keyed by image id, and conversion loads one bucket at a time (about 1/256 of the
annotations). Peak memory: `benchmarks/bench_coco.py`.

Resume. Every file is written through `atomic_path`; an image whose outputs all exist is
skipped, so a killed conversion redoes only what is missing (the three streaming passes are
repeated; they hold no state worth keeping).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from pcam.data.coco_json import ClassTable, read_bucket, read_classes, spill
from pcam.data.voc import DatasetSpec, annotation_root, voc_palette
from pcam.errors import DataError
from pcam.io import IGNORE_INDEX, atomic_path, save_label_png, write_text

log = logging.getLogger(__name__)

UNANNOTATED_SUFFIX = "_unannotated"


@dataclass(frozen=True)
class CocoPart:
    """One split to convert: its name, its `instances_*.json` and its image folder."""

    split: str
    annotations: Path
    images: Path


# --------------------------------------------------------------------------- masks and labels


def instance_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode one COCO segmentation (polygons, uncompressed or compressed RLE) to HxW bool.

    Polygons with fewer than 3 points are dropped (zero area; pycocotools would read a
    4-number polygon as a box). An RLE whose size is not (height, width) -> ValueError.
    """
    if isinstance(segmentation, list):
        polygons = [[float(v) for v in p] for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        if [int(v) for v in segmentation["size"]] != [height, width]:
            raise ValueError(f"RLE size {segmentation['size']} is not the image's {height}x{width}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": [height, width], "counts": str(counts).encode()}
    else:
        raise ValueError(f"unknown segmentation format {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(bool)


def semantic_mask(
    anns: Iterable[dict], height: int, width: int, labels: dict[int, int]
) -> np.ndarray:
    """HxW uint8 class mask of one image's annotations (module docstring: overlaps, crowd)."""
    out = np.zeros((height, width), dtype=np.uint8)
    instances, crowd = [], np.zeros((height, width), dtype=bool)
    for order, ann in enumerate(anns):
        mask = instance_mask(ann["segmentation"], height, width)
        if ann.get("iscrowd", 0):
            crowd |= mask
        else:
            instances.append((-int(mask.sum()), order, labels[int(ann["category_id"])], mask))
    painted = np.zeros((height, width), dtype=bool)
    for _, _, label, mask in sorted(instances, key=lambda t: t[:2]):
        out[mask] = label
        painted |= mask
    out[crowd & ~painted] = IGNORE_INDEX
    return out


def kept_labels(anns: Iterable[dict], width: int, height: int) -> list[dict]:
    """The annotations whose box, clipped to the image, has positive width and height."""
    kept = []
    for ann in anns:
        x, y, w, h = (float(v) for v in ann["bbox"])
        if min(x + w, width) - max(x, 0.0) > 0 and min(y + h, height) - max(y, 0.0) > 0:
            kept.append(ann)
    return kept


def annotation_xml(image_id: str, anns: Iterable[dict], width: int, height: int, names) -> str:
    """VOC XML of one image: an object per annotation, box = [x, y, x + w, y + h]."""
    root = annotation_root("coco", image_id, width, height)
    for ann in anns:
        x, y, w, h = (float(v) for v in ann["bbox"])
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = names[ann["category_id"]]
        ET.SubElement(node, "difficult").text = str(int(ann.get("iscrowd", 0)))
        box = ET.SubElement(node, "bndbox")
        for tag, value in (("xmin", x), ("ymin", y), ("xmax", x + w), ("ymax", y + h)):
            ET.SubElement(box, tag).text = f"{value:.2f}"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


# --------------------------------------------------------------------------- per image


def link_image(source: Path, target: Path) -> str:
    """Put `source` at `target` atomically: "hardlink", else "symlink", else "copy"."""
    if not source.is_file():
        raise DataError(f"{source}: image file is missing")
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
            return "hardlink"
        except OSError:
            pass
        try:
            os.symlink(source.resolve(), tmp)
            return "symlink"
        except OSError:
            shutil.copyfile(source, tmp)
            return "copy"


@dataclass(frozen=True)
class _Job:
    """What every per-image task shares (set once per worker process)."""

    spec: DatasetSpec
    images: Path
    labels: dict[int, int]
    names: dict[int, str]


_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _JOB
    _JOB = job


def _image_id(image: dict) -> str:
    name = str(image["file_name"])
    if Path(name).suffix.lower() not in (".jpg", ".jpeg"):
        raise DataError(f"{name}: only JPEG images are supported (VOC layout)")
    return Path(name).stem


def convert_image(task: tuple[dict, list[dict]]) -> tuple[str, bool, str]:
    """Write one image's link, XML and mask. Returns (id, annotated, how the image was put)."""
    image, anns = task
    job = _JOB
    image_id = _image_id(image)
    width, height = int(image["width"]), int(image["height"])
    try:
        how = link_image(job.images / image["file_name"], job.spec.image_path(image_id))
        kept = kept_labels(anns, width, height)
        if not kept:
            return image_id, False, how
        xml = annotation_xml(image_id, anns, width, height, job.names)
        write_text(job.spec.annotation_path(image_id), xml)
        mask = semantic_mask(anns, height, width, job.labels)
        save_label_png(job.spec.mask_path(image_id), mask, job.spec.palette)
    except (KeyError, ValueError) as exc:
        raise DataError(f"{image_id}: bad annotation ({exc!r})") from exc
    return image_id, True, how


def _is_done(spec: DatasetSpec, image: dict, anns: list[dict]) -> tuple[bool, bool]:
    """(finished, annotated) of an image from the files present (outputs are atomic)."""
    image_id = _image_id(image)
    annotated = bool(kept_labels(anns, int(image["width"]), int(image["height"])))
    paths = [spec.image_path(image_id)]
    if annotated:
        paths += [spec.annotation_path(image_id), spec.mask_path(image_id)]
    return all(p.exists() for p in paths), annotated


# --------------------------------------------------------------------------- driver


@dataclass
class SplitReport:
    """What a conversion found and did for one split."""

    split: str
    images: int = 0
    annotated: int = 0
    unannotated: int = 0
    converted: int = 0
    already_done: int = 0
    linked: Counter | None = None

    def __str__(self) -> str:
        how = ", ".join(f"{n} {k}" for k, n in sorted((self.linked or {}).items()))
        return (
            f"{self.split}: {self.images} images, {self.annotated} annotated, "
            f"{self.unannotated} without annotation (listed in {self.split}"
            f"{UNANNOTATED_SUFFIX}.txt), {self.converted} converted now, "
            f"{self.already_done} already done" + (f"; images put by {how}" if how else "")
        )


def _check_unknown_categories(anns: dict[int, list[dict]], table: ClassTable, path: Path) -> None:
    known = set(table.category_ids)
    for image_anns in anns.values():
        for ann in image_anns:
            if int(ann["category_id"]) not in known:
                raise DataError(f"{path}: annotation {ann.get('id')} has unknown category id")


def _convert_split(part: CocoPart, job: _Job, table: ClassTable, pool_map) -> SplitReport:
    """Spill, then convert bucket by bucket through `pool_map(tasks) -> results`."""
    spec = job.spec
    report = SplitReport(part.split, linked=Counter())
    annotated: list[str] = []
    unannotated: list[str] = []
    with tempfile.TemporaryDirectory(prefix=".coco-spill-", dir=spec.root) as tmp:
        report.images = spill(part.annotations, Path(tmp))
        bar = tqdm(total=report.images, desc=f"convert {part.split}", disable=None, unit="img")
        for bucket in sorted(Path(tmp).glob("*.jsonl")):
            images, anns = read_bucket(bucket, part.annotations)
            _check_unknown_categories(anns, table, part.annotations)
            todo = []
            for image in images:
                done, has_labels = _is_done(spec, image, anns.get(int(image["id"]), []))
                (annotated if has_labels else unannotated).append(_image_id(image))
                if done:
                    report.already_done += 1
                    bar.update()
                else:
                    todo.append((image, anns.get(int(image["id"]), [])))
            for _, _, how in pool_map(todo):
                report.converted += 1
                report.linked[how] += 1
                bar.update()
        bar.close()
    report.annotated, report.unannotated = len(annotated), len(unannotated)
    for name, ids in ((part.split, annotated), (part.split + UNANNOTATED_SUFFIX, unannotated)):
        write_text(spec.split_path(name), "".join(f"{i}\n" for i in sorted(ids)))
    log.info("%s", report)
    return report


def write_description(root: Path, table: ClassTable) -> None:
    """`dataset.json`: class names, COCO category ids and the VOC colour map."""
    palette = voc_palette(len(table.names)).tolist()
    text = json.dumps(
        {"class_names": table.names, "coco_category_ids": table.category_ids, "palette": palette}
    )
    write_text(root / "dataset.json", text + "\n")


def convert_coco(out: Path, parts: list[CocoPart], workers: int = 1) -> list[SplitReport]:
    """Convert each part (split) into the VOC-layout tree at `out` (module docstring).

    Every part must have the same categories. `workers` processes rasterise images in
    parallel (1: in this process). Returns one report per part.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = read_classes(parts[0].annotations)
    for part in parts[1:]:
        if read_classes(part.annotations) != table:
            raise DataError(f"{part.annotations}: categories differ from {parts[0].annotations}")
    write_description(out, table)
    spec = DatasetSpec(out, table.names, voc_palette(len(table.names)))
    names = dict(zip(table.category_ids, table.names[1:], strict=True))
    reports = []
    for part in parts:
        job = _Job(spec, Path(part.images), table.labels, names)
        reports.append(_run_with_pool(part, job, table, workers))
    return reports


def _run_with_pool(part: CocoPart, job: _Job, table: ClassTable, workers: int) -> SplitReport:
    """One split, in this process (workers <= 1) or in a pool of spawned processes kept for
    the whole split (tasks go in one bucket at a time, so memory stays bounded)."""
    if workers <= 1:
        _init_worker(job)
        return _convert_split(part, job, table, lambda todo: map(convert_image, todo))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(job,)) as pool:
        return _convert_split(
            part, job, table, lambda todo: pool.imap_unordered(convert_image, todo, chunksize=4)
        )

"""Writing a demo dataset in exact VOC layout: masks with the 255 band, XML, splits, dataset.json,
and the preview grid. Style-independent: a style hands over `DemoSample`s and its class names.

Masks hold what is visible; `SegmentationClass` has a 255 band about 2 px wide along every object
border (as VOC has), `SegmentationClassAug` has none (as SBD's masks). XML boxes are the visible
extent (1-based inclusive pixel coordinates).
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pcam.data.demo.draw import DemoSample
from pcam.data.voc import (
    DatasetSpec,
    annotation_root,
    load_image,
    read_split,
    training_mask,
    voc_palette,
)
from pcam.errors import DataError
from pcam.io import IGNORE_INDEX, atomic_path, palette_bytes, save_label_png, write_text

log = logging.getLogger(__name__)

_BAND_RADIUS = 1  # pixels on each side of a border: a band ~2 px wide
_JPEG_QUALITY = 90


def border_band(instances: np.ndarray, radius: int = _BAND_RADIUS) -> np.ndarray:
    """HxW bool: pixels within `radius` (Chebyshev) of a pixel of another instance."""
    h, w = instances.shape
    padded = np.pad(instances, radius, mode="edge")
    band = np.zeros((h, w), dtype=bool)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
            band |= shifted != instances
    return band


def sample_masks(sample: DemoSample) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(SegmentationClass mask with the 255 band, SegmentationClassAug mask, kept instances).

    An instance that lies entirely inside the band is set to 255 in both masks and not kept, so
    masks and XML labels always agree.
    """
    labels = np.array([0] + [o.label for o in sample.objects], dtype=np.uint8)
    semantic = labels[sample.instances]
    band = border_band(sample.instances)
    inner = np.bincount(sample.instances[~band], minlength=len(labels))
    kept = [k for k in range(1, len(labels)) if inner[k] > 0]
    lost = np.isin(sample.instances, [k for k in range(1, len(labels)) if k not in kept])
    semantic[lost] = IGNORE_INDEX
    voc_mask = np.where(band, IGNORE_INDEX, semantic).astype(np.uint8)
    return voc_mask, semantic, kept


def annotation_xml(
    image_id: str, sample: DemoSample, kept: list[int], class_names: list[str]
) -> str:
    """VOC XML of the kept instances; boxes are the visible extent, 1-based inclusive.

    class_names: every class name, background first (`class_names[label]` names an object).
    """
    h, w = sample.instances.shape
    root = annotation_root("demo", image_id, w, h)
    for k in kept:
        obj = sample.objects[k - 1]
        ys, xs = np.nonzero(sample.instances == k)
        visible = ys.size / obj.mask.sum()
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = class_names[obj.label]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "occluded").text = str(int(visible < 1.0))
        ET.SubElement(node, "difficult").text = str(int(visible < 0.6))
        box = ET.SubElement(node, "bndbox")
        for tag, value in (
            ("xmin", xs.min() + 1),
            ("ymin", ys.min() + 1),
            ("xmax", xs.max() + 1),
            ("ymax", ys.max() + 1),
        ):
            ET.SubElement(box, tag).text = str(int(value))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _write_sample(spec: DatasetSpec, image_id: str, sample: DemoSample, with_gt: bool) -> None:
    voc_mask, aug_mask, kept = sample_masks(sample)
    with atomic_path(spec.image_path(image_id)) as tmp:
        Image.fromarray(sample.image).save(tmp, format="JPEG", quality=_JPEG_QUALITY)
    save_label_png(spec.mask_path(image_id, aug=True), aug_mask, spec.palette)
    if with_gt:
        save_label_png(spec.mask_path(image_id), voc_mask, spec.palette)
    write_text(
        spec.annotation_path(image_id), annotation_xml(image_id, sample, kept, spec.class_names)
    )


def write_dataset(
    out: Path,
    class_names: list[str],
    samples: Callable[[int], DemoSample],
    n_train: int,
    n_val: int,
) -> None:
    """Write `n_train + n_val` samples (`samples(k)` is image k) in VOC layout under `out`.

    Ids `demo_000000`.. : the first `n_train` form `train_aug`, every other one of them `train`
    (the images with SegmentationClass masks), the next `n_val` form `val`. `dataset.json` holds
    `class_names` (background first) and the VOC colour map's first colours.
    """
    spec = DatasetSpec(out, class_names, voc_palette(len(class_names)))
    ids = [f"demo_{k:06d}" for k in range(n_train + n_val)]
    train_aug, val = ids[:n_train], ids[n_train:]
    train = train_aug[::2]
    with_gt = set(train) | set(val)
    for k, image_id in enumerate(tqdm(ids, desc="demo-data", unit="img", disable=None)):
        _write_sample(spec, image_id, samples(k), image_id in with_gt)
    for name, members in (("train_aug", train_aug), ("train", train), ("val", val)):
        write_text(spec.split_path(name), "".join(f"{i}\n" for i in members))
    rows = ",\n    ".join(json.dumps(row) for row in spec.palette.tolist())
    write_text(
        out / "dataset.json",
        f'{{\n  "class_names": {json.dumps(class_names)},\n  "palette": [\n    {rows}\n  ]\n}}\n',
    )


def render_preview(root: Path, out_png: Path, n: int = 8) -> None:
    """A PNG grid of the first `n` train_aug images, each beside its mask blended over it."""
    spec = DatasetSpec.from_settings({"root": str(root)})
    ids = read_split(spec, spec.train_split)[:n]
    if not ids:
        raise DataError(f"{spec.split_path(spec.train_split)}: no images to preview")
    colours = np.array(palette_bytes(spec.palette), dtype=np.float32).reshape(256, 3)
    cells = []
    for image_id in ids:
        image = load_image(spec.image_path(image_id)).astype(np.float32)
        mask = training_mask(spec, image_id)
        alpha = np.where(mask > 0, 0.55, 0.0)[..., None]
        overlay = (1 - alpha) * image + alpha * colours[mask]
        cells.append(np.concatenate([image, overlay], axis=1))
    cols = min(4, len(cells))
    blank = np.full_like(cells[0], 255.0)
    cells += [blank] * (-len(cells) % cols)
    rows = [np.concatenate(cells[r : r + cols], axis=1) for r in range(0, len(cells), cols)]
    grid = np.clip(np.concatenate(rows, axis=0) + 0.5, 0, 255).astype(np.uint8)
    with atomic_path(out_png) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")

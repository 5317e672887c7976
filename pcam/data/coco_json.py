"""Streaming a COCO `instances_*.json` without holding it: categories, spill buckets.

The JSON is streamed (`ijson`) three times: images, then annotations, then categories. The first
two passes spill each record as one JSON line into one of `SPILL_BUCKETS` files keyed by image id,
so no pass holds more than one record; `pcam.data.coco` then loads one bucket at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ijson
from tqdm import tqdm

from pcam.errors import DataError

SPILL_BUCKETS = 256  # spill files per split: a bucket holds about 1/256 of the annotations


@dataclass(frozen=True)
class ClassTable:
    """COCO categories in category-id order: `names[0]` is background, `labels[cat_id]` 1..K."""

    names: list[str]
    category_ids: list[int]

    @property
    def labels(self) -> dict[int, int]:
        return {cat: k + 1 for k, cat in enumerate(self.category_ids)}


def stream(path: Path, prefix: str) -> Iterator[dict[str, Any]]:
    """Yield the objects at `prefix` (e.g. "annotations.item") of a JSON file, one at a time."""
    try:
        with open(path, "rb") as fh:
            yield from ijson.items(fh, prefix, use_float=True)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: annotation file is missing") from exc
    except ijson.JSONError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc


def read_classes(path: Path) -> ClassTable:
    """The class table of an instances file (categories sorted by id). None -> DataError."""
    categories = sorted(stream(path, "categories.item"), key=lambda c: int(c["id"]))
    if not categories:
        raise DataError(f"{path}: no categories")
    ids = [int(c["id"]) for c in categories]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: duplicate category ids")
    return ClassTable(["background", *(str(c["name"]) for c in categories)], ids)


def spill(path: Path, bucket_dir: Path) -> int:
    """Copy images and annotations of `path` into JSON-line buckets keyed by image id.

    Returns the number of images. Bucket `k` (`bucket_dir/{k}.jsonl`) holds the images with
    `id % SPILL_BUCKETS == k` (lines `{"image": ...}`) and their annotations (`{"ann": ...}`).
    """
    handles: dict[int, Any] = {}

    def write(image_id: int, record: dict) -> None:
        bucket = image_id % SPILL_BUCKETS
        if bucket not in handles:
            handles[bucket] = open(bucket_dir / f"{bucket}.jsonl", "a")
        handles[bucket].write(json.dumps(record) + "\n")

    n_images = 0
    try:
        for image in tqdm(stream(path, "images.item"), desc="images", disable=None, unit="img"):
            keep = {k: image[k] for k in ("id", "file_name", "width", "height")}
            write(int(image["id"]), {"image": keep})
            n_images += 1
        for ann in tqdm(stream(path, "annotations.item"), desc="annotations", disable=None):
            write(int(ann["image_id"]), {"ann": ann})
    except KeyError as exc:
        raise DataError(f"{path}: a record lacks the field {exc}") from exc
    finally:
        for fh in handles.values():
            fh.close()
    return n_images


def read_bucket(path: Path, source: Path) -> tuple[list[dict], dict[int, list[dict]]]:
    """(images, annotations by image id) of one spill bucket; orphan annotation -> DataError."""
    images: list[dict] = []
    anns: dict[int, list[dict]] = {}
    with open(path) as fh:
        for line in fh:
            record = json.loads(line)
            if "image" in record:
                images.append(record["image"])
            else:
                anns.setdefault(int(record["ann"]["image_id"]), []).append(record["ann"])
    orphans = set(anns) - {int(i["id"]) for i in images}
    if orphans:
        raise DataError(f"{source}: annotations refer to unknown image id(s) {sorted(orphans)[:5]}")
    return images, anns

"""Pre-flight consistency check of a VOC-layout dataset (`pcam check-data`).

Reads every listed image, mask and annotation once and reports each problem as a row naming the
split, the image id, the file and what is wrong with it. It never writes into the dataset.
An image listed in several splits is checked once, under the first split that lists it; the
"no labels" check applies when any of its splits is a training split. An empty split list and an
id listed twice are problems of the list itself.

`kind` restricts the check to what one kind of reader needs (`pcam.data.manifest.KINDS`):
`images` decodes the pictures; `labels` checks masks (against the image's size, read from its
header), annotations and image-level labels. The workflow runs one check per split and kind, so
a fixed mask re-runs the labels check and what reads labels, not the inference that reads images.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pcam.data.voc import (
    DatasetSpec,
    image_labels,
    load_image,
    load_mask,
    read_split,
    read_xml_labels,
)
from pcam.errors import DataError
from pcam.io import IGNORE_INDEX, atomic_path

log = logging.getLogger(__name__)

DEFAULT_TRAINING_SPLITS = ["train", "train_aug"]


@dataclass
class Problem:
    """One finding: `path` is the file at fault, `problem` says what is wrong with it."""

    split: str
    image_id: str
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def _reason(exc: DataError, path: Path) -> str:
    """The message of a reader's DataError without its leading '{path}: '."""
    return str(exc).removeprefix(f"{path}: ")


def _check_mask(spec: DatasetSpec, path: Path, image_shape: tuple[int, ...] | None) -> str | None:
    """The problem of one existing mask file (unreadable, wrong size, unknown index), or None."""
    try:
        mask = load_mask(path)
    except DataError as exc:
        return _reason(exc, path)
    if image_shape is not None and mask.shape != image_shape:
        return (
            f"mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but the image is "
            f"{image_shape[1]}x{image_shape[0]}"
        )
    values = np.unique(mask)
    unknown = values[(values >= spec.num_classes) & (values != IGNORE_INDEX)]
    if unknown.size:
        return (
            f"mask holds index(es) {unknown.tolist()}, neither a class "
            f"(0..{spec.num_classes - 1}) nor {IGNORE_INDEX}"
        )
    return None


def _label_problem(spec: DatasetSpec, image_id: str, split: str) -> tuple[Path, str] | None:
    """(file, problem) when an image of training split `split` has no image-level label."""
    xml = spec.annotation_path(image_id)
    try:
        labels = image_labels(spec, image_id)
    except DataError:
        return xml, f"no annotation and no mask: no image-level label for training split {split}"
    if labels.any():
        return None
    sources = (xml, spec.mask_path(image_id), spec.mask_path(image_id, aug=True))
    where = next(p for p in sources if p.exists())  # the source image_labels read
    return where, f"empty label vector (no object, no foreground) in training split {split}"


def _image_shape(spec: DatasetSpec, image_id: str, decode: bool) -> tuple[tuple | None, str | None]:
    """(HxW of the image or None, problem or None). `decode`: read every pixel (the images
    check); otherwise only the header (the labels check needs the size, not the pixels)."""
    path = spec.image_path(image_id)
    if not path.exists():
        return None, "listed image is missing"
    if not decode:
        try:
            with Image.open(path) as img:
                return (img.height, img.width), None
        except (OSError, SyntaxError, ValueError):
            return None, None  # the images check reports it
    try:
        return load_image(path).shape[:2], None
    except DataError as exc:
        return None, _reason(exc, path)


def check_image(
    spec: DatasetSpec,
    split: str,
    image_id: str,
    training_split: str | None = None,
    kind: str | None = None,
) -> list[Problem]:
    """Every problem of one listed image: its picture, masks and annotation, and, when it is
    listed in `training_split`, whether it carries any image-level label. `kind` "images" or
    "labels" keeps that half of the checks (None: both)."""
    problems: list[Problem] = []

    def report(path: Path, problem: str) -> None:
        problems.append(Problem(split, image_id, str(path), problem))

    shape, problem = _image_shape(spec, image_id, decode=kind != "labels")
    if problem and kind != "labels":
        report(spec.image_path(image_id), problem)
    if kind == "images":
        return problems
    n_image_problems = len(problems)
    for path in (spec.mask_path(image_id), spec.mask_path(image_id, aug=True)):
        if path.exists() and (problem := _check_mask(spec, path, shape)):
            report(path, problem)
    xml = spec.annotation_path(image_id)
    if xml.exists():
        try:
            read_xml_labels(xml, spec.class_names)
        except DataError as exc:
            report(xml, _reason(exc, xml))
    labels_readable = len(problems) == n_image_problems
    if training_split and labels_readable:
        found = _label_problem(spec, image_id, training_split)
        if found:
            report(*found)
    return problems


def list_problems(spec: DatasetSpec, split: str, ids: list[str]) -> list[Problem]:
    """Problems of a split list itself: no ids at all, or ids listed more than once (each would
    be computed in two shards and counted twice in training and evaluation)."""
    path = str(spec.split_path(split))
    if not ids:
        return [Problem(split, "", path, "split list is empty: it names no image id")]
    positions: dict[str, list[int]] = {}
    for n, image_id in enumerate(ids, start=1):
        positions.setdefault(image_id, []).append(n)
    return [
        Problem(split, image_id, path, f"id {image_id} is listed {len(at)} times (entries {at})")
        for image_id, at in positions.items()
        if len(at) > 1
    ]


def check_dataset(
    spec: DatasetSpec,
    splits: list[str] | None = None,
    training_splits: list[str] | None = None,
    kind: str | None = None,
) -> list[Problem]:
    """Check the listed images of `splits` (None: every `*.txt` under the split folder).

    Images of `training_splits` (default train, train_aug) must carry at least one label.
    `kind`: as for `check_image`. Returns the problems found, lists first, then per image in
    split order; [] for a consistent dataset.
    """
    training = set(DEFAULT_TRAINING_SPLITS if training_splits is None else training_splits)
    if splits is None:
        split_dir = spec.root / spec.split_dir
        splits = sorted(p.stem for p in split_dir.glob("*.txt"))
        if not splits:
            return [Problem("", "", str(split_dir), "no split lists (*.txt) found")]
    problems: list[Problem] = []
    first_split: dict[str, str] = {}
    training_split: dict[str, str] = {}
    for split in splits:
        path = spec.split_path(split)
        try:
            ids = read_split(spec, split)
        except DataError as exc:
            problems.append(Problem(split, "", str(path), _reason(exc, path)))
            continue
        problems += list_problems(spec, split, ids)
        for image_id in ids:
            first_split.setdefault(image_id, split)
            if split in training:
                training_split.setdefault(image_id, split)
    for image_id, split in tqdm(first_split.items(), desc="check-data", disable=None):
        problems.extend(check_image(spec, split, image_id, training_split.get(image_id), kind))
    log.info("checked %d images of %s: %d problem(s)", len(first_split), splits, len(problems))
    return problems


def missing_training_masks(spec: DatasetSpec, splits: list[str]) -> list[Problem]:
    """One problem per image of `splits` without a SegmentationClassAug or SegmentationClass
    mask: the fully supervised reference (`supervision: full`) trains on these masks."""
    problems = []
    for split in splits:
        try:
            ids = read_split(spec, split)
        except DataError as exc:
            path = spec.split_path(split)
            problems.append(Problem(split, "", str(path), _reason(exc, path)))
            continue
        for image_id in ids:
            if not any(spec.mask_path(image_id, aug).exists() for aug in (True, False)):
                where = spec.mask_path(image_id, aug=True)
                problems.append(
                    Problem(split, image_id, str(where), "missing, and so is "
                            f"{spec.mask_path(image_id)}: full supervision needs a mask")
                )  # fmt: skip
    return problems


def write_report(problems: list[Problem], path: Path) -> None:
    """CSV with columns split,image_id,path,problem (header always), written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow([f.name for f in fields(Problem)])
            writer.writerows(astuple(p) for p in problems)

"""Dataset-agnostic reader for VOC-layout datasets (VOC 2012 first, the demo dataset too).

A dataset is described by a `DatasetSpec` (root, class names, palette, folder and split names).
Every reader here raises `DataError` naming the file at fault, so a bad image stops a stage with a
message instead of a traceback deep inside a DataLoader worker.

Image-level labels follow spec 1.3: every `<object>` of the XML counts (difficult and truncated
ones too) unless its box, clipped to the image, has zero width or height. Without an XML file the
labels come from the segmentation mask (classes present other than background and 255).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pcam.errors import ConfigError, DataError
from pcam.io import IGNORE_INDEX, load_label_png

VOC_CLASSES: list[str] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard VOC colour map: (n, 3) uint8 RGB, entry 0 black, entry 1 (128, 0, 0), ...

    Entry i spreads the bits of i over the channels: bit 3k+c of i sets bit 7-k of channel c.
    """
    index = np.arange(n, dtype=np.int64)
    palette = np.zeros((n, 3), dtype=np.int64)
    for k in range(8):
        for c in range(3):
            palette[:, c] |= ((index >> (3 * k + c)) & 1) << (7 - k)
    return palette.astype(np.uint8)


@dataclass(eq=False)
class DatasetSpec:
    """Where a VOC-layout dataset lives and what its classes are.

    The folder and split defaults are the VOC devkit's own names (a fact of the format, for
    callers that give a root alone); the pipeline always passes config's `dataset` section whole.
    `class_names[0]` is background; `palette` is (C, 3) uint8 with at least one row per class
    (extra rows are dropped). Split lists live at `root/split_dir/{name}.txt`.
    """

    root: Path
    class_names: list[str]
    palette: np.ndarray
    image_dir: str = "JPEGImages"
    mask_dir: str = "SegmentationClass"
    aug_mask_dir: str = "SegmentationClassAug"
    annotation_dir: str = "Annotations"
    split_dir: str = "ImageSets/Segmentation"
    train_split: str = "train_aug"
    eval_split: str = "train"
    val_split: str = "val"
    test_split: str | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.class_names = list(self.class_names)
        if len(self.class_names) < 2 or len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(
                f"dataset.class_names: need at least 2 unique names, got {self.class_names}"
            )
        self.palette = _as_palette(self.palette, "dataset.palette")
        if len(self.palette) < len(self.class_names):
            raise ConfigError(
                f"dataset.palette: {len(self.palette)} colours for {len(self.class_names)} classes"
            )
        self.palette = self.palette[: len(self.class_names)]

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names)

    @property
    def is_voc(self) -> bool:
        """True when the classes are exactly VOC 2012's (the paper's numbers apply)."""
        return self.class_names == VOC_CLASSES

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> DatasetSpec:
        """Build from the `dataset` section of the config (unknown keys -> ConfigError).

        The pipeline passes the whole section (the schema requires every key). A caller may
        give `root` alone (`pcam check-data --root DIR`): the folder and split names then are the
        VOC devkit's (the field defaults), and `class_names`/`palette` are null. Null
        `class_names`/`palette` come from `root/dataset.json` when it exists, else VOC 2012
        (names) and the VOC colour map (palette).
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"dataset.{unknown[0]}: unknown key (known: {sorted(known)})")
        values = {"root": None, "class_names": None, "palette": None, **settings}
        if not values["root"]:
            raise ConfigError("dataset.root: missing")
        described = _read_description(Path(values["root"]) / "dataset.json")
        if values["class_names"] is None:
            values["class_names"] = described.get("class_names", VOC_CLASSES)
        if values["palette"] is None:
            palette = described.get("palette")
            if palette is None or len(palette) < len(values["class_names"]):
                palette = voc_palette(len(values["class_names"]))
            values["palette"] = palette
        return cls(**values)

    def image_path(self, image_id: str) -> Path:
        """`root/image_dir/{id}.jpg`."""
        return self.root / self.image_dir / f"{image_id}.jpg"

    def mask_path(self, image_id: str, aug: bool = False) -> Path:
        """`root/mask_dir/{id}.png`, or `root/aug_mask_dir/{id}.png` when `aug`."""
        return self.root / (self.aug_mask_dir if aug else self.mask_dir) / f"{image_id}.png"

    def annotation_path(self, image_id: str) -> Path:
        """`root/annotation_dir/{id}.xml`."""
        return self.root / self.annotation_dir / f"{image_id}.xml"

    def split_path(self, name: str) -> Path:
        """`root/split_dir/{name}.txt`."""
        return self.root / self.split_dir / f"{name}.txt"


def _as_palette(value: Any, where: str) -> np.ndarray:
    """Check and convert a palette given as rows of [r, g, b] in 0..255 to (n, 3) uint8."""
    array = np.asarray(value)
    if array.ndim != 2 or array.shape[1] != 3 or not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(f"{where}: expected rows of 3 integers, got shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ConfigError(f"{where}: colour values must lie in 0..255")
    return array.astype(np.uint8)


def _read_description(path: Path) -> dict[str, Any]:
    """`dataset.json` ({"class_names": [...], "palette": [[r, g, b], ...]}) or {} if absent."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read dataset description ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("class_names"), list):
        raise ConfigError(f"{path}: expected an object with a 'class_names' list")
    out: dict[str, Any] = {"class_names": [str(n) for n in data["class_names"]]}
    if data.get("palette") is not None:
        out["palette"] = _as_palette(data["palette"], f"{path}: palette")
    return out


def read_split(spec: DatasetSpec, name: str) -> list[str]:
    """Image ids of split `name`: one per line, whitespace and CRLF stripped, blanks skipped."""
    path = spec.split_path(name)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: split list is missing") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read split list ({exc})") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image fully: HxWx3 uint8 RGB. Missing, truncated or corrupt -> DataError."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated JPEG fails here and not in a worker
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: image file is missing") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: image does not decode ({exc})") from exc


def load_mask(path: str | Path) -> np.ndarray:
    """A class-index mask (palette or grayscale PNG): HxW uint8, 255 = ignore."""
    return load_label_png(path)


def annotation_root(folder: str, image_id: str, width: int, height: int) -> ET.Element:
    """The `<annotation>` element of a VOC XML file up to its objects (folder, file name, size,
    `segmented` 1); writers append one `<object>` per instance."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    return root


def _box_side(box: ET.Element, low: str, high: str, limit: float, path: Path) -> float:
    """Extent of a box along one axis after clipping both ends to [0, limit]."""
    try:
        lo, hi = float(box.findtext(low, "")), float(box.findtext(high, ""))
    except ValueError as exc:
        raise DataError(f"{path}: bndbox {low}/{high} is not a number") from exc
    return min(max(hi, 0.0), limit) - min(max(lo, 0.0), limit)


def read_xml_labels(path: str | Path, class_names: list[str]) -> list[str]:
    """Class names of the kept objects of a VOC XML file, in document order (spec 1.3).

    Every object counts, difficult ones included, except those whose bounding box clipped to
    the image size has zero width or height. Unknown class or malformed XML -> DataError.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: annotation file is missing") from exc
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"{path}: malformed XML ({exc})") from exc
    size = root.find("size")
    try:
        width = float(size.findtext("width", "inf")) if size is not None else float("inf")
        height = float(size.findtext("height", "inf")) if size is not None else float("inf")
    except ValueError as exc:
        raise DataError(f"{path}: image size is not a number") from exc
    names = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_names[1:]:
            raise DataError(f"{path}: unknown class {name!r}")
        box = obj.find("bndbox")
        if box is not None and (
            _box_side(box, "xmin", "xmax", width, path) <= 0
            or _box_side(box, "ymin", "ymax", height, path) <= 0
        ):
            continue
        names.append(name)
    return names


def _labels_from_mask(mask: np.ndarray, spec: DatasetSpec, path: Path) -> np.ndarray:
    present = np.unique(mask)
    present = present[(present != 0) & (present != IGNORE_INDEX)]
    if present.size and present.max() >= spec.num_classes:
        raise DataError(f"{path}: mask holds class index {int(present.max())} (unknown)")
    labels = np.zeros(spec.num_classes - 1, dtype=np.float32)
    labels[present.astype(np.int64) - 1] = 1.0
    return labels


def image_labels(spec: DatasetSpec, image_id: str) -> np.ndarray:
    """Multi-hot image-level labels, (C-1,) float32, no background: class c -> index c-1.

    From the XML annotation if it exists, else from SegmentationClass, else from
    SegmentationClassAug. None of them -> DataError.
    """
    xml = spec.annotation_path(image_id)
    if xml.exists():
        labels = np.zeros(spec.num_classes - 1, dtype=np.float32)
        for name in read_xml_labels(xml, spec.class_names):
            labels[spec.class_names.index(name) - 1] = 1.0
        return labels
    for path in (spec.mask_path(image_id), spec.mask_path(image_id, aug=True)):
        if path.exists():
            return _labels_from_mask(load_mask(path), spec, path)
    raise DataError(
        f"{image_id}: no labels: none of {xml}, {spec.mask_path(image_id)}, "
        f"{spec.mask_path(image_id, aug=True)} exists"
    )


def gt_mask(spec: DatasetSpec, image_id: str) -> np.ndarray | None:
    """The ground-truth mask (SegmentationClass) used for evaluation, or None if absent."""
    path = spec.mask_path(image_id)
    return load_mask(path) if path.exists() else None


def training_mask(spec: DatasetSpec, image_id: str) -> np.ndarray:
    """The mask for fully supervised training: SegmentationClassAug, else SegmentationClass."""
    for path in (spec.mask_path(image_id, aug=True), spec.mask_path(image_id)):
        if path.exists():
            return load_mask(path)
    raise DataError(
        f"{spec.mask_path(image_id, aug=True)}: missing, and so is {spec.mask_path(image_id)}"
    )

"""The procedural demo dataset (`pcam demo-data`): a small VOC-layout dataset where weak
supervision is a real problem.

Design. Every object has a BODY and a DISCRIMINATIVE PART:

- The body's appearance is the same for all classes: a warm tan/brown colour family with a soft
  blotchy texture and directional shading, on a random shape (ellipse, rounded polygon or random
  blob) whose extent is 15-45% of the image side.
- The part is a disk covering roughly 20-30% of the object's area, placed somewhere inside the
  body. Its colour and pattern are class-specific (red stripes, green with dark dots, ...; see
  `DEMO_CLASSES`). Class identity is visible ONLY in the part.
- Backgrounds are cool-toned and cluttered (two-colour gradient, low-contrast stripes, smooth
  noise, pixel noise and 0-4 distractor blobs in background colours), so the body is still
  separable from the background by colour and edges.

What a classifier's CAM should do here: a plain classifier needs only the part to tell the
classes apart, so its CAM peaks on the part and leaves most of the body (70-80% of the object)
cold. CAM mIoU is therefore poor at any single threshold: thresholds low enough to cover bodies
also light up clutter, high ones keep only the parts. Methods that spread activation from the part
to the whole object along colour/edge affinities (dense CRF, AffinityNet random walk) have real
headroom, and the puzzle module's reconstruction loss should push CAMs towards the body.

Scenes hold 1-3 objects; classes come in co-occurring pairs (1-2, 3-4, 5-6, 7-8), as bicycles come
with persons in VOC. Later objects are drawn over earlier ones; placements that would hide more
than half of an earlier object or 40% of its part are re-drawn, so every labelled object shows its
part. Masks hold what is visible; `SegmentationClass` has a 255 band about 2 px wide along every
object border (as VOC has), `SegmentationClassAug` has none (as SBD's masks). XML boxes are the
visible extent (1-based inclusive pixel coordinates).

Determinism: image k depends only on (seed, k, size), through `numpy.random.default_rng([seed, k])`;
the same arguments give byte-identical files. Vectorised numpy, no per-pixel Python loops.
"""

from __future__ import annotations

import json
import logging
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pcam.data.voc import (
    DatasetSpec,
    annotation_root,
    load_image,
    read_split,
    training_mask,
    voc_palette,
)
from pcam.errors import ConfigError, DataError
from pcam.io import IGNORE_INDEX, atomic_path, palette_bytes, save_label_png, write_text

log = logging.getLogger(__name__)

# Foreground classes: name (the part's colour and pattern) -> part colour, RGB in 0..1.
_PARTS = {
    "red_stripes": (0.88, 0.12, 0.12),
    "green_dots": (0.15, 0.72, 0.22),
    "blue_checker": (0.16, 0.32, 0.90),
    "yellow_rings": (0.95, 0.85, 0.15),
    "magenta_cross": (0.85, 0.20, 0.78),
    "cyan_diagonals": (0.15, 0.80, 0.85),
    "white_grid": (0.96, 0.96, 0.96),
    "purple_solid": (0.48, 0.20, 0.78),
}
DEMO_CLASSES: list[str] = ["background", *_PARTS]
_PART_COLOURS = np.array(list(_PARTS.values()), dtype=np.float32)  # index = class - 1
_PARTNER = {1: 2, 2: 1, 3: 4, 4: 3, 5: 6, 6: 5, 7: 8, 8: 7}  # co-occurring class pairs
_BAND_RADIUS = 1  # pixels on each side of a border: a band ~2 px wide
_JPEG_QUALITY = 90


@dataclass
class DemoObject:
    """One object of a scene: class index in 1..8 and full (pre-occlusion) HxW bool masks."""

    label: int
    mask: np.ndarray
    part: np.ndarray


@dataclass
class DemoSample:
    """A rendered scene: `image` HxWx3 uint8 RGB; `instances` HxW int32, 0 = background and
    k = `objects[k-1]` where visible (later objects cover earlier ones)."""

    image: np.ndarray
    instances: np.ndarray
    objects: list[DemoObject]


# --------------------------------------------------------------------------- textures


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in 0..1) as RGB float32 (3,)."""
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return (v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean smooth noise (size, size) float32: a cells x cells grid, bilinearly upsampled."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    pos = np.linspace(0.0, cells - 1.0, size)
    weights = np.maximum(0.0, 1.0 - np.abs(pos[:, None] - np.arange(cells)[None, :]))
    weights = weights.astype(np.float32)
    return weights @ grid @ weights.T


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (y, x) as broadcastable (size, 1) and (1, size) float32 arrays."""
    axis = np.arange(size, dtype=np.float32)
    return axis[:, None], axis[None, :]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Cool-toned cluttered background, (size, size, 3) float32 in about 0..1."""
    y, x = _coords(size)
    c1 = _hsv(rng.uniform(0.28, 0.72), rng.uniform(0.1, 0.35), rng.uniform(0.3, 0.7))
    c2 = _hsv(rng.uniform(0.28, 0.72), rng.uniform(0.1, 0.35), rng.uniform(0.3, 0.7))
    beta = rng.uniform(0, 2 * math.pi)
    t = (x * math.cos(beta) + y * math.sin(beta)) / size
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    bg = c1 * (1 - t[..., None]) + c2 * t[..., None]
    if rng.random() < 0.7:  # low-contrast stripes
        gamma, period = rng.uniform(0, math.pi), rng.uniform(0.05, 0.15) * size
        phase = rng.uniform(0, 2 * math.pi)
        wave = np.sin(2 * math.pi * (x * math.cos(gamma) + y * math.sin(gamma)) / period + phase)
        bg = bg * (1 + rng.uniform(0.04, 0.12) * wave[..., None])
    bg = bg * (1 + 0.12 * _smooth_noise(rng, size, 6)[..., None])
    for _ in range(rng.integers(0, 5)):  # distractor blobs: clutter, not objects
        blob = _shape_mask(rng, size, rng.uniform(0.08, 0.25) * size, kind="blob")[0]
        colour = _hsv(rng.uniform(0.28, 0.72), rng.uniform(0.2, 0.5), rng.uniform(0.25, 0.8))
        texture = 1 + 0.1 * _smooth_noise(rng, size, 8)[..., None]
        bg = np.where(blob[..., None], colour * texture, bg)
    return bg


def _body(rng: np.random.Generator, size: int, centre: tuple[float, float]) -> np.ndarray:
    """Body appearance shared by all classes: warm tan, blotchy, shaded; (size, size, 3)."""
    y, x = _coords(size)
    colour = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.35, 0.6), rng.uniform(0.55, 0.85))
    light = rng.uniform(0, 2 * math.pi)
    shade = ((x - centre[1]) * math.cos(light) + (y - centre[0]) * math.sin(light)) / size
    texture = 1 + 0.1 * _smooth_noise(rng, size, max(4, size // 12)) + 0.5 * shade
    return colour * texture[..., None]


def _part_pattern(label: int, dy: np.ndarray, dx: np.ndarray, period: float) -> np.ndarray:
    """Class-specific pattern around the part centre: True = class colour, False = dark."""
    half = period / 2
    patterns = {
        1: lambda: np.floor(dy / half) % 2 == 0,  # horizontal stripes
        2: lambda: (dx % period - half) ** 2 + (dy % period - half) ** 2 > (0.3 * period) ** 2,
        3: lambda: (np.floor(dx / half) + np.floor(dy / half)) % 2 == 0,  # checker
        4: lambda: np.floor(np.hypot(dx, dy) / half) % 2 == 0,  # rings
        5: lambda: (np.abs(dx) > period / 4) & (np.abs(dy) > period / 4),  # dark cross
        6: lambda: np.floor((dx + dy) / period) % 2 == 0,  # diagonal stripes
        7: lambda: (dx % period >= 1) & (dy % period >= 1),  # thin dark grid
        8: lambda: np.ones_like(dx, dtype=bool),  # solid
    }
    return patterns[label]()


# --------------------------------------------------------------------------- layout


def _shape_mask(
    rng: np.random.Generator, size: int, extent: float, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """A random star-shaped region of diameter about `extent`, fully inside the image.

    Returns (mask (size, size) bool, relative radius (size, size) float32: 0 at the centre, 1 on
    the outline, inf outside the shape's bounding square). Only that square is computed.
    """
    half = extent / 2
    cy, cx = rng.uniform(half, size - half, size=2)
    alpha = rng.uniform(0, 2 * math.pi)
    squash = rng.uniform(0.6, 1.0)
    if kind == "ellipse":

        def outline(theta: np.ndarray) -> np.ndarray:
            return np.ones_like(theta)

    elif kind == "polygon":  # regular polygon with its corners cut by a circle (rounded)
        n = int(rng.integers(3, 7))
        cap, sector = rng.uniform(0.5 + 0.5 * math.cos(math.pi / n), 0.95), 2 * math.pi / n

        def outline(theta: np.ndarray) -> np.ndarray:
            return np.minimum(math.cos(math.pi / n) / np.cos(theta % sector - sector / 2), cap)

    else:  # random blob: a few low harmonics of the radius
        amps, phases = rng.uniform(0, 0.14, size=(3, 1, 1)), rng.uniform(0, 2 * math.pi, (3, 1, 1))
        harmonics = np.arange(2, 5).reshape(3, 1, 1)

        def outline(theta: np.ndarray) -> np.ndarray:
            return 1 + (amps * np.cos(harmonics * theta + phases)).sum(axis=0)

    peak = float(outline(np.linspace(0, 2 * math.pi, 721)[None, :]).max())
    y0, x0 = max(0, math.floor(cy - half)), max(0, math.floor(cx - half))
    y1, x1 = min(size, math.ceil(cy + half) + 1), min(size, math.ceil(cx + half) + 1)
    y = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    x = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    u = x * math.cos(alpha) + y * math.sin(alpha)
    v = (y * math.cos(alpha) - x * math.sin(alpha)) / squash
    relative = np.full((size, size), np.inf, dtype=np.float32)
    relative[y0:y1, x0:x1] = np.hypot(u, v) * peak / (half * outline(np.arctan2(v, u)))
    return relative <= 1.0, relative


def _random_object(rng: np.random.Generator, size: int, label: int) -> DemoObject:
    """One object with its part, not yet drawn (shape, size and part position drawn from rng)."""
    kind = ("ellipse", "polygon", "blob")[int(rng.integers(3))]
    mask, relative = _shape_mask(rng, size, rng.uniform(0.15, 0.45) * size, kind)
    inner = np.flatnonzero(relative <= 0.45)
    centre = inner[rng.integers(inner.size)] if inner.size else int(np.argmin(relative))
    py, px = divmod(int(centre), size)
    radius = math.sqrt(rng.uniform(0.2, 0.3) * mask.sum() / math.pi)
    y, x = _coords(size)
    part = mask & (np.hypot(y - py, x - px) <= radius)
    return DemoObject(label=label, mask=mask, part=part)


def _pick_labels(rng: np.random.Generator) -> list[int]:
    """1-3 class labels; later objects often repeat the first class's partner or a class."""
    labels = [int(rng.integers(1, 9))]
    for _ in range(int(rng.choice([0, 1, 2], p=[0.4, 0.35, 0.25]))):
        r = rng.random()
        if r < 0.4:
            labels.append(_PARTNER[labels[0]])
        elif r < 0.55:
            labels.append(labels[int(rng.integers(len(labels)))])
        else:
            labels.append(int(rng.integers(1, 9)))
    return labels


def _still_visible(objects: list[DemoObject], new: DemoObject) -> bool:
    """Whether every earlier object keeps >= 50% of its area and >= 60% of its part with `new`
    drawn on top."""
    cover = new.mask.copy()
    for obj in reversed(objects):
        if (obj.mask & ~cover).sum() < 0.5 * obj.mask.sum():
            return False
        if (obj.part & ~cover).sum() < 0.6 * obj.part.sum():
            return False
        cover |= obj.mask
    return True


def _layout(rng: np.random.Generator, size: int) -> list[DemoObject]:
    """Objects in drawing order; placements that hide too much of earlier ones are re-drawn."""
    objects: list[DemoObject] = []
    for label in _pick_labels(rng):
        for _ in range(12):
            candidate = _random_object(rng, size, label)
            if _still_visible(objects, candidate):
                objects.append(candidate)
                break
    return objects


def make_sample(seed: int, index: int, size: int) -> DemoSample:
    """Render scene `index` of the dataset with generator seed `seed` (pure, deterministic)."""
    rng = np.random.default_rng([seed, index])
    canvas = _background(rng, size)
    objects = _layout(rng, size)
    instances = np.zeros((size, size), dtype=np.int32)
    y, x = _coords(size)
    for k, obj in enumerate(objects, start=1):
        ys, xs = np.nonzero(obj.mask)
        look = _body(rng, size, (float(ys.mean()), float(xs.mean())))
        pys, pxs = np.nonzero(obj.part)
        radius = math.sqrt(obj.part.sum() / math.pi)
        period = max(3.0, 0.6 * radius)
        pattern = _part_pattern(obj.label, y - pys.mean(), x - pxs.mean(), period)
        colour = _PART_COLOURS[obj.label - 1]
        part_look = np.where(pattern[..., None], colour, 0.22 * colour)
        look = np.where(obj.part[..., None], part_look, look)
        canvas = np.where(obj.mask[..., None], look, canvas)
        instances[obj.mask] = k
    canvas = canvas + rng.normal(0.0, 0.015, size=canvas.shape)
    image = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return DemoSample(image=image, instances=instances, objects=objects)


# --------------------------------------------------------------------------- masks and XML


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


def annotation_xml(image_id: str, sample: DemoSample, kept: list[int]) -> str:
    """VOC XML of the kept instances; boxes are the visible extent, 1-based inclusive."""
    h, w = sample.instances.shape
    root = annotation_root("demo", image_id, w, h)
    for k in kept:
        obj = sample.objects[k - 1]
        ys, xs = np.nonzero(sample.instances == k)
        visible = ys.size / obj.mask.sum()
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = DEMO_CLASSES[obj.label]
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


# --------------------------------------------------------------------------- writers


def _write_sample(spec: DatasetSpec, image_id: str, sample: DemoSample, with_gt: bool) -> None:
    voc_mask, aug_mask, kept = sample_masks(sample)
    with atomic_path(spec.image_path(image_id)) as tmp:
        Image.fromarray(sample.image).save(tmp, format="JPEG", quality=_JPEG_QUALITY)
    save_label_png(spec.mask_path(image_id, aug=True), aug_mask, spec.palette)
    if with_gt:
        save_label_png(spec.mask_path(image_id), voc_mask, spec.palette)
    write_text(spec.annotation_path(image_id), annotation_xml(image_id, sample, kept))


def generate(out: Path, n_train: int, n_val: int, size: int, seed: int) -> None:
    """Write the demo dataset in VOC layout under `out` (see the module docstring).

    Ids `demo_000000`.. : the first `n_train` form `train_aug`, every other one of them `train`
    (the images with SegmentationClass masks), the next `n_val` form `val`.
    """
    if n_train < 2 or n_val < 1 or size < 32:
        raise ConfigError(
            f"demo: need n_train >= 2, n_val >= 1, size >= 32; got {n_train}, {n_val}, {size}"
        )
    out = Path(out)
    spec = DatasetSpec(out, DEMO_CLASSES, voc_palette(len(DEMO_CLASSES)))
    ids = [f"demo_{k:06d}" for k in range(n_train + n_val)]
    train_aug, val = ids[:n_train], ids[n_train:]
    train = train_aug[::2]
    with_gt = set(train) | set(val)
    for k, image_id in enumerate(tqdm(ids, desc="demo-data", unit="img", disable=None)):
        _write_sample(spec, image_id, make_sample(seed, k, size), image_id in with_gt)
    for name, members in (("train_aug", train_aug), ("train", train), ("val", val)):
        write_text(spec.split_path(name), "".join(f"{i}\n" for i in members))
    rows = ",\n    ".join(json.dumps(row) for row in spec.palette.tolist())
    write_text(
        out / "dataset.json",
        f'{{\n  "class_names": {json.dumps(DEMO_CLASSES)},\n  "palette": [\n    {rows}\n  ]\n}}\n',
    )
    log.info("demo dataset in %s: %d train_aug, %d val, %d px", out, n_train, n_val, size)


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

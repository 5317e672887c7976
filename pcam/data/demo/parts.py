"""Demo style "parts": objects share one body and differ only in a small discriminative part.

- The body's appearance is the same for all classes: a warm tan/brown colour family with a soft
  blotchy texture and directional shading, on a random shape (ellipse, rounded polygon or random
  blob) whose extent is 15-45% of the image side.
- The part is a disk covering roughly 20-30% of the object's area, placed somewhere inside the
  body. Its colour and pattern are class-specific (red stripes, green with dark dots, ...; see
  `CLASSES`). Class identity is visible ONLY in the part.
- Backgrounds are cool-toned and cluttered (two-colour gradient, low-contrast stripes, smooth
  noise, pixel noise and 0-4 distractor blobs in background colours), so the body is still
  separable from the background by colour and edges.

A plain classifier needs only the part to tell the classes apart, so its CAM peaks on the part and
leaves most of the body (70-80% of the object) cold: methods that spread activation from the part
to the whole object along colour/edge affinities (dense CRF, random walk) have real headroom, and
the puzzle module's reconstruction loss should push CAMs towards the body.

Scenes hold 1-3 objects; classes come in co-occurring pairs (1-2, 3-4, 5-6, 7-8), as bicycles come
with persons in VOC.
"""

from __future__ import annotations

import math

import numpy as np

from pcam.data.demo.draw import (
    DemoObject,
    DemoSample,
    coords,
    finish,
    hsv,
    layout,
    shape_mask,
    smooth_noise,
)

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
CLASSES: list[str] = list(_PARTS)
_PART_COLOURS = np.array(list(_PARTS.values()), dtype=np.float32)  # index = class - 1
_PARTNER = {1: 2, 2: 1, 3: 4, 4: 3, 5: 6, 6: 5, 7: 8, 8: 7}  # co-occurring class pairs


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Cool-toned cluttered background, (size, size, 3) float32 in about 0..1."""
    y, x = coords(size)
    c1 = hsv(rng.uniform(0.28, 0.72), rng.uniform(0.1, 0.35), rng.uniform(0.3, 0.7))
    c2 = hsv(rng.uniform(0.28, 0.72), rng.uniform(0.1, 0.35), rng.uniform(0.3, 0.7))
    beta = rng.uniform(0, 2 * math.pi)
    t = (x * math.cos(beta) + y * math.sin(beta)) / size
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    bg = c1 * (1 - t[..., None]) + c2 * t[..., None]
    if rng.random() < 0.7:  # low-contrast stripes
        gamma, period = rng.uniform(0, math.pi), rng.uniform(0.05, 0.15) * size
        phase = rng.uniform(0, 2 * math.pi)
        wave = np.sin(2 * math.pi * (x * math.cos(gamma) + y * math.sin(gamma)) / period + phase)
        bg = bg * (1 + rng.uniform(0.04, 0.12) * wave[..., None])
    bg = bg * (1 + 0.12 * smooth_noise(rng, size, 6)[..., None])
    for _ in range(rng.integers(0, 5)):  # distractor blobs: clutter, not objects
        blob = shape_mask(rng, size, rng.uniform(0.08, 0.25) * size, kind="blob")[0]
        colour = hsv(rng.uniform(0.28, 0.72), rng.uniform(0.2, 0.5), rng.uniform(0.25, 0.8))
        texture = 1 + 0.1 * smooth_noise(rng, size, 8)[..., None]
        bg = np.where(blob[..., None], colour * texture, bg)
    return bg


def _body(rng: np.random.Generator, size: int, centre: tuple[float, float]) -> np.ndarray:
    """Body appearance shared by all classes: warm tan, blotchy, shaded; (size, size, 3)."""
    y, x = coords(size)
    colour = hsv(rng.uniform(0.05, 0.12), rng.uniform(0.35, 0.6), rng.uniform(0.55, 0.85))
    light = rng.uniform(0, 2 * math.pi)
    shade = ((x - centre[1]) * math.cos(light) + (y - centre[0]) * math.sin(light)) / size
    texture = 1 + 0.1 * smooth_noise(rng, size, max(4, size // 12)) + 0.5 * shade
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


def _random_object(rng: np.random.Generator, size: int, label: int) -> DemoObject:
    """One object with its part, not yet drawn (shape, size and part position drawn from rng)."""
    kind = ("ellipse", "polygon", "blob")[int(rng.integers(3))]
    mask, relative = shape_mask(rng, size, rng.uniform(0.15, 0.45) * size, kind)
    inner = np.flatnonzero(relative <= 0.45)
    centre = inner[rng.integers(inner.size)] if inner.size else int(np.argmin(relative))
    py, px = divmod(int(centre), size)
    radius = math.sqrt(rng.uniform(0.2, 0.3) * mask.sum() / math.pi)
    y, x = coords(size)
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


def render(rng: np.random.Generator, size: int) -> DemoSample:
    """One scene of this style, every draw from `rng`."""
    canvas = _background(rng, size)
    objects = layout(rng, _pick_labels(rng), lambda r, label: _random_object(r, size, label))
    instances = np.zeros((size, size), dtype=np.int32)
    y, x = coords(size)
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
    return finish(rng, canvas, instances, objects)

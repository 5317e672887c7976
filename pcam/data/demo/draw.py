"""Drawing helpers shared by the demo dataset styles: colours, noise, coordinates, object masks,
the scene containers and the occlusion-checked layout.

Everything is vectorised numpy on float32 canvases in about 0..1; every random draw comes from an
explicit `numpy.random.Generator`, so a style's image is a pure function of its generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class DemoObject:
    """One object of a scene: class index in 1..K and full (pre-occlusion) HxW bool masks of the
    object and of its discriminative part (the part lies inside the object)."""

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


def hsv(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in 0..1) as RGB float32 (3,)."""
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return (v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)).astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean smooth noise (size, size) float32: a cells x cells grid, bilinearly upsampled."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    pos = np.linspace(0.0, cells - 1.0, size)
    weights = np.maximum(0.0, 1.0 - np.abs(pos[:, None] - np.arange(cells)[None, :]))
    weights = weights.astype(np.float32)
    return weights @ grid @ weights.T


def coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (y, x) as broadcastable (size, 1) and (1, size) float32 arrays."""
    axis = np.arange(size, dtype=np.float32)
    return axis[:, None], axis[None, :]


def _outline(rng: np.random.Generator, kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """The relative radius of a star-shaped outline as a function of the angle."""
    if kind == "ellipse":
        return np.ones_like
    if kind == "polygon":  # regular polygon with its corners cut by a circle (rounded)
        n = int(rng.integers(3, 7))
        cap, sector = rng.uniform(0.5 + 0.5 * math.cos(math.pi / n), 0.95), 2 * math.pi / n
        return lambda theta: np.minimum(
            math.cos(math.pi / n) / np.cos(theta % sector - sector / 2), cap
        )
    # random blob: a few low harmonics of the radius
    amps, phases = rng.uniform(0, 0.14, size=(3, 1, 1)), rng.uniform(0, 2 * math.pi, (3, 1, 1))
    harmonics = np.arange(2, 5).reshape(3, 1, 1)
    return lambda theta: 1 + (amps * np.cos(harmonics * theta + phases)).sum(axis=0)


def shape_mask(
    rng: np.random.Generator, size: int, extent: float, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """A random star-shaped region (`kind` ellipse, polygon or blob) of diameter about `extent`,
    fully inside the image.

    Returns (mask (size, size) bool, relative radius (size, size) float32: 0 at the centre, 1 on
    the outline, inf outside the shape's bounding square). Only that square is computed.
    """
    half = extent / 2
    cy, cx = rng.uniform(half, size - half, size=2)
    alpha = rng.uniform(0, 2 * math.pi)
    squash = rng.uniform(0.6, 1.0)
    outline = _outline(rng, kind)
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


def still_visible(objects: list[DemoObject], new: DemoObject) -> bool:
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


def layout(
    rng: np.random.Generator,
    labels: list[int],
    make_object: Callable[[np.random.Generator, int], DemoObject],
    tries: int = 12,
) -> list[DemoObject]:
    """Objects of `labels` in drawing order; a placement that hides too much of an earlier object
    is re-drawn up to `tries` times, then that object is left out."""
    objects: list[DemoObject] = []
    for label in labels:
        for _ in range(tries):
            candidate = make_object(rng, label)
            if still_visible(objects, candidate):
                objects.append(candidate)
                break
    return objects


def finish(
    rng: np.random.Generator, canvas: np.ndarray, instances: np.ndarray, objects: list[DemoObject]
) -> DemoSample:
    """Add sensor noise (sigma 0.015) to a float canvas and quantise it: the finished sample."""
    canvas = canvas + rng.normal(0.0, 0.015, size=canvas.shape)
    image = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return DemoSample(image=image, instances=instances, objects=objects)

"""Demo style "tools": long handles that all classes share, told apart by a head at one end.

A visual grammar unlike "parts" on every axis:

- Shape: an object is an elongated capsule (the handle, 40-75% of the image side long, 4-7% of it
  in half-width, any orientation) ending in a head. All handles look alike whatever the class:
  desaturated, any hue, with grip bands across them.
- Part size and placement: the class is told only by the head at the handle's END (not inside
  the object), by its shape and colour together: disc, square, triangle, ring, cross-bar,
  diamond, each in its own saturated colour (red and orange are close in hue). The head
  covers about a quarter of the object (10-40%).
- Texture and clutter: floors of tiles or planks in warm or neutral tones with grain, scratches
  (thin lines) and pebbles, all desaturated; never a head colour.

Scenes hold 1-3 objects of any classes (a class repeats with probability 0.3, no co-occurring
pairs). What the weak-supervision pipeline meets here: a classifier only needs the head, so its
CAM marks the object's end and leaves the long thin handle cold; the handle is thin, so the
random walk must follow it along a narrow corridor, and the tiled floor has strong edges that are
not object boundaries.
"""

from __future__ import annotations

import math

import numpy as np

from pcam.data.demo.draw import DemoObject, DemoSample, coords, finish, hsv, layout, smooth_noise

# Foreground classes: name (the head's colour and shape) -> head hue in 0..1.
_HEADS = {
    "red_disc": 0.0,
    "green_square": 0.33,
    "blue_triangle": 0.62,
    "orange_ring": 0.09,
    "violet_crossbar": 0.78,
    "teal_diamond": 0.48,
}
CLASSES: list[str] = list(_HEADS)
_HUES = np.array(list(_HEADS.values()), dtype=np.float32)  # index = class - 1


def _head_shape(label: int, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """The head of class `label` in its local frame (u along the handle, v across): bool mask."""
    r = radius
    if label == 1:  # disc
        return np.hypot(u, v) <= r
    if label == 2:  # square, aligned with the handle
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85 * r
    if label == 3:  # triangle pointing away from the handle: three half-planes
        inside = np.ones_like(u, dtype=bool)
        for angle in (math.pi / 3, math.pi, 5 * math.pi / 3):
            inside &= u * math.cos(angle) + v * math.sin(angle) <= 0.55 * r
        return inside
    if label == 4:  # ring (its centre is dark, still part of the head)
        return np.hypot(u, v) <= r
    if label == 5:  # cross-bar, perpendicular to the handle
        return (np.abs(u) <= 0.4 * r) & (np.abs(v) <= 1.35 * r)
    return np.abs(u) + np.abs(v) <= 1.2 * r  # 6: diamond


def _segment_distance(y, x, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance of every pixel to the segment p0-p1 (points as (y, x))."""
    d = p1 - p0
    t = ((y - p0[0]) * d[0] + (x - p0[1]) * d[1]) / max(float(d @ d), 1e-6)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(y - (p0[0] + t * d[0]), x - (p0[1] + t * d[1]))


def _max_length(p1: np.ndarray, direction: np.ndarray, size: int, margin: float) -> float:
    """The longest handle from p1 backwards along -direction that stays `margin` inside."""
    longest = math.inf
    for c in range(2):
        if direction[c] > 1e-6:
            longest = min(longest, (p1[c] - margin) / direction[c])
        elif direction[c] < -1e-6:
            longest = min(longest, (size - 1 - margin - p1[c]) / -direction[c])
    return max(0.0, longest)


def _random_object(rng: np.random.Generator, size: int, label: int) -> DemoObject:
    """A handle with its head at one end, fully inside the image (not yet drawn)."""
    half_width = rng.uniform(0.04, 0.07) * size
    radius = rng.uniform(1.4, 1.9) * half_width
    length = rng.uniform(0.4, 0.75) * size
    best = (-1.0, np.zeros(2), np.zeros(2), np.zeros(2))
    for _ in range(10):  # a place and direction with room for the whole handle, else the roomiest
        centre = rng.uniform(radius * 1.4 + 1, size - radius * 1.4 - 1, size=2)
        angle = rng.uniform(0, 2 * math.pi)
        direction = np.array([math.sin(angle), math.cos(angle)])
        p1 = centre - 0.5 * radius * direction
        best = max(best, (_max_length(p1, direction, size, half_width + 1), centre, direction, p1),
                   key=lambda c: c[0])  # fmt: skip
        if best[0] >= length:
            break
    room, centre, direction, p1 = best
    p0 = p1 - min(length, room) * direction
    y, x = coords(size)
    u = (y - centre[0]) * direction[0] + (x - centre[1]) * direction[1]
    v = (x - centre[1]) * direction[0] - (y - centre[0]) * direction[1]
    head = _head_shape(label, u, v, radius)
    handle = _segment_distance(y, x, p0, p1) <= half_width
    return DemoObject(label=label, mask=handle | head, part=head)


def _floor(rng: np.random.Generator, size: int) -> np.ndarray:
    """Tiles or planks in warm/neutral desaturated tones, grain, scratches and pebbles."""
    y, x = coords(size)
    base = hsv(rng.uniform(0.02, 0.16), rng.uniform(0.05, 0.3), rng.uniform(0.35, 0.75))
    grain = 1 + 0.08 * smooth_noise(rng, size, max(4, size // 8))[..., None]
    period = rng.uniform(0.1, 0.22) * size
    if rng.random() < 0.5:  # tiles: dark joints on a grid, each tile slightly different
        joints = (y % period < 1.5) | (x % period < 1.5)
        tile = np.floor(y / period) * 7 + np.floor(x / period)
        shade = 1 + 0.08 * np.sin(tile * 12.9898)
        floor = base * shade[..., None] * grain
        floor = np.where(joints[..., None], 0.6 * base, floor)
    else:  # planks along a random axis, with streaky grain
        axis = rng.integers(2)
        across = y if axis == 0 else x
        plank = np.floor(across / period)
        streak = 1 + 0.06 * np.sin(2 * math.pi * (across % period) / rng.uniform(2.5, 5.0))
        floor = base * (1 + 0.1 * np.sin(plank * 78.233))[..., None] * streak[..., None] * grain
    return _clutter(rng, size, floor)


def _clutter(rng: np.random.Generator, size: int, floor: np.ndarray) -> np.ndarray:
    """Scratches (thin desaturated lines) and pebbles (small grey discs) on the floor."""
    y, x = coords(size)
    for _ in range(int(rng.integers(2, 9))):
        p0, p1 = rng.uniform(0, size, size=2), rng.uniform(0, size, size=2)
        line = _segment_distance(y, x, p0, p1) <= rng.uniform(0.5, 1.2)
        floor = np.where(line[..., None], floor * rng.uniform(0.6, 1.4), floor)
    for _ in range(int(rng.integers(0, 6))):
        c, r = rng.uniform(0, size, size=2), rng.uniform(1.5, 0.05 * size)
        pebble = np.hypot(y - c[0], x - c[1]) <= r
        colour = hsv(rng.uniform(0, 1), rng.uniform(0, 0.15), rng.uniform(0.3, 0.85))
        floor = np.where(pebble[..., None], colour, floor)
    return floor


def _look(rng: np.random.Generator, size: int, obj: DemoObject) -> np.ndarray:
    """The object's colours over the whole canvas: banded grey-ish handle, saturated head."""
    y, x = coords(size)
    ys, xs = np.nonzero(obj.part)
    hy, hx = ys.mean(), xs.mean()
    handle = hsv(rng.uniform(0, 1), rng.uniform(0.05, 0.25), rng.uniform(0.4, 0.85))
    band = rng.uniform(3.0, 7.0)
    bands = 1 + 0.22 * np.sign(np.sin(2 * math.pi * np.hypot(y - hy, x - hx) / band))
    look = handle * bands[..., None]
    hue = (_HUES[obj.label - 1] + rng.uniform(-0.02, 0.02)) % 1.0
    colour = hsv(hue, rng.uniform(0.7, 0.9), rng.uniform(0.75, 0.95))
    head = colour * (1 + 0.1 * smooth_noise(rng, size, 6))[..., None]
    if obj.label == 4:  # the ring's dark centre
        inner = np.hypot(y - hy, x - hx) <= 0.5 * math.sqrt(obj.part.sum() / math.pi)
        head = np.where(inner[..., None], 0.25 * colour, head)
    return np.where(obj.part[..., None], head, look)


def _pick_labels(rng: np.random.Generator) -> list[int]:
    """1-3 class labels, any classes; a later object repeats an earlier class w.p. 0.3."""
    labels = [int(rng.integers(1, len(CLASSES) + 1))]
    for _ in range(int(rng.choice([0, 1, 2], p=[0.35, 0.4, 0.25]))):
        if rng.random() < 0.3:
            labels.append(labels[int(rng.integers(len(labels)))])
        else:
            labels.append(int(rng.integers(1, len(CLASSES) + 1)))
    return labels


def render(rng: np.random.Generator, size: int) -> DemoSample:
    """One scene of this style, every draw from `rng`."""
    canvas = _floor(rng, size)
    objects = layout(rng, _pick_labels(rng), lambda r, label: _random_object(r, size, label))
    instances = np.zeros((size, size), dtype=np.int32)
    for k, obj in enumerate(objects, start=1):
        canvas = np.where(obj.mask[..., None], _look(rng, size, obj), canvas)
        instances[obj.mask] = k
    return finish(rng, canvas, instances, objects)

"""The procedural demo datasets (`pcam demo-data`): small VOC-layout datasets where weak
supervision is a real problem.

Each style is a visual grammar in its own module, with a `render(rng, size) -> DemoSample` and
its foreground `CLASSES`; `STYLES` maps the names `--style` and `demo.style` accept onto them:

- "parts" (`pcam.data.demo.parts`, the default): blob-like objects that share one tan body and
  differ only in a small patterned disk inside it; cool cluttered backgrounds; 8 classes.
- "tools" (`pcam.data.demo.tools`): long thin handles that all classes share, told apart by the
  shape and colour of a head at one end; tiled or planked floors with scratches; 6 classes.

Common to every style: 1-3 objects per scene; later objects are drawn over earlier ones, and a
placement that would hide more than half of an earlier object or 40% of its part is re-drawn, so
every labelled object shows its part. Determinism: image k depends only on (style, seed, k,
size), through `numpy.random.default_rng([seed, k])`; the same arguments give byte-identical
files. Vectorised numpy, no per-pixel Python loops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcam.data.demo import parts, tools
from pcam.data.demo.draw import DemoObject, DemoSample
from pcam.data.demo.write import annotation_xml, border_band, render_preview, write_dataset
from pcam.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Style:
    """A demo dataset style: its foreground class names and its scene renderer."""

    classes: list[str]
    render: Callable[[np.random.Generator, int], DemoSample]

    @property
    def class_names(self) -> list[str]:
        """Every class name, background first (what dataset.json holds)."""
        return ["background", *self.classes]


STYLES: dict[str, Style] = {
    "parts": Style(parts.CLASSES, parts.render),
    "tools": Style(tools.CLASSES, tools.render),
}
DEMO_CLASSES: list[str] = STYLES["parts"].class_names  # the default style's classes


def get_style(name: str) -> Style:
    """The style called `name` (ConfigError naming the known ones otherwise)."""
    try:
        return STYLES[name]
    except KeyError:
        raise ConfigError(f"demo style {name!r} is not one of {sorted(STYLES)}") from None


def make_sample(seed: int, index: int, size: int, style: str) -> DemoSample:
    """Render scene `index` of `style` with generator seed `seed` (pure, deterministic)."""
    return get_style(style).render(np.random.default_rng([seed, index]), size)


def generate(out: Path, n_train: int, n_val: int, size: int, seed: int, style: str) -> None:
    """Write the demo dataset of `style` in VOC layout under `out` (see `write_dataset`)."""
    if n_train < 2 or n_val < 1 or size < 32:
        raise ConfigError(
            f"demo: need n_train >= 2, n_val >= 1, size >= 32; got {n_train}, {n_val}, {size}"
        )
    write_dataset(
        Path(out),
        get_style(style).class_names,
        lambda k: make_sample(seed, k, size, style),
        n_train,
        n_val,
    )
    log.info(
        "demo dataset (%s) in %s: %d train_aug, %d val, %d px", style, out, n_train, n_val, size
    )


__all__ = [
    "DEMO_CLASSES",
    "STYLES",
    "DemoObject",
    "DemoSample",
    "Style",
    "annotation_xml",
    "border_band",
    "generate",
    "get_style",
    "make_sample",
    "render_preview",
]

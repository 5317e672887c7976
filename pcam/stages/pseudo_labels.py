"""Stage 6: pseudo-labels from random-walk maps and a dense CRF (spec 7).

A constant background channel equal to `threshold` goes in front of the random-walk maps, the
argmax is refined by a label CRF of `crf.iterations` steps (none when 0) and mapped to dataset
labels. Every pixel gets a class, except with `ignore_missing_tags` (NOT the paper, off by
default): a map in which a class the image is tagged with got no pixel is known to be wrong
somewhere (typically that object was taken for a co-occurring class), so its foreground becomes
255 and DeepLab learns only the image's background from it.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pcam.data.voc import DatasetSpec, read_split
from pcam.io import IGNORE_INDEX, shard_ids
from pcam.labels import crf_label_map, write_label_maps


def pseudo_label_map(
    image: np.ndarray, rw: np.ndarray, keys: np.ndarray, settings: dict[str, Any]
) -> np.ndarray:
    """Pseudo-labels (H, W) uint8 in {0, keys[1:]} (and 255 with `settings["ignore_missing_tags"]`,
    see `ignore_if_tag_missing`) of an (H, W, 3) uint8 image and its (K, H, W) random-walk maps in
    [0, 1]; `settings` is the config section `pseudo_labels`."""
    labels = crf_label_map(image, rw, keys, settings["threshold"], settings["crf"])
    return ignore_if_tag_missing(labels, keys) if settings["ignore_missing_tags"] else labels


def ignore_if_tag_missing(labels: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """`labels` unchanged when every tagged class (`keys[1:]`) has a pixel in it; otherwise a copy
    whose foreground (every non-background pixel) is IGNORE_INDEX."""
    if np.isin(keys[1:], labels).all():
        return labels
    ignored = labels.copy()
    ignored[labels != 0] = IGNORE_INDEX
    return ignored


def make_pseudo_labels(
    spec: DatasetSpec,
    settings: dict[str, Any],
    *,
    rw_dirs: list[Path],
    split: str,
    shard: int,
    num_shards: int,
    out_dir: Path,
    workers: int,
) -> None:
    """Write `out_dir/{id}.png` (palette PNG) for shard `shard` of `num_shards` of `split`.

    Random-walk maps are `{id}.npz` (`keys`, `rw`) in `rw_dirs`; `workers` CRF processes.
    Existing PNGs are kept (resume); `out_dir` is created even for an empty shard.
    """
    write_label_maps(
        spec,
        shard_ids(read_split(spec, split), shard, num_shards),
        score_dirs=rw_dirs,
        array="rw",
        out_dir=out_dir,
        workers=workers,
        make_map=partial(pseudo_label_map, settings=settings),
    )

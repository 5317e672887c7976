"""Stage 3: affinity labels from high-resolution CAMs and a dense CRF (spec 4).

Each image gets two CRF-refined label maps of its CAMs: `fg_conf` behind a high background score
(only confident foreground survives) and `bg_conf` behind a low one (only confident background
survives). Their combination marks confident foreground, confident background and, in between,
uncertain pixels (255) that AffinityNet's loss ignores.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pcam.data.voc import DatasetSpec, read_split
from pcam.io import IGNORE_INDEX, shard_ids
from pcam.labels import crf_label_map, write_label_maps


def combine(fg_conf: np.ndarray, bg_conf: np.ndarray) -> np.ndarray:
    """Spec 4 step 3: (H, W) uint8 labels from two (H, W) label maps (0 = background).

    A class in `fg_conf` is kept (whatever `bg_conf` says); background in both is 0; background in
    `fg_conf` only is uncertain, `IGNORE_INDEX`.
    """
    if fg_conf.shape != bg_conf.shape:
        raise ValueError(f"fg_conf {fg_conf.shape} and bg_conf {bg_conf.shape} differ in shape")
    out = fg_conf.astype(np.uint8)
    out[(fg_conf == 0) & (bg_conf != 0)] = IGNORE_INDEX
    return out


def affinity_label_map(
    image: np.ndarray, hr_cam: np.ndarray, keys: np.ndarray, settings: dict[str, Any]
) -> np.ndarray:
    """Affinity labels (H, W) uint8 in {0, keys[1:], 255} of an (H, W, 3) uint8 image and its
    (K, H, W) CAMs; `settings` is the config section `affinity_labels`."""
    crf = settings["crf"]
    fg_conf = crf_label_map(image, hr_cam, keys, settings["fg_threshold"], crf)
    bg_conf = crf_label_map(image, hr_cam, keys, settings["bg_threshold"], crf)
    return combine(fg_conf, bg_conf)


def make_affinity_labels(
    spec: DatasetSpec,
    settings: dict[str, Any],
    *,
    cam_dirs: list[Path],
    split: str,
    shard: int,
    num_shards: int,
    out_dir: Path,
    workers: int,
) -> None:
    """Write `out_dir/{id}.png` (palette PNG) for shard `shard` of `num_shards` of `split`.

    CAMs are `{id}.npz` (`keys`, `hr_cam`) in `cam_dirs`; `workers` CRF processes. Existing PNGs
    are kept (resume); `out_dir` is created even for an empty shard.
    """
    write_label_maps(
        spec,
        shard_ids(read_split(spec, split), shard, num_shards),
        score_dirs=cam_dirs,
        array="hr_cam",
        out_dir=out_dir,
        workers=workers,
        make_map=partial(affinity_label_map, settings=settings),
    )

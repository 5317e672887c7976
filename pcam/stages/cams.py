"""Stage 2: multi-scale CAM dumps (spec 3) for one shard of a split.

Writes `{out_dir}/{id}.npz` per image (spec 15.7): `keys` [0, c1..cK] (dataset labels of the
present classes, background first), `cam` (K, ceil(H/4), ceil(W/4)) and `hr_cam` (K, H, W), each
channel max-normalised, in `settings["dtype"]`. Files already present are kept (a re-run after a
kill only does what is missing; every file is written atomically).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pcam.cams import multiscale_cams, normalise_present
from pcam.data.voc import DatasetSpec, image_labels, read_split
from pcam.errors import DataError
from pcam.io import save_scores, shard_ids, unfinished
from pcam.models import load_model

log = logging.getLogger(__name__)


def present_classes(spec: DatasetSpec, image_id: str) -> list[int]:
    """Foreground channel indices (0-based, ascending) of the classes in the image-level label."""
    return [int(i) for i in np.flatnonzero(image_labels(spec, image_id))]


def make_cams(
    spec: DatasetSpec,
    settings: dict[str, Any],
    *,
    compute: dict[str, Any],
    model: Path,
    split: str,
    shard: int,
    num_shards: int,
    out_dir: Path,
) -> None:
    """CAMs of shard `shard` of `num_shards` of `split` with the classifier at `model`."""
    from pcam.data.loading import image_loader
    from pcam.devices import autocast_context, inference_device

    todo = unfinished(shard_ids(read_split(spec, split), shard, num_shards), out_dir, ".npz")
    labels = {i: present_classes(spec, i) for i in todo}  # bad annotations fail before compute
    with inference_device(compute) as device:
        net = load_model(model, map_location=device, kind="classifier")
        if net.head.out_channels != spec.num_classes - 1:
            raise DataError(
                f"{model}: has {net.head.out_channels} classes, the dataset "
                f"{spec.num_classes - 1} foreground classes"
            )
        start = time.perf_counter()
        loader = image_loader(spec, todo, int(compute.get("num_workers", 0)))
        with (
            torch.inference_mode(),
            autocast_context(device, compute.get("mixed_precision", "auto")),
        ):
            for image_id, image in tqdm(loader, total=len(todo), desc="cams", disable=None):
                strided, high = multiscale_cams(
                    lambda x: net(x.to(device))[1], image, settings["scales"], settings["flip"]
                )
                present = labels[image_id]
                save_scores(
                    out_dir / f"{image_id}.npz",
                    np.array([0, *(c + 1 for c in present)]),
                    settings["dtype"],
                    cam=normalise_present(strided, present).cpu().numpy(),
                    hr_cam=normalise_present(high, present).cpu().numpy(),
                )
    seconds = time.perf_counter() - start
    log.info("cams: %d images on %s in %.1f s", len(todo), device, seconds)

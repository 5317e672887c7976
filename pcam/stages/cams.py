"""Stage 2: multi-scale CAM dumps (spec 3) for one shard of a split.

Writes `{out_dir}/{id}.npz` per image (spec 15.7): `keys` [0, c1..cK] (dataset labels of the
present classes, background first), `cam` (K, ceil(H/4), ceil(W/4)) and `hr_cam` (K, H, W), each
channel max-normalised, in `settings["dtype"]`. Files already present are kept (a re-run after a
kill only does what is missing; every file is written atomically).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pcam.cams import max_normalise, multiscale_cams
from pcam.data.loading import ImageItem
from pcam.data.voc import DatasetSpec, image_labels
from pcam.inference import InferenceJob, ShardRun, images_to_do, run_images
from pcam.io import save_scores
from pcam.segment import scaled_inputs


def present_classes(spec: DatasetSpec, image_id: str) -> list[int]:
    """Foreground channel indices (0-based, ascending) of the classes in the image-level label."""
    return [int(i) for i in np.flatnonzero(image_labels(spec, image_id))]


def cam_step(
    net: nn.Module,
    item: ImageItem,
    device: torch.device,
    *,
    labels: dict[str, list[int]],
    settings: dict[str, Any],
    out_dir: Path,
) -> None:
    """Write `out_dir/{id}.npz`: the image's normalised CAMs of its present classes."""
    present = labels[item.image_id]
    strided, high = multiscale_cams(
        lambda x: net(x)[1], item.inputs, item.image.shape[:2], settings["flip"], present
    )
    save_scores(
        out_dir / f"{item.image_id}.npz",
        np.array([0, *(c + 1 for c in present)]),
        settings["dtype"],
        cam=max_normalise(strided).cpu().contiguous().numpy(),
        hr_cam=max_normalise(high).cpu().contiguous().numpy(),
    )


def make_cams(spec: DatasetSpec, settings: dict[str, Any], run: ShardRun, out_dir: Path) -> None:
    """CAMs of `run`'s shard with the classifier at `run.model`, into `out_dir`."""
    todo = images_to_do(spec, run, [(out_dir, ".npz")])
    labels = {i: present_classes(spec, i) for i in todo}  # bad annotations fail before compute
    job = InferenceJob(
        name="cams",
        kinds=("classifier",),
        prepare=functools.partial(scaled_inputs, scales=settings["scales"], flip=settings["flip"]),
        num_outputs=spec.num_classes - 1,
        what="foreground classes",
    )
    step = functools.partial(cam_step, labels=labels, settings=settings, out_dir=out_dir)
    run_images(spec, run, job, todo, step)

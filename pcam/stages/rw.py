"""Stage 5: random-walk refinement of the strided CAMs (spec 6) for one shard of a split.

Writes `{out_dir}/{id}.npz` with `keys` (copied from the CAM file) and `rw` (K, H, W), scaled by
its global maximum, no background channel. Files already present are kept (resume after a kill).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pcam.affinity import random_walk, rw_postprocess
from pcam.data.loading import ImageItem
from pcam.data.voc import DatasetSpec
from pcam.errors import DataError
from pcam.inference import InferenceJob, ShardRun, images_to_do, run_images
from pcam.io import find_in_dirs, load_scores, save_scores
from pcam.models.affinitynet import AffinityNet
from pcam.segment import scaled_batch


def canvas_size(settings: dict[str, Any]) -> int | None:
    """`rw.pad_to` as AffinityNet's canvas: None for "stride", else the square's side."""
    return None if settings["pad_to"] == "stride" else int(settings["pad_to"])


def refine(net: AffinityNet, item: ImageItem, strided: Tensor, settings: dict[str, Any]) -> Tensor:
    """The RW map (K, H, W) of one image from its strided CAM (K, ceil(H/4), ceil(W/4)) on the
    device; `item.inputs` is the image's normalised (1, 3, H, W) batch."""
    height, width = item.image.shape[:2]
    boundary = net.boundary(item.inputs, canvas_size(settings))[0].float()
    if boundary.shape != strided.shape[1:]:
        raise DataError(
            f"strided CAM {tuple(strided.shape)} does not fit the image {height}x{width}"
        )
    # The walk (256 steps of products) stays in float32 whatever the network's precision.
    with torch.autocast(strided.device.type, enabled=False):
        walked = random_walk(
            strided, boundary, int(settings["radius"]), float(settings["beta"]),
            int(settings["exp_times"]), settings["method"],
        )  # fmt: skip
    return rw_postprocess(walked, height, width)


def rw_step(
    net: AffinityNet,
    item: ImageItem,
    device: torch.device,
    *,
    sources: dict[str, Path],
    settings: dict[str, Any],
    out_dir: Path,
) -> None:
    """Write `out_dir/{id}.npz`: the random walk of the image's CAM archive."""
    cams = load_scores(sources[item.image_id])
    if "cam" not in cams:
        raise DataError(f"{sources[item.image_id]}: no strided 'cam' array")
    rw = refine(net, item, torch.from_numpy(cams["cam"]).to(device), settings)
    save_scores(out_dir / f"{item.image_id}.npz", cams["keys"], rw=rw.cpu().numpy())


def make_rw(
    spec: DatasetSpec, settings: dict[str, Any], run: ShardRun, cam_dirs: list[Path], out_dir: Path
) -> None:
    """Random-walk maps of `run`'s shard from the CAM archives in `cam_dirs` (shard folders),
    with the AffinityNet at `run.model`, into `out_dir`."""
    todo = images_to_do(spec, run, [(out_dir, ".npz")])
    sources = {i: find_in_dirs(cam_dirs, i, ".npz") for i in todo}  # a missing CAM fails first
    job = InferenceJob(
        name="rw",
        kinds=("affinitynet",),  # boundaries know no classes: no class-count check
        prepare=functools.partial(scaled_batch, scale=1.0, flip=False),
    )
    step = functools.partial(rw_step, sources=sources, settings=settings, out_dir=out_dir)
    run_images(spec, run, job, todo, step)

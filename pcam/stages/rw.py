"""Stage 5: random-walk refinement of the strided CAMs (spec 6) for one shard of a split.

Writes `{out_dir}/{id}.npz` with `keys` (copied from the CAM file) and `rw` (K, H, W), scaled by
its global maximum, no background channel. Files already present are kept (resume after a kill).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pcam.affinity import random_walk, rw_postprocess
from pcam.data.voc import DatasetSpec, read_split
from pcam.errors import DataError
from pcam.io import find_in_dirs, load_scores, save_scores, shard_ids, unfinished
from pcam.models import load_model
from pcam.models.affinitynet import AffinityNet
from pcam.segment import scaled_batch

log = logging.getLogger(__name__)


def refine(
    net: AffinityNet, image, cams: dict, settings: dict[str, Any], device: torch.device
) -> torch.Tensor:
    """The RW map (K, H, W) of one image from its CAM archive (`keys`, strided `cam`)."""
    height, width = image.shape[:2]
    strided = torch.from_numpy(cams["cam"]).to(device)
    boundary = net.boundary(scaled_batch(image, 1.0, False).to(device))[0].float()
    if boundary.shape != strided.shape[1:]:
        raise DataError(
            f"strided CAM {tuple(strided.shape)} does not fit the image {height}x{width}"
        )
    walked = random_walk(
        strided, boundary, int(settings["radius"]), float(settings["beta"]),
        int(settings["exp_times"]), settings["method"],
    )  # fmt: skip
    return rw_postprocess(walked, height, width)


def make_rw(
    spec: DatasetSpec,
    settings: dict[str, Any],
    *,
    compute: dict[str, Any],
    model: Path,
    cam_dirs: list[Path],
    split: str,
    shard: int,
    num_shards: int,
    out_dir: Path,
) -> None:
    """Random-walk maps of one shard of `split`, with the AffinityNet at `model`."""
    from pcam.data.loading import image_loader
    from pcam.devices import inference_device

    todo = unfinished(shard_ids(read_split(spec, split), shard, num_shards), out_dir, ".npz")
    sources = {i: find_in_dirs(cam_dirs, i, ".npz") for i in todo}  # a missing CAM fails first
    with inference_device(compute) as device:
        net = load_model(model, map_location=device, kind="affinitynet")
        start = time.perf_counter()
        loader = image_loader(spec, todo, int(compute.get("num_workers", 0)))
        with torch.inference_mode():
            for image_id, image in tqdm(loader, total=len(todo), desc="rw", disable=None):
                cams = load_scores(sources[image_id])
                if "cam" not in cams:
                    raise DataError(f"{sources[image_id]}: no strided 'cam' array")
                rw = refine(net, image, cams, settings, device)
                save_scores(out_dir / f"{image_id}.npz", cams["keys"], rw=rw.cpu().numpy())
    log.info("rw: %d images on %s in %.1f s", len(todo), device, time.perf_counter() - start)

"""Stages 7 and 8: train DeepLabV3+ (spec 8.2) and run multi-scale inference (spec 8.3).

`train_deeplab` learns from pseudo-label PNGs (weak supervision) or, with no label directories,
from the ground-truth masks (the fully supervised reference). `infer_deeplab` writes palette PNG
predictions for one shard of a split, and optionally their dense-CRF refinement, which runs in
CPU processes after the network pass so a GPU slot is not held while the CRF works.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from pcam.data.labelled import SegmentationDataset
from pcam.data.voc import DatasetSpec, gt_mask, load_image, read_split
from pcam.errors import DataError
from pcam.io import (
    IGNORE_INDEX,
    atomic_path,
    save_label_png,
    shard_ids,
)
from pcam.models import load_model
from pcam.models.deeplab import DeepLabV3Plus
from pcam.segment import multiscale_probs
from pcam.stages.training import train_network
from pcam.train import TrainingJob

log = logging.getLogger(__name__)

# The VOC evaluation server's layout for a test-set submission (indexed palette PNGs).
SERVER_LAYOUT = Path("results/VOC2012/Segmentation/comp6_test_cls")


# --------------------------------------------------------------------------- training


def segmentation_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Pixel-wise cross-entropy, ignoring label 255 (spec 8.2).

    logits (B, C, H, W) any float dtype; target (B, H, W) int64 in [0, C) or 255.
    Mean over the non-ignored pixels, like `nn.CrossEntropyLoss(ignore_index=255)`, except that
    a batch with every pixel ignored gives 0 instead of NaN.
    """
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (target != IGNORE_INDEX).sum().clamp(min=1)


def loss_fn(model: nn.Module, batch: dict[str, Tensor], progress: float):
    """The closure `fit` calls: (model or its DDP wrapper, batch, progress) -> (loss, terms)."""
    loss = segmentation_loss(model(batch["image"]), batch["mask"])
    return loss, {"ce": float(loss.detach())}


def train_deeplab(
    spec: DatasetSpec,
    settings: dict[str, Any],
    *,
    compute: dict[str, Any],
    label_dirs: list[Path] | None,
    job: TrainingJob,
) -> None:
    """Train on `spec.train_split` and write `job.out_model` (kind "deeplab") and the curve.

    label_dirs: pseudo-label shard directories, or None for the ground-truth masks.
    The model is the one at the last step (spec 15.3), or with `select_with_val` the epoch with
    the best single-scale val mIoU (the official selection: a diagnostic that looks at the
    split it is later scored on, spec 8.2).
    """
    ids = read_split(spec, spec.train_split)
    dataset = SegmentationDataset(spec, ids, settings, settings["seed"], label_dirs)
    torch.manual_seed(settings["seed"])  # the head's (and a random backbone's) initial weights
    model = DeepLabV3Plus.from_settings(settings, spec.num_classes)
    log.info(
        "deeplab: %s, %d images of %s, labels: %s",
        settings["backbone"], len(dataset), spec.train_split,
        "ground truth (fully supervised)" if label_dirs is None else f"{len(label_dirs)} dirs",
    )  # fmt: skip
    train_network(
        "deeplab", spec, settings, compute, job,
        model=model, loss_fn=loss_fn, dataset=dataset, num_classes=spec.num_classes,
        inputs=label_dirs or [], sync_bn=settings["norm"] == "bn",
        select_fn=val_miou_fn(spec) if settings["select_with_val"] else None,
    )  # fmt: skip


def val_miou_fn(spec: DatasetSpec):
    """The official per-epoch selection score: single-scale, no flip, no CRF mIoU on the val
    split's ground truth (spec 8.2). Returns `score(model) -> mIoU in [0, 1]`."""
    from pcam.metrics import Scores, label_confusion

    ids = read_split(spec, spec.val_split)
    masks = {i: gt_mask(spec, i) for i in ids}
    missing = [i for i, m in masks.items() if m is None]
    if missing:
        raise DataError(
            f"deeplab.select_with_val: {len(missing)} val images have no ground-truth mask, "
            f"e.g. {spec.mask_path(missing[0])}"
        )

    def score(model: nn.Module) -> float:
        device = next(model.parameters()).device
        confusion = 0
        for image_id in ids:
            image = load_image(spec.image_path(image_id))
            probs = multiscale_probs(lambda x: model(x.to(device)), image, [1.0], False)
            pred = probs.argmax(0).cpu().numpy().astype(np.uint8)
            confusion = confusion + label_confusion(masks[image_id], pred, spec.num_classes)
        return Scores.from_confusion(confusion).miou()

    return score


# --------------------------------------------------------------------------- inference


def prediction_dir(base: Path, server_format: bool) -> Path:
    """Where the PNGs go: `base`, or the evaluation server's layout under it."""
    return base / SERVER_LAYOUT if server_format else base


def _network_pass(
    spec: DatasetSpec,
    settings: dict[str, Any],
    compute: dict[str, Any],
    model: Path,
    ids: list[str],
    pred_dir: Path,
    spill_dir: Path | None,
) -> None:
    """Predict every id on this job's device: `pred_dir/{id}.png`, and, when `spill_dir` is
    given, the probabilities (C, H, W) as float16 `spill_dir/{id}.npy` for the CRF pass."""
    from pcam.data.loading import image_loader
    from pcam.devices import autocast_context, inference_device

    with inference_device(compute) as device:
        net = load_model(model, map_location=device, kind="deeplab")
        classes = net.decoder.classifier.out_channels
        if classes != spec.num_classes:
            raise DataError(
                f"{model}: predicts {classes} classes, the dataset has {spec.num_classes}"
            )
        loader = image_loader(spec, ids, compute.get("num_workers", 0))
        start = time.perf_counter()
        with (
            torch.inference_mode(),
            autocast_context(device, compute.get("mixed_precision", "auto")),
        ):
            for image_id, image in tqdm(loader, total=len(ids), desc="deeplab", disable=None):
                probs = multiscale_probs(
                    lambda x: net(x.to(device)), image, settings["scales"], settings["flip"]
                )
                labels = probs.argmax(0).to(torch.uint8).cpu().numpy()
                save_label_png(pred_dir / f"{image_id}.png", labels, spec.palette)
                if spill_dir is not None:
                    with atomic_path(spill_dir / f"{image_id}.npy") as tmp, open(tmp, "wb") as fh:
                        np.save(fh, probs.cpu().numpy().astype(np.float16))
        seconds = time.perf_counter() - start
        log.info("deeplab: %d images on %s in %.1f s", len(ids), device, seconds)


def infer_deeplab(
    spec: DatasetSpec,
    settings: dict[str, Any],
    *,
    compute: dict[str, Any],
    model: Path,
    split: str,
    shard: int,
    num_shards: int,
    out_dir: Path,
    out_crf_dir: Path | None,
    workers: int,
    server_format: bool,
) -> None:
    """Multi-scale + flip predictions (spec 8.3) for shard `shard` of `num_shards` of `split`.

    Writes `out_dir/{id}.png` (palette PNG, class indices) and, when `out_crf_dir` is given, the
    dense-CRF refinement `out_crf_dir/{id}.png` (settings["crf"], `workers` processes).
    server_format: the same files in the evaluation server's layout (`SERVER_LAYOUT`) under each
    output directory. Directories are created even for an empty shard.
    """
    from pcam.crf import map_images
    from pcam.labels import crf_refine_file

    ids = shard_ids(read_split(spec, split), shard, num_shards)
    pred_dir = prediction_dir(out_dir, server_format)
    pred_dir.mkdir(parents=True, exist_ok=True)
    if out_crf_dir is None:
        _network_pass(spec, settings, compute, model, ids, pred_dir, None)
        return
    crf_dir = prediction_dir(out_crf_dir, server_format)
    crf_dir.mkdir(parents=True, exist_ok=True)
    # Probabilities wait on disk (float16), not in memory: 21 x 375 x 500 maps add up fast.
    with tempfile.TemporaryDirectory(prefix=".probs-", dir=out_crf_dir) as spill:
        spill_dir = Path(spill)
        _network_pass(spec, settings, compute, model, ids, pred_dir, spill_dir)
        items = [
            (
                image_id,
                spec.image_path(image_id),
                spill_dir / f"{image_id}.npy",
                crf_dir / f"{image_id}.png",
                spec.palette,
                settings["crf"],
            )
            for image_id in ids
        ]
        for _ in map_images(crf_refine_file, items, workers):
            pass

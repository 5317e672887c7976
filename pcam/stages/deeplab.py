"""Stage 7: train the segmentation network, DeepLabV3+ by default (spec 8.2).

`train_deeplab` learns from pseudo-label PNGs (weak supervision) or, with no label directories,
from the ground-truth masks (the fully supervised reference). The network is the one
`settings["network"]` names (`pcam.models.segmentation_kind`). Inference (stage 8) is
`pcam.stages.segmentation`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pcam.data.labelled import SegmentationDataset
from pcam.data.voc import DatasetSpec, gt_mask, load_image, read_split
from pcam.errors import DataError
from pcam.io import IGNORE_INDEX
from pcam.models import build_model, segmentation_kind
from pcam.segment import multiscale_probs
from pcam.stages.training import init_backbone, train_network
from pcam.train import TrainingJob

log = logging.getLogger(__name__)


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
    init_model: Path | None = None,
    job: TrainingJob,
) -> None:
    """Train on `spec.train_split` and write `job.out_model` (the network's kind, "deeplab" for
    DeepLabV3+) and the curve.

    label_dirs: pseudo-label shard directories, or None for the ground-truth masks.
    init_model: a trained classifier whose backbone weights replace the `pretrained` ones
    (`init_from_classifier`: the demo's stand-in for ImageNet weights).
    The model is the one at the last step (spec 15.3), or with `select_with_val` the epoch with
    the best single-scale val mIoU (the official selection: a diagnostic that looks at the
    split it is later scored on, spec 8.2).
    """
    ids = read_split(spec, spec.train_split)
    dataset = SegmentationDataset(spec, ids, settings, settings["seed"], label_dirs)
    torch.manual_seed(settings["seed"])  # the head's (and a random backbone's) initial weights
    kind = segmentation_kind(settings["network"])
    model = build_model(kind, settings, spec.num_classes)
    inputs = [*(label_dirs or []), *init_backbone(model, "deeplab", settings, init_model)]
    log.info(
        "deeplab: %s on %s, %d images of %s, labels: %s",
        settings["network"], settings["backbone"], len(dataset), spec.train_split,
        "ground truth (fully supervised)" if label_dirs is None else f"{len(label_dirs)} dirs",
    )  # fmt: skip
    train_network(
        "deeplab", spec, settings, compute, job,
        model=model, loss_fn=loss_fn, dataset=dataset, num_classes=spec.num_classes,
        inputs=inputs, sync_bn=settings["norm"] == "bn", kind=kind,
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

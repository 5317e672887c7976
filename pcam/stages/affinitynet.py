"""Stage 4: train AffinityNet (spec 5) on the affinity labels of stage 3.

The labels (`{id}.png`: 0 background, class indices, 255 uncertain) are cropped with the image
(padding 255), nearest-downsampled to the stride-4 grid, and turned into bg-positive,
fg-positive and negative pixel pairs within `radius` (spec 5.3) for the loss of spec 5.4.
The same training loop as the classifier (`pcam.stages.training.train_network`): resume, DDP,
global batch, curve; the labels and the init model key its resumable state.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pcam.affinity import (
    affinity_from_boundary,
    affinity_labels_from_map,
    affinity_loss,
    path_index,
)
from pcam.cams import strided_size
from pcam.data.labelled import SegmentationDataset
from pcam.data.voc import DatasetSpec, read_split
from pcam.errors import ConfigError
from pcam.models.affinitynet import AffinityNet
from pcam.stages.training import init_backbone, train_network
from pcam.train import TrainingJob

log = logging.getLogger(__name__)


def make_loss_fn(radius: int, crop_size: int):
    """The closure `fit` calls: boundary logits -> affinities -> the loss of spec 5.4."""
    grid = strided_size(crop_size, crop_size)
    if min(grid) <= 2 * (radius - 1):
        raise ConfigError(
            f"affinitynet.radius {radius} needs a stride-4 crop wider than {2 * (radius - 1)} "
            f"pixels (crop_size > {8 * (radius - 1)}); crop_size is {crop_size}"
        )
    index = path_index(radius, *grid)

    def loss_fn(model: nn.Module, batch: dict[str, Tensor], progress: float):
        logits = model(batch["image"])[:, 0].float()
        labels = F.interpolate(batch["mask"][:, None].float(), size=grid, mode="nearest")
        on_device = index.to(logits.device)
        aff = affinity_from_boundary(torch.sigmoid(logits), on_device)
        return affinity_loss(aff, *affinity_labels_from_map(labels[:, 0].long(), on_device))

    return loss_fn


def train_affinitynet(
    spec: DatasetSpec,
    settings: dict[str, Any],
    *,
    compute: dict[str, Any],
    label_dirs: list[Path],
    init_model: Path | None = None,
    job: TrainingJob,
) -> None:
    """Train on `spec.train_split` with the affinity labels in `label_dirs` (shard directories).

    init_model: a trained classifier whose backbone weights replace the `pretrained` ones of the
    frozen backbone (`init_from_classifier`, for runs without ImageNet weights, e.g. the demo).
    """
    ids = read_split(spec, spec.train_split)
    dataset = SegmentationDataset(spec, ids, settings, settings["seed"], label_dirs)
    torch.manual_seed(settings["seed"])  # the side branches' initial weights
    model = AffinityNet.from_settings(settings, spec.num_classes)
    inputs = [*label_dirs, *init_backbone(model, "affinitynet", settings, init_model)]
    log.info(
        "affinitynet: %s (frozen), %d images of %s, radius %d",
        settings["backbone"], len(dataset), spec.train_split, settings["radius"],
    )  # fmt: skip
    train_network(
        "affinitynet", spec, settings, compute, job,
        model=model, loss_fn=make_loss_fn(int(settings["radius"]), int(settings["crop_size"])),
        dataset=dataset, num_classes=spec.num_classes, inputs=inputs,
        sync_bn=False,  # the backbone is frozen; the head uses GroupNorm
    )  # fmt: skip

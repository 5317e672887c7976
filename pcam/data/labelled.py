"""Training crops with their labels: image-level tags (classifier) or pixel labels (AffinityNet,
DeepLab: affinity labels, pseudo-labels or ground-truth masks). Spec 1.4 augmentation.

Items are keyed by (epoch, index): item i of epoch e draws its augmentation from a generator
seeded by (seed, e, i) (`item_rng`), so what a step sees never depends on the worker count, on
which worker reads it, or on what was read before (`pcam.batches`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pcam.data.transforms import item_rng, to_chw, train_augment
from pcam.data.voc import DatasetSpec, image_labels, load_image, training_mask
from pcam.errors import DataError
from pcam.io import IGNORE_INDEX, find_in_dirs, load_label_png


class TrainingCrops(Dataset):
    """Augmented training crops of `ids`; subclasses add the labels.

    Item (epoch, i): {"image": (3, crop, crop) float32 normalised, **labels}. settings:
    resize_range, crop_size (the stage's section).
    """

    def __init__(self, spec: DatasetSpec, ids: list[str], settings: dict[str, Any], seed: int):
        self.spec = spec
        self.ids = list(ids)
        self.resize_range = tuple(int(v) for v in settings["resize_range"])
        self.crop_size = int(settings["crop_size"])
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Tensor]:
        epoch, index = key
        image = load_image(self.spec.image_path(self.ids[index]))
        mask = self._mask(index, image.shape[:2])
        rng = item_rng(self.seed, index, epoch)
        crop, crop_mask = train_augment(image, mask, self.resize_range, self.crop_size, rng)
        return {"image": torch.from_numpy(to_chw(crop)), **self._labels(index, crop_mask)}

    def _mask(self, index: int, size: tuple[int, int]) -> np.ndarray | None:
        """The pixel labels cropped with the image (None: image-level labels only)."""
        return None

    def _labels(self, index: int, crop_mask: np.ndarray | None) -> dict[str, Tensor]:
        raise NotImplementedError


class ClassificationDataset(TrainingCrops):
    """Crops with image-level labels: "labels" (C,) float32 multi-hot over the foreground."""

    def __init__(self, spec: DatasetSpec, ids: list[str], settings: dict[str, Any], seed: int):
        super().__init__(spec, ids, settings, seed)
        # Read every label up front: a bad annotation fails the job before training starts.
        self.labels = np.stack([image_labels(spec, i) for i in self.ids]) if self.ids else None

    def _labels(self, index: int, crop_mask: np.ndarray | None) -> dict[str, Tensor]:
        return {"labels": torch.from_numpy(self.labels[index].copy())}


class SegmentationDataset(TrainingCrops):
    """Crops with pixel labels: "mask" (crop, crop) int64, 255 = ignore (also the padding).

    Labels: the PNG `{id}.png` in the first of `label_dirs` holding it (pseudo-labels, affinity
    labels), or the ground-truth training mask when `label_dirs` is None.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        ids: list[str],
        settings: dict[str, Any],
        seed: int,
        label_dirs: list[Path] | None,
    ) -> None:
        super().__init__(spec, ids, settings, seed)
        # Resolve every pseudo-label up front: a missing file fails before training starts.
        self.label_paths = (
            None if label_dirs is None else [find_in_dirs(label_dirs, i, ".png") for i in self.ids]
        )

    def _mask(self, index: int, size: tuple[int, int]) -> np.ndarray:
        image_id = self.ids[index]
        if self.label_paths is None:
            mask, source = training_mask(self.spec, image_id), f"{image_id}: ground-truth mask"
        else:
            mask, source = load_label_png(self.label_paths[index]), str(self.label_paths[index])
        if mask.shape != size:
            raise DataError(f"{source}: size {mask.shape} differs from the image's {size}")
        bad = (mask != IGNORE_INDEX) & (mask >= self.spec.num_classes)
        if bad.any():
            raise DataError(
                f"{source}: label {int(mask[bad].max())} is not a class index "
                f"(0..{self.spec.num_classes - 1}) or {IGNORE_INDEX}"
            )
        return mask

    def _labels(self, index: int, crop_mask: np.ndarray | None) -> dict[str, Tensor]:
        return {"mask": torch.from_numpy(crop_mask.astype(np.int64))}

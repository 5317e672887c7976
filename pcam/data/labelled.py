"""Training crops with pixel labels: pseudo-labels, affinity labels or ground-truth masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pcam.data.transforms import item_rng, to_chw, train_augment
from pcam.data.voc import DatasetSpec, load_image, training_mask
from pcam.errors import DataError
from pcam.io import IGNORE_INDEX, find_in_dirs, load_label_png


class SegmentationDataset(Dataset):
    """Augmented training crops with pixel labels (spec 1.4, DeepLab row).

    Item i: {"image": (3, crop, crop) float32 normalised, "mask": (crop, crop) int64, 255 =
    ignore (also the padding)}. Labels: the PNG `{id}.png` in the first of `label_dirs` holding
    it (pseudo-labels), or the ground-truth training mask when `label_dirs` is None. Item i of
    epoch e draws from a generator seeded by (seed, e, i): reproducible for any worker count.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        ids: list[str],
        settings: dict[str, Any],
        seed: int,
        label_dirs: list[Path] | None,
    ) -> None:
        self.spec = spec
        self.ids = list(ids)
        self.resize_range = tuple(int(v) for v in settings["resize_range"])
        self.crop_size = int(settings["crop_size"])
        self.seed = int(seed)
        self.epoch = 0
        # Resolve every pseudo-label up front: a missing file fails before training starts.
        self.label_paths = (
            None if label_dirs is None else [find_in_dirs(label_dirs, i, ".png") for i in self.ids]
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of `epoch` (call before iterating an epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def _mask(self, index: int) -> tuple[np.ndarray, str]:
        """The label map of item `index` and a description of its source for error messages."""
        image_id = self.ids[index]
        if self.label_paths is None:
            return training_mask(self.spec, image_id), f"{image_id}: ground-truth mask"
        path = self.label_paths[index]
        return load_label_png(path), str(path)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image = load_image(self.spec.image_path(self.ids[index]))
        mask, source = self._mask(index)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{source}: size {mask.shape} differs from the image's {image.shape[:2]}"
            )
        bad = (mask != IGNORE_INDEX) & (mask >= self.spec.num_classes)
        if bad.any():
            raise DataError(
                f"{source}: label {int(mask[bad].max())} is not a class index "
                f"(0..{self.spec.num_classes - 1}) or {IGNORE_INDEX}"
            )
        rng = item_rng(self.seed, index, self.epoch)
        crop, crop_mask = train_augment(image, mask, self.resize_range, self.crop_size, rng)
        return {
            "image": torch.from_numpy(to_chw(crop)),
            "mask": torch.from_numpy(crop_mask.astype(np.int64)),
        }

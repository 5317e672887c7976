"""Image loading for the inference stages: decode in DataLoader worker processes."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from pcam.data.voc import DatasetSpec, load_image


class ImageList(Dataset):
    """(id, HxWx3 uint8 image) per id of a list."""

    def __init__(self, spec: DatasetSpec, ids: list[str]) -> None:
        self.spec = spec
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[str, np.ndarray]:
        return self.ids[index], load_image(self.spec.image_path(self.ids[index]))


def _as_is(item: Any) -> Any:
    """No collation: keep the numpy image (module level, so workers can pickle it)."""
    return item


def image_loader(spec: DatasetSpec, ids: list[str], workers: int) -> DataLoader:
    """Images of `ids` one at a time, in list order, decoded and prefetched by `workers`."""
    return DataLoader(ImageList(spec, ids), batch_size=None, num_workers=workers, collate_fn=_as_is)

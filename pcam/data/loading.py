"""Image loading for the inference stages: decode (and prepare inputs) in DataLoader workers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from torch.utils.data import DataLoader, Dataset

from pcam.data.voc import DatasetSpec, load_image


class ImageItem(NamedTuple):
    """One image of an inference loader: its id, the HxWx3 uint8 pixels and the network
    inputs prepared from them (whatever the loader's `prepare` returns; None without one)."""

    image_id: str
    image: np.ndarray
    inputs: Any


class ImageList(Dataset):
    """An `ImageItem` per id of a list."""

    def __init__(
        self, spec: DatasetSpec, ids: list[str], prepare: Callable[[np.ndarray], Any] | None
    ) -> None:
        self.spec = spec
        self.ids = list(ids)
        self.prepare = prepare

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> ImageItem:
        image = load_image(self.spec.image_path(self.ids[index]))
        inputs = None if self.prepare is None else self.prepare(image)
        return ImageItem(self.ids[index], image, inputs)


def _as_is(item: Any) -> Any:
    """No collation: keep the item as it is (module level, so workers can pickle it)."""
    return item


def image_loader(
    spec: DatasetSpec,
    ids: list[str],
    workers: int,
    prepare: Callable[[np.ndarray], Any] | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """`ImageItem`s of `ids` one at a time, in list order, decoded and prepared by `workers`
    processes ahead of the consumer (`prepare` must be picklable: a module-level function or a
    `functools.partial` of one). pin_memory: page-locked input tensors, for non-blocking copies
    to a GPU."""
    return DataLoader(
        ImageList(spec, ids, prepare),
        batch_size=None,
        num_workers=workers,
        collate_fn=_as_is,
        pin_memory=pin_memory,
    )

"""What each training step sees: the batch plan, the data order and the random seeds.

Everything random in a training is a pure function of the seed and a position, never of what ran
before in the process, so a run resumed at any step (mid-epoch included) takes exactly the steps
an uninterrupted one would, whatever the worker count:
- the item order of epoch e is a permutation drawn from (seed, e) (`epoch_order`);
- item i of epoch e is augmented with draws from (seed, e, i): the loader hands the dataset
  (epoch, index) keys (`pcam.data.labelled.TrainingCrops`), so one loader with persistent workers
  serves every epoch without telling the workers which epoch it is;
- torch's global generator (dropout) is re-seeded from (seed, step, rank) before each step
  (`step_seed`), so no draw depends on how many draws came before, e.g. in a DataLoader set-up.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pcam.errors import ConfigError, DataError

Key = tuple[int, int]  # (epoch, item index): what a training dataset is indexed with


@dataclass(frozen=True)
class BatchPlan:
    """How one global batch is split over `world` processes and micro-batches."""

    global_batch: int
    world: int
    micro_batch: int
    accumulation: int
    steps_per_epoch: int
    total_steps: int


def plan_batches(
    n_items: int, global_batch: int, micro_batch: int | None, world: int, epochs: int
) -> BatchPlan:
    """The batch plan; the global batch must split evenly over ranks and micro-batches."""
    if global_batch % world:
        raise ConfigError(f"batch_size {global_batch} does not split over {world} processes")
    per_rank = global_batch // world
    micro = per_rank if micro_batch is None else int(micro_batch)
    if micro < 1 or per_rank % micro:
        raise ConfigError(
            f"micro_batch {micro_batch} must divide the per-process batch {per_rank} "
            f"(batch_size {global_batch} over {world} processes)"
        )
    steps = n_items // global_batch  # the last incomplete batch is dropped (BN needs > 1 item)
    if steps == 0:
        raise DataError(f"{n_items} training images, fewer than one batch of {global_batch}")
    return BatchPlan(global_batch, world, micro, per_rank // micro, steps, steps * epochs)


def epoch_order(n_items: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled item order of `epoch`: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n_items)


def step_micro_batches(order: np.ndarray, step: int, plan: BatchPlan, rank: int) -> list[list[int]]:
    """This rank's micro-batches (item indices) for `step` (within the epoch) of `order`."""
    start = step * plan.global_batch + rank * (plan.global_batch // plan.world)
    mine = order[start : start + plan.global_batch // plan.world].tolist()
    return [mine[i : i + plan.micro_batch] for i in range(0, len(mine), plan.micro_batch)]


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of torch's generators for global `step` (0-based) on `rank`: a pure function."""
    return int(np.random.SeedSequence([seed, step, rank, 0xD0]).generate_state(1, np.uint64)[0])


class StepSampler:
    """A batch sampler: this rank's micro-batches of (epoch, index) keys, step after step, from
    global step `first_step` to the end of training (`plan.total_steps`)."""

    def __init__(self, n_items: int, plan: BatchPlan, seed: int, first_step: int, rank: int):
        self.n_items, self.plan, self.seed = n_items, plan, seed
        self.first_step, self.rank = first_step, rank

    def __len__(self) -> int:
        return (self.plan.total_steps - self.first_step) * self.plan.accumulation

    def __iter__(self) -> Iterator[list[Key]]:
        per_epoch = self.plan.steps_per_epoch
        for epoch in range(self.first_step // per_epoch, self.plan.total_steps // per_epoch):
            order = epoch_order(self.n_items, self.seed, epoch)
            for step in range(max(self.first_step - epoch * per_epoch, 0), per_epoch):
                for micro in step_micro_batches(order, step, self.plan, self.rank):
                    yield [(epoch, i) for i in micro]


def _ignore_sigterm(_worker_id: int) -> None:
    """Workers leave SIGTERM to the main process, which checkpoints and then stops them."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def step_groups(
    dataset: Dataset,
    plan: BatchPlan,
    seed: int,
    first_step: int,
    rank: int,
    workers: int,
    pin_memory: bool,
) -> Iterator[list[dict[str, Tensor]]]:
    """The micro-batches of every step from `first_step` on, grouped per step (`accumulation`
    micro-batches each), from ONE DataLoader whose workers live for the whole training.

    The loader gets its own generator, so building it draws nothing from torch's global one.
    """
    loader = DataLoader(
        dataset,
        batch_sampler=StepSampler(len(dataset), plan, seed, first_step, rank),
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=_ignore_sigterm if workers else None,
        generator=torch.Generator().manual_seed(step_seed(seed, first_step, rank)),
    )
    group: list[dict[str, Tensor]] = []
    for batch in loader:
        group.append(batch)
        if len(group) == plan.accumulation:
            yield group
            group = []

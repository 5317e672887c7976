"""The one training loop of every network (classifier, AffinityNet, DeepLab).

`fit` owns what the three trainings share: the GPU slot and the torchrun relaunch for more than
one GPU, DDP (SyncBN when asked for), the global batch (the same whatever the device count, with
gradient accumulation when a device takes less), the poly schedule, mixed precision, resumable
checkpoints outside the rule's declared outputs, SIGTERM handling, the training-curve CSV and the
progress bar. The stage modules supply the model, a loss closure, the dataset and a save function.

Reproducibility: the data order of epoch e is a permutation drawn from (seed, e), and each item's
augmentation draws from (seed, e, index) (`pcam.data.transforms.item_rng`), so a resumed run sees
exactly the batches an uninterrupted one would, whatever the worker count.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pcam import devices
from pcam.errors import ConfigError, DataError
from pcam.io import atomic_path, write_text
from pcam.optim import apply_lr, make_optimizer, poly_lr

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, dict[str, Tensor], float], tuple[Tensor, dict[str, float]]]
SaveFn = Callable[[nn.Module, Path], None]
SelectFn = Callable[[nn.Module], float]  # a score of the model, higher is better (e.g. val mIoU)
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
PREEMPTED_EXIT = 143  # 128 + SIGTERM: the job failed, a retry resumes


# --------------------------------------------------------------------------- batch plan (pure)


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


# --------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    curve: list[dict[str, float]],
    best: float | None = None,
) -> None:
    """Write the whole training state atomically (model, optimiser, scaler, RNG, step, curve,
    best selection score so far)."""
    payload = {
        "best": best,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": _rng_state(),
        "curve": curve,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any] | None:
    """The saved training state, or None when there is none (a damaged one is set aside)."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged archive
        damaged = path.with_suffix(".damaged")
        path.replace(damaged)
        log.warning(
            "%s: unreadable checkpoint (%s), moved to %s; starting over", path, exc, damaged
        )
        return None


# --------------------------------------------------------------------------- curve


def curve_csv(rows: list[dict[str, float]]) -> str:
    """The training curve as CSV text (columns: the rows' keys, in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns or ["step"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class _Window:
    """Running means of the logged terms between two curve rows."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, terms: dict[str, float]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1

    def row(self, step: int, epoch: int, lr: float, global_batch: int) -> dict[str, float]:
        seconds = max(time.perf_counter() - self.start, 1e-9)
        means = {k: v / self.steps for k, v in self.sums.items()}
        return {
            "step": step,
            "epoch": epoch,
            "lr": lr,
            **means,
            "images_per_s": round(self.steps * global_batch / seconds, 3),
        }


# --------------------------------------------------------------------------- the loop


class _Preemption:
    """Turns SIGTERM (SLURM time limit, pre-emption) into a flag checked between steps."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        log.warning("signal %d received: saving a checkpoint after this step", signum)
        self.requested = True

    def agreed(self, device: torch.device) -> bool:
        """True when any rank was asked to stop (all ranks must stop at the same step)."""
        if not dist.is_initialized():
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        dist.all_reduce(flag)
        return bool(flag.item())

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def _to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _mean_over_ranks(terms: dict[str, float], device: torch.device) -> dict[str, float]:
    if not dist.is_initialized():
        return terms
    keys = sorted(terms)
    values = torch.tensor([terms[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return dict(zip(keys, (values / dist.get_world_size()).tolist(), strict=True))


def _micro_batches(
    dataset: Dataset,
    plan: BatchPlan,
    seed: int,
    epoch: int,
    first_step: int,
    rank: int,
    workers: int,
) -> Iterator[list[dict[str, Tensor]]]:
    """The micro-batches of each step of `epoch` from `first_step` on, grouped per step."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    order = epoch_order(len(dataset), seed, epoch)
    sampler = [
        mb
        for step in range(first_step, plan.steps_per_epoch)
        for mb in step_micro_batches(order, step, plan, rank)
    ]
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers)
    group: list[dict[str, Tensor]] = []
    for batch in loader:
        group.append(batch)
        if len(group) == plan.accumulation:
            yield group
            group = []


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Dataset,
    groups: list[dict[str, Any]],
    settings: dict[str, Any],
    compute: dict[str, Any],
    *,
    out_model: Path,
    out_curve: Path,
    state_dir: Path,
    save_fn: SaveFn,
    sync_bn: bool,
    select_fn: SelectFn | None = None,
) -> None:
    """Train `model` for settings["epochs"] and write `out_model` (via `save_fn`) and `out_curve`.

    select_fn: scored after every epoch on rank 0; the model written is then the best-scoring
    epoch's instead of the last step's (a labelled diagnostic, e.g. best-on-val, spec 15.3).

    settings: batch_size, micro_batch, epochs, lr, weight_decay, momentum, nesterov, poly_power,
    seed, checkpoint_every, log_every. compute: gpus_per_job, mixed_precision, num_workers.
    A checkpoint in `state_dir` is resumed from; it is removed once the outputs are written.
    """
    with devices.gpu_slots(int(compute.get("gpus_per_job", 1))) as gpus:
        devices.relaunch_under_torchrun(len(gpus))  # returns unless a relaunch is needed
        info = devices.init_distributed()
        try:
            curve = _fit(
                model, loss_fn, dataset, groups, settings, compute, info, sync_bn, state_dir,
                select_fn,
            )  # fmt: skip
            if devices.is_main():
                if select_fn is not None:
                    best = torch.load(state_dir / BEST, map_location="cpu", weights_only=True)
                    model.load_state_dict(best)
                    log.info("model written: the best-scoring epoch's (selection on)")
                save_fn(model, out_model)
                write_text(out_curve, curve_csv(curve))
                (state_dir / CHECKPOINT).unlink(missing_ok=True)
                (state_dir / BEST).unlink(missing_ok=True)
            devices.barrier()
        finally:
            devices.cleanup()


def _fit(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Dataset,
    groups: list[dict[str, Any]],
    settings: dict[str, Any],
    compute: dict[str, Any],
    info: devices.DistInfo,
    sync_bn: bool,
    state_dir: Path,
    select_fn: SelectFn | None,
) -> list[dict[str, float]]:
    """The loop proper; returns the training curve. Leaves the final state in `state_dir`'s
    checkpoint, and the best-scoring epoch's weights in `state_dir/best.pt` with `select_fn`."""
    device, seed = info.device, int(settings["seed"])
    plan = plan_batches(
        len(dataset), int(settings["batch_size"]), settings.get("micro_batch"), info.world_size,
        int(settings["epochs"]),
    )  # fmt: skip
    model.to(device)
    optimizer = make_optimizer(groups, settings)
    precision = compute.get("mixed_precision", "auto")
    scaler = devices.make_grad_scaler(device, precision)
    path = state_dir / CHECKPOINT
    state = load_checkpoint(path, device)
    step, curve, best = 0, [], None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        step, curve, best = int(state["step"]), list(state["curve"]), state.get("best")
        log.info("resuming from step %d of %d (%s)", step, plan.total_steps, path)
    else:
        torch.manual_seed(seed + info.rank)  # dropout draws; the weights were seeded by the stage
    if step >= plan.total_steps:
        return curve
    net: nn.Module = model
    if info.world_size > 1:
        if sync_bn and device.type != "cpu":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        elif sync_bn:
            log.warning("SyncBN needs an accelerator: on CPU each process normalises its own batch")
        net = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    log.info(
        "%d steps (%d per epoch), global batch %d = %d process(es) x %d x %d accumulation, on %s",
        plan.total_steps, plan.steps_per_epoch, plan.global_batch, plan.world,
        plan.micro_batch, plan.accumulation, device,
    )  # fmt: skip
    net.train()
    stop = _Preemption()
    every, log_every = int(settings["checkpoint_every"]), int(settings["log_every"])
    window = _Window()
    bar = tqdm(
        total=plan.total_steps, initial=step, desc="train", disable=None if info.rank == 0 else True
    )
    try:
        while step < plan.total_steps:
            epoch, first = divmod(step, plan.steps_per_epoch)
            workers = int(compute.get("num_workers", 0))
            for group in _micro_batches(dataset, plan, seed, epoch, first, info.rank, workers):
                factor = poly_lr(step, plan.total_steps, float(settings["poly_power"]))
                apply_lr(optimizer, factor)
                terms = _train_step(net, loss_fn, group, optimizer, scaler, device, precision,
                                    (step + 1) / plan.total_steps)  # fmt: skip
                window.add(_mean_over_ranks(terms, device))
                step += 1
                bar.update(1)
                if step % log_every == 0 or step == plan.total_steps:
                    row = window.row(step, epoch, float(settings["lr"]) * factor, plan.global_batch)
                    curve.append(row)
                    log.info("step %d/%d %s", step, plan.total_steps, _fmt_row(row))
                    window = _Window()
                if select_fn is not None and step % plan.steps_per_epoch == 0:
                    best = _select(select_fn, model, net, state_dir, step, epoch, curve, best)
                preempted = stop.agreed(device)
                if step % every == 0 or step == plan.total_steps or preempted:
                    if devices.is_main():
                        save_checkpoint(path, step, model, optimizer, scaler, curve, best)
                    devices.barrier()
                if preempted:
                    log.warning("checkpoint at step %d saved; exiting for a retry to resume", step)
                    raise SystemExit(PREEMPTED_EXIT)
    finally:
        bar.close()
        stop.restore()
    return curve


def _select(
    select_fn: SelectFn,
    model: nn.Module,
    net: nn.Module,
    state_dir: Path,
    step: int,
    epoch: int,
    curve: list[dict[str, float]],
    best: float | None,
) -> float | None:
    """Score the model after an epoch (rank 0) and keep its weights in best.pt when it improves."""
    if devices.is_main():
        model.eval()
        with torch.inference_mode():
            score = float(select_fn(model))
        net.train()
        curve.append({"step": step, "epoch": epoch, "selection_score": score})
        log.info("epoch %d: selection score %.4f (best so far %s)", epoch, score, best)
        if best is None or score > best:
            best = score
            with atomic_path(state_dir / BEST) as tmp:
                torch.save(model.state_dict(), tmp)
    devices.barrier()
    return best


def _train_step(
    net: nn.Module,
    loss_fn: LossFn,
    group: list[dict[str, Tensor]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    precision: str,
    progress: float,
) -> dict[str, float]:
    """One optimiser step over a group of micro-batches; returns the mean logged terms."""
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, float] = {}
    for i, batch in enumerate(group):
        last = i == len(group) - 1
        sync = net.no_sync() if isinstance(net, DistributedDataParallel) and not last else None
        with sync if sync is not None else contextlib.nullcontext():
            with devices.autocast_context(device, precision):
                loss, terms = loss_fn(net, _to_device(batch, device), progress)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {float(loss)} at progress {progress:.4f}")
            scaler.scale(loss / len(group)).backward()
        terms = {"loss": float(loss.detach()), **terms}
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + v / len(group)
    scaler.step(optimizer)
    scaler.update()
    return totals


def _fmt_row(row: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("step",))

"""The one training loop of every network (classifier, AffinityNet, DeepLab).

`fit` owns what the three trainings share: the device and its GPU slot, the torchrun relaunch for
more than one GPU, DDP (SyncBN when asked for), the global batch (the same whatever the device
count, with gradient accumulation when a device takes less), the poly schedule, mixed precision,
resumable checkpoints outside the rule's declared outputs (`pcam.checkpoint`), SIGTERM handling,
the live training curve (`pcam.curves`) and the progress bar. The stage modules supply the model,
a loss closure, the dataset, a save function and the state key.

Reproducibility: what a step sees is a pure function of (seed, step) (`pcam.batches`), so a run
killed at any step and resumed from its last checkpoint ends with the weights, bit for bit, of an
uninterrupted one on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm import tqdm

from pcam import devices
from pcam.batches import BatchPlan, plan_batches, step_groups, step_seed
from pcam.checkpoint import BEST, CHECKPOINT, resumable_state, save_checkpoint
from pcam.curves import CurveLog, TermWindow
from pcam.models import save_torch
from pcam.optim import apply_lr, make_optimizer, poly_lr

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, dict[str, Tensor], float], tuple[Tensor, dict[str, float]]]
SaveFn = Callable[[nn.Module, Path], None]
SelectFn = Callable[[nn.Module], float]  # a score of the model, higher is better (e.g. val mIoU)
PREEMPTED_EXIT = 143  # 128 + SIGTERM: the job failed, a retry resumes


@dataclass(frozen=True)
class TrainingJob:
    """Where one training writes, and the extra inputs its resumable state is keyed by.

    out_model, out_curve: the declared outputs. state_dir: checkpoints (not an output).
    state_inputs: files or directories whose content the result depends on beyond what the
    stage reads itself (e.g. the dataset manifest of `check-data`). TensorBoard event files go
    to `tb_dir`, beside the curve and outside the declared outputs.
    """

    out_model: Path
    out_curve: Path
    state_dir: Path
    state_inputs: tuple[Path, ...] = ()

    @property
    def tb_dir(self) -> Path:
        return self.out_curve.parent / "tb"


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Dataset,
    groups: list[dict[str, Any]],
    settings: dict[str, Any],
    compute: dict[str, Any],
    *,
    job: TrainingJob,
    key: str,
    save_fn: SaveFn,
    sync_bn: bool,
    select_fn: SelectFn | None = None,
) -> None:
    """Train `model` for settings["epochs"] and write `job.out_model` (via `save_fn`) and the
    curve. `dataset` is indexed with (epoch, index) keys (`pcam.batches`).

    key: the state key of this training (`pcam.checkpoint.state_key`); a checkpoint in
    `job.state_dir` is resumed only when it carries the same key, and removed once the outputs
    are written. select_fn: scored after every epoch on rank 0; the model written is then the
    best-scoring epoch's instead of the last step's (a labelled diagnostic, e.g. best-on-val).

    settings: batch_size, micro_batch, epochs, lr, weight_decay, momentum, nesterov, poly_power,
    seed, checkpoint_every, log_every. compute: device, gpus_per_job, mixed_precision,
    num_workers.
    """
    with devices.gpu_slots(devices.slots_needed(compute)) as slots:
        devices.relaunch_under_torchrun(len(slots))  # returns unless a relaunch is needed
        info = devices.init_distributed(compute, slots)
        try:
            run = _Run(model, loss_fn, groups, settings, compute, info, job, key, select_fn)
            try:
                run.train(dataset, sync_bn)
            finally:
                run.curves.close()
            if devices.is_main():
                _write_outputs(model, job, save_fn, select_fn is not None)
            devices.barrier()
        finally:
            devices.cleanup()


def _write_outputs(model: nn.Module, job: TrainingJob, save_fn: SaveFn, selected: bool) -> None:
    """The model file (the best epoch's with selection), then the state is dropped."""
    if selected:
        model.load_state_dict(
            torch.load(job.state_dir / BEST, map_location="cpu", weights_only=True)
        )
        log.info("model written: the best-scoring epoch's (selection on)")
    save_fn(model, job.out_model)
    (job.state_dir / CHECKPOINT).unlink(missing_ok=True)
    (job.state_dir / BEST).unlink(missing_ok=True)


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


class _Run:
    """One training's state and its steps: built from the checkpoint when one fits the key."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        groups: list[dict[str, Any]],
        settings: dict[str, Any],
        compute: dict[str, Any],
        info: devices.DistInfo,
        job: TrainingJob,
        key: str,
        select_fn: SelectFn | None,
    ) -> None:
        self.model, self.net, self.loss_fn, self.select_fn = model, model, loss_fn, select_fn
        self.settings, self.compute, self.info, self.job, self.key = (
            settings, compute, info, job, key
        )  # fmt: skip
        self.seed = int(settings["seed"])
        self.memory_format = devices.tune_for_training(info.device)
        model.to(info.device, memory_format=self.memory_format)
        self.optimizer = make_optimizer(groups, settings)
        self.scaler = devices.make_grad_scaler(info.device, compute["mixed_precision"])
        self.step, self.best, rows, started, elapsed = 0, None, [], time.time(), 0.0
        state = resumable_state(job.state_dir, key, set_aside=devices.is_main())
        if state is not None:
            model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.step, self.best, rows = int(state["step"]), state["best"], list(state["curve"])
            started, elapsed = float(state["started"]), float(state["elapsed"])
            log.info("resuming from step %d (%s)", self.step, job.state_dir / CHECKPOINT)
        self.curves = CurveLog(
            job.out_curve, job.tb_dir, rows, started, elapsed, enabled=devices.is_main()
        )

    def train(self, dataset: Dataset, sync_bn: bool) -> None:
        """Run the remaining steps; checkpoints every `checkpoint_every`, at the end and on
        SIGTERM (then exits with `PREEMPTED_EXIT`)."""
        s, info = self.settings, self.info
        plan = plan_batches(
            len(dataset), int(s["batch_size"]), s["micro_batch"], info.world_size, int(s["epochs"])
        )
        if self.step >= plan.total_steps:
            return
        self.net = _distributed(self.model, info, sync_bn)
        _log_plan(plan, info.device)
        self.net.train()
        stop, window = _Preemption(), TermWindow()
        bar = tqdm(
            total=plan.total_steps,
            initial=self.step,
            desc="train",
            disable=None if info.rank == 0 else True,
        )
        groups = step_groups(
            dataset, plan, self.seed, self.step, info.rank, int(self.compute["num_workers"]),
            pin_memory=info.device.type == "cuda",
        )  # fmt: skip
        try:
            for group in groups:
                window.add(self._optimiser_step(group, plan))
                bar.update(1)
                if self.step % int(s["log_every"]) == 0 or self.step == plan.total_steps:
                    self._log(window, plan)
                    window = TermWindow()
                if self.select_fn is not None and self.step % plan.steps_per_epoch == 0:
                    self._select(self.step // plan.steps_per_epoch - 1)
                self._maybe_checkpoint(plan, stop.agreed(info.device))
        finally:
            bar.close()
            stop.restore()

    def _optimiser_step(self, group: list[dict[str, Tensor]], plan: BatchPlan) -> dict[str, float]:
        """One step: seeds, lr, forward/backward over the group, update; the mean terms."""
        torch.manual_seed(step_seed(self.seed, self.step, self.info.rank))  # dropout draws
        power = float(self.settings["poly_power"])
        apply_lr(self.optimizer, poly_lr(self.step, plan.total_steps, power))
        terms = _train_step(
            self.net, self.loss_fn, group, self.optimizer, self.scaler, self.info.device,
            self.compute["mixed_precision"], self.memory_format,
            self.step / plan.total_steps,  # 0 at the first step, like the official t (spec 2.4)
        )  # fmt: skip
        self.step += 1
        return _mean_over_ranks(terms, self.info.device)

    def _log(self, window: TermWindow, plan: BatchPlan) -> None:
        lr = float(self.settings["lr"]) * poly_lr(
            self.step - 1, plan.total_steps, float(self.settings["poly_power"])
        )
        row = window.row(self.step, (self.step - 1) // plan.steps_per_epoch, lr, plan.global_batch)
        self.curves.add(row)
        log.info("step %d/%d %s", self.step, plan.total_steps, _fmt_row(row))

    def _select(self, epoch: int) -> None:
        """Score the model after an epoch (rank 0) and keep its weights in best.pt when it
        improves."""
        if devices.is_main():
            self.model.eval()
            with torch.inference_mode():
                score = float(self.select_fn(self.model))
            self.net.train()
            self.curves.add({"step": self.step, "epoch": epoch, "selection_score": score})
            log.info("epoch %d: selection score %.4f (best so far %s)", epoch, score, self.best)
            if self.best is None or score > self.best:
                self.best = score
                save_torch(self.model.state_dict(), self.job.state_dir / BEST)
        devices.barrier()

    def _maybe_checkpoint(self, plan: BatchPlan, preempted: bool) -> None:
        every = int(self.settings["checkpoint_every"])
        if self.step % every and self.step != plan.total_steps and not preempted:
            return
        if devices.is_main():
            save_checkpoint(self.job.state_dir / CHECKPOINT, self._state())
        devices.barrier()
        if preempted:
            log.warning("checkpoint at step %d saved; exiting for a retry to resume", self.step)
            raise SystemExit(PREEMPTED_EXIT)

    def _state(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "curve": self.curves.rows,
            "best": self.best,
            "started": self.curves.started,
            "elapsed": self.curves.elapsed(),
        }


def _distributed(model: nn.Module, info: devices.DistInfo, sync_bn: bool) -> nn.Module:
    """`model` wrapped in DDP (with SyncBN when asked for, on an accelerator) when world > 1."""
    if info.world_size == 1:
        return model
    if sync_bn and info.device.type != "cpu":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif sync_bn:
        log.warning("SyncBN needs an accelerator: on CPU each process normalises its own batch")
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _log_plan(plan: BatchPlan, device: torch.device) -> None:
    log.info(
        "%d steps (%d per epoch), global batch %d = %d process(es) x %d x %d accumulation, on %s",
        plan.total_steps, plan.steps_per_epoch, plan.global_batch, plan.world,
        plan.micro_batch, plan.accumulation, device,
    )  # fmt: skip


def _to_device(
    batch: dict[str, Tensor], device: torch.device, memory_format: torch.memory_format
) -> dict[str, Tensor]:
    """Copy a batch to `device` (asynchronously from pinned memory); images (4-D) in the
    training's memory format."""
    return {
        k: v.to(device, non_blocking=True, memory_format=memory_format)
        if v.dim() == 4
        else v.to(device, non_blocking=True)
        for k, v in batch.items()
    }


def _mean_over_ranks(terms: dict[str, float], device: torch.device) -> dict[str, float]:
    if not dist.is_initialized():
        return terms
    keys = sorted(terms)
    values = torch.tensor([terms[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return dict(zip(keys, (values / dist.get_world_size()).tolist(), strict=True))


def _train_step(
    net: nn.Module,
    loss_fn: LossFn,
    group: list[dict[str, Tensor]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    precision: str,
    memory_format: torch.memory_format,
    progress: float,
) -> dict[str, float]:
    """One optimiser step over a group of micro-batches; returns the mean logged terms.

    progress: t / T with t the 0-based step (what the loss closure's schedules read)."""
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, float] = {}
    for i, batch in enumerate(group):
        last = i == len(group) - 1
        sync = net.no_sync() if isinstance(net, DistributedDataParallel) and not last else None
        with sync if sync is not None else contextlib.nullcontext():
            with devices.autocast_context(device, precision):
                loss, terms = loss_fn(net, _to_device(batch, device, memory_format), progress)
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

"""Devices: the one place that picks a device (`compute.device`), the mixed-precision policy,
the backend switches of training, the local GPU slot pool and torch.distributed set-up.

GPU slot pool: Snakemake's `gpu` resource only caps how many GPU jobs run at once; it never says
which GPU a job may use. `gpu_slots(n)` takes n per-GPU lock files with a non-blocking `flock`,
sets `CUDA_VISIBLE_DEVICES` to those ids before CUDA initialises and holds the locks until the
block exits; the kernel drops them when the process dies, so a crashed job never leaks a slot.
Under SLURM (`SLURM_JOB_ID` set) the scheduler's assignment is used as is.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist

from pcam.errors import ConfigError

log = logging.getLogger(__name__)

PRECISION_MODES = ("auto", "off", "bf16")
DEVICE_MODES = ("auto", "cuda", "cpu")
# Set while a process (or its parent, e.g. the launcher of torchrun) holds GPU slots: nested
# callers and child processes use the held ids instead of locking again.
HELD_ENV = "PCAM_GPU_SLOTS_HELD"
SIMULATED_ENV = "PCAM_SIMULATED_GPUS"
LOCK_DIR_ENV = "PCAM_GPU_LOCK_DIR"
_held_fds: list[int] = []  # lock fds of this process, handed on to a torchrun relaunch


# --------------------------------------------------------------------------- device and precision


def _mode(compute: dict) -> str:
    mode = compute["device"]
    if mode not in DEVICE_MODES:
        raise ConfigError(f"compute.device: expected one of {DEVICE_MODES}, got {mode!r}")
    return mode


def cuda_problem() -> str | None:
    """Why torch cannot use CUDA in this process, or None when it can."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None and torch.version.hip is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    try:
        torch.cuda.init()
    except Exception as exc:  # driver and runtime problems come as several exception types
        return str(exc).strip().splitlines()[0]
    return "torch finds no CUDA device"


def slots_needed(compute: dict) -> int:
    """GPU slots a job takes: `gpus_per_job`, or none when it runs on the CPU by configuration
    (`device: cpu` or `gpus_per_job: 0`), so a CPU job never holds (or shares) a GPU."""
    mode, gpus = _mode(compute), int(compute["gpus_per_job"])
    if mode == "cuda" and gpus == 0:
        raise ConfigError("compute.device: cuda needs compute.gpus_per_job >= 1, got 0")
    return 0 if mode == "cpu" else gpus


def select_device(compute: dict, slots: list[str], local_rank: int = 0) -> torch.device:
    """The device of this process: the one place that decides (`compute.device`).

    cpu, or `gpus_per_job: 0`: the CPU. cuda: `cuda:<local_rank>`; ConfigError naming the cause
    when torch cannot use CUDA. auto: CUDA when usable, else the CPU, with a WARNING naming the
    cause when GPUs were requested and found (`slots`, from the slot pool: nvidia-smi,
    CUDA_VISIBLE_DEVICES or SLURM's assignment) but torch cannot use them.
    """
    mode = _mode(compute)
    if slots_needed(compute) == 0:
        return torch.device("cpu")
    problem = cuda_problem()
    if problem is None:
        return torch.device("cuda", local_rank)
    if mode == "cuda":
        raise ConfigError(f"compute.device: cuda, but torch cannot use CUDA: {problem}")
    if slots:
        log.warning(
            "GPU(s) %s requested (compute.gpus_per_job = %s) and present, but torch cannot use "
            "them: %s. Running on the CPU (set compute.device: cuda to fail instead)",
            ",".join(slots), compute["gpus_per_job"], problem,
        )  # fmt: skip
    else:
        log.info("no GPU found (%s): running on the CPU", problem)
    return torch.device("cpu")


def tune_for_training(device: torch.device) -> torch.memory_format:
    """Backend switches for training on `device`; returns the memory format of conv inputs.

    CUDA: cudnn autotuning (training crops have one fixed size, so the tuned kernels are reused
    every step; not bit-reproducible, which only CPU runs promise) and channels_last, the layout
    tensor cores read without transposes. Elsewhere: the default layout, nothing changed.
    """
    if device.type != "cuda":
        return torch.contiguous_format
    torch.backends.cudnn.benchmark = True
    return torch.channels_last


def autocast_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    """The autocast dtype for (device type, `compute.mixed_precision`), None for full fp32.

    auto: fp16 on CUDA, fp32 elsewhere; off: fp32; bf16: bfloat16 on any device (opt-in: CPUs
    without native bf16 get slower).
    """
    if mode not in PRECISION_MODES:
        raise ConfigError(
            f"compute.mixed_precision: expected one of {PRECISION_MODES}, got {mode!r}"
        )
    if mode == "bf16":
        return torch.bfloat16
    if mode == "auto" and device.type == "cuda":
        return torch.float16
    return None


def autocast_context(device: torch.device, mode: str) -> contextlib.AbstractContextManager:
    """`torch.autocast` for the dtype chosen by `autocast_dtype`, or a no-op context."""
    dtype = autocast_dtype(device, mode)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, mode: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 autocast (bf16 and fp32 need no loss scaling)."""
    enabled = autocast_dtype(device, mode) is torch.float16
    return torch.amp.GradScaler(device.type, enabled=enabled)


# --------------------------------------------------------------------------- GPU slot pool


def _visible_gpu_ids() -> list[str]:
    """Ids of the GPUs this job may use, without initialising CUDA in this process.

    `PCAM_SIMULATED_GPUS=N` (tests) gives 0..N-1; otherwise `nvidia-smi -L` counts the GPUs,
    restricted to an inherited `CUDA_VISIBLE_DEVICES` list when one is set.
    """
    simulated = os.environ.get(SIMULATED_ENV)
    if simulated is not None:
        try:
            return [str(i) for i in range(int(simulated))]
        except ValueError as exc:
            raise ConfigError(f"{SIMULATED_ENV}: expected an integer, got {simulated!r}") from exc
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is not None:
        return [i for i in inherited.split(",") if i.strip()]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path`, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a curious admin
    return fd


def _acquire(ids: list[str], n: int, lock_dir: Path) -> tuple[list[str], list[int]]:
    """Lock n of `ids` (all or none): (chosen ids, fds), or ([], []) when too few are free."""
    chosen: list[str] = []
    fds: list[int] = []
    for gpu in ids:
        fd = _try_lock(lock_dir / f"gpu-{gpu}.lock")
        if fd is not None:
            chosen.append(gpu)
            fds.append(fd)
            if len(chosen) == n:
                return chosen, fds
    for fd in fds:  # partial: let go, so two jobs never each sit on half of what they need
        os.close(fd)
    return [], []


def _lock_dir(given: Path | None) -> Path:
    """The slot pool's lock directory (created): `given`, `PCAM_GPU_LOCK_DIR` or a per-user one."""
    path = Path(
        given
        or os.environ.get(LOCK_DIR_ENV)
        or Path(tempfile.gettempdir()) / f"pcam-gpu-slots-{os.getuid()}"
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def gpu_slots(
    n: int,
    lock_dir: Path | None = None,
    device_count: int | None = None,
    *,
    poll_seconds: float = 2.0,
) -> Iterator[list[str]]:
    """Hold n GPUs of this machine for the block; yield their ids ([] means run on the CPU).

    SLURM job or n == 0: nothing is locked or changed; yields the ids in `CUDA_VISIBLE_DEVICES`
    (SLURM's assignment), or [] for n == 0. Inside a holder (`PCAM_GPU_SLOTS_HELD` set, e.g. a
    torchrun worker started by the holder): yields the held ids. Otherwise the pool has
    `device_count` GPUs (else `PCAM_SIMULATED_GPUS`, else those `nvidia-smi -L` lists); none -> [].
    Waits, polling every `poll_seconds`, while fewer than n slots are free. Sets
    `CUDA_VISIBLE_DEVICES` for the block (restored after). n > device count -> ConfigError.
    Lock files: `lock_dir`, else `PCAM_GPU_LOCK_DIR`, else `/tmp/pcam-gpu-slots-<uid>`.
    """
    if n < 0:
        raise ConfigError(f"compute.gpus_per_job: must be >= 0, got {n}")
    if n == 0:
        yield []
        return
    if os.environ.get("SLURM_JOB_ID"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        yield [i for i in visible.split(",") if i.strip()]
        return
    held = os.environ.get(HELD_ENV)
    if held is not None:
        yield [i for i in held.split(",") if i]
        return
    ids = _visible_gpu_ids() if device_count is None else [str(i) for i in range(device_count)]
    if not ids:
        yield []
        return
    if n > len(ids):
        raise ConfigError(f"compute.gpus_per_job: {n} GPUs requested, this machine has {len(ids)}")
    lock_dir = _lock_dir(lock_dir)
    chosen, fds = _acquire(ids, n, lock_dir)
    if not fds:
        log.info("waiting for %d free GPU slot(s) of %s in %s", n, ids, lock_dir)
        while not fds:
            time.sleep(poll_seconds)
            chosen, fds = _acquire(ids, n, lock_dir)
    saved = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", HELD_ENV)}
    os.environ["CUDA_VISIBLE_DEVICES"] = os.environ[HELD_ENV] = ",".join(chosen)
    _held_fds.extend(fds)
    log.info("GPU slot(s) %s taken (CUDA_VISIBLE_DEVICES=%s)", chosen, ",".join(chosen))
    try:
        yield chosen
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for fd in fds:
            _held_fds.remove(fd)
            os.close(fd)  # closing the last fd of the open file drops the flock


@contextlib.contextmanager
def inference_device(compute: dict) -> Iterator[torch.device]:
    """One GPU slot (unless the job runs on the CPU) and the device to run on, for a block."""
    with gpu_slots(min(slots_needed(compute), 1)) as slots:
        yield select_device(compute, slots)


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a (possibly 1-process) job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError as exc:
        raise ConfigError(
            f"environment variable {name}: expected an integer, got {value!r}"
        ) from exc


def init_distributed(compute: dict, slots: list[str]) -> DistInfo:
    """Read torchrun's `RANK`/`WORLD_SIZE`/`LOCAL_RANK`, pick this process's device
    (`select_device`) and join the process group when world > 1.

    Backend: nccl on CUDA, gloo on the CPU. A group that already exists is reused.
    """
    rank, world, local_rank = (
        _env_int("RANK", 0),
        _env_int("WORLD_SIZE", 1),
        _env_int("LOCAL_RANK", 0),
    )
    device = select_device(compute, slots, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world
        )
        log.info("process group: rank %d of %d on %s", rank, world, device)
    return DistInfo(rank, world, local_rank, device)


def is_main() -> bool:
    """True on rank 0, and in any process outside a process group."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group, if any."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def torchrun_command(n_procs: int, argv: list[str]) -> list[str]:
    """The command line that runs `python -m pcam <argv>` as n_procs torchrun workers."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(n_procs), "-m", "pcam", *argv,
    ]  # fmt: skip


def relaunch_under_torchrun(n_procs: int) -> NoReturn | None:
    """With more than one GPU and not yet under torchrun: run this same `pcam` command as
    n_procs workers and exit with their code (SIGTERM/SIGINT are passed on). Otherwise return.

    The launcher keeps its GPU slot locks, and hands them to torchrun too, so the slots stay
    taken while any of them lives.
    """
    if n_procs <= 1 or _under_torchrun():
        return None
    cmd = torchrun_command(n_procs, sys.argv[1:])
    log.info("relaunching under torchrun with %d processes: %s", n_procs, " ".join(cmd))
    child = subprocess.Popen(cmd, pass_fds=tuple(_held_fds))

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    code = child.wait()
    raise SystemExit(128 - code if code < 0 else code)

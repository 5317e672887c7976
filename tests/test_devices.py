"""Device choice (`compute.device`), mixed-precision switches and the local GPU slot pool
(simulated GPUs and a simulated unusable CUDA on the CPU)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pcam import devices
from pcam.devices import HELD_ENV, autocast_dtype, gpu_slots, make_grad_scaler
from pcam.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")

# A "GPU job": takes N slots, reports what it got (and CUDA_VISIBLE_DEVICES), holds them a while.
JOB = """
import json, os, sys, time
from pcam.devices import gpu_slots
with gpu_slots(int(sys.argv[1])) as ids:
    print(json.dumps({"ids": ids, "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
                      "t": time.monotonic()}), flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_precision_policy():
    assert autocast_dtype(CUDA, "auto") is torch.float16
    assert autocast_dtype(CPU, "auto") is None
    assert autocast_dtype(CUDA, "off") is None
    assert autocast_dtype(CPU, "bf16") is torch.bfloat16
    assert make_grad_scaler(CPU, "auto").is_enabled() is False
    with pytest.raises(ConfigError, match="mixed_precision"):
        autocast_dtype(CPU, "fp8")


def _env(tmp_path: Path, gpus: int) -> dict[str, str]:
    env = dict(os.environ, PCAM_SIMULATED_GPUS=str(gpus), PCAM_GPU_LOCK_DIR=str(tmp_path))
    env["PYTHONPATH"] = str(ROOT)
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", HELD_ENV):
        env.pop(key, None)
    return env


def _start(tmp_path: Path, gpus: int, n: int, hold: float) -> subprocess.Popen:
    cmd = [sys.executable, "-c", JOB, str(n), str(hold)]
    return subprocess.Popen(cmd, env=_env(tmp_path, gpus), stdout=subprocess.PIPE, text=True)


def _report(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    return json.loads(out)


def test_two_concurrent_gpu_jobs_get_different_devices(tmp_path):
    jobs = [_start(tmp_path, 2, 1, 3.0) for _ in range(2)]
    first, second = (_report(p) for p in jobs)
    assert {first["cvd"], second["cvd"]} == {"0", "1"}
    assert first["ids"] != second["ids"]


def test_a_job_waits_for_a_free_slot_and_slots_free_on_a_crash(tmp_path):
    holder = _start(tmp_path, 2, 2, 60.0)  # takes both simulated GPUs
    assert json.loads(holder.stdout.readline())["ids"] == ["0", "1"]
    waiter = _start(tmp_path, 2, 1, 0.0)
    time.sleep(3.0)
    assert waiter.poll() is None  # still waiting: no slot is free
    killed_at = time.monotonic()
    holder.send_signal(signal.SIGKILL)  # a crash: the kernel drops the flocks
    holder.wait()
    got = _report(waiter)
    assert got["cvd"] in ("0", "1") and got["t"] >= killed_at


def test_in_process_rules(tmp_path, monkeypatch):
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", HELD_ENV):
        monkeypatch.delenv(key, raising=False)
    with gpu_slots(2, tmp_path, device_count=3) as ids:
        assert len(set(ids)) == 2 and os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(ids)
        with gpu_slots(2, tmp_path, device_count=3) as nested:  # e.g. a torchrun worker
            assert nested == ids
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with pytest.raises(ConfigError, match="4 GPUs requested"):
        with gpu_slots(4, tmp_path, device_count=3):
            pass
    with gpu_slots(1, tmp_path, device_count=0) as none:
        assert none == []  # no GPU: the CPU
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    slurm_locks = tmp_path / "slurm"
    with gpu_slots(1, slurm_locks, device_count=8) as slurm:
        assert slurm == ["3"] and not slurm_locks.exists()  # SLURM's choice as is, nothing locked


# --------------------------------------------------------------------------- device choice


def _compute(device: str, gpus: int = 1) -> dict:
    return {"device": device, "gpus_per_job": gpus, "mixed_precision": "off", "num_workers": 0}


@pytest.fixture
def no_cuda(monkeypatch):
    """A machine where torch cannot use CUDA, whatever this one has, for a known reason."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "cuda_problem", lambda: "driver too old (simulated)")


def test_cuda_mode_fails_fast_with_the_cause(no_cuda):
    with pytest.raises(ConfigError, match=r"compute.device: cuda.*driver too old \(simulated\)"):
        devices.select_device(_compute("cuda"), ["0"])
    with pytest.raises(ConfigError, match="gpus_per_job >= 1"):
        devices.slots_needed(_compute("cuda", gpus=0))


def test_cuda_problem_names_a_cause_on_this_machine():
    if torch.cuda.is_available():
        assert devices.cuda_problem() is None
    else:
        assert devices.cuda_problem()  # e.g. "Found no NVIDIA driver on your system..."


def test_auto_warns_when_requested_gpus_are_unusable(no_cuda, caplog):
    with caplog.at_level(logging.INFO, logger="pcam.devices"):
        assert devices.select_device(_compute("auto"), ["0", "1"]) == CPU
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "driver too old (simulated)" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pcam.devices"):
        assert devices.select_device(_compute("auto"), []) == CPU  # no GPU found: no alarm
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_slot_pool_gpus_and_no_usable_cuda_warn_through_inference_device(
    no_cuda, tmp_path, monkeypatch, caplog
):
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", HELD_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PCAM_SIMULATED_GPUS", "1")
    monkeypatch.setenv("PCAM_GPU_LOCK_DIR", str(tmp_path))
    with caplog.at_level(logging.WARNING), devices.inference_device(_compute("auto")) as device:
        assert device == CPU and (tmp_path / "gpu-0.lock").exists()
    assert "torch cannot use them" in caplog.text


@pytest.mark.parametrize("compute", [_compute("auto", gpus=0), _compute("cpu", gpus=2)])
def test_cpu_jobs_take_no_slot_even_when_cuda_works(compute, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # would pick cuda:0 before
    monkeypatch.setenv("PCAM_SIMULATED_GPUS", "2")
    monkeypatch.setenv("PCAM_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv(HELD_ENV, raising=False)
    assert devices.slots_needed(compute) == 0
    with devices.inference_device(compute) as device:
        assert device == CPU and not list(tmp_path.iterdir())  # no lock taken
    assert devices.select_device(compute, []) == CPU


def test_cuda_is_chosen_when_usable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.select_device(_compute("auto"), ["3"], local_rank=1) == torch.device("cuda", 1)
    assert devices.select_device(_compute("cuda"), [], local_rank=0) == CUDA


def test_training_tuning_touches_nothing_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert devices.tune_for_training(CPU) == torch.contiguous_format
    assert torch.backends.cudnn.benchmark is False
    assert devices.tune_for_training(CUDA) == torch.channels_last
    assert torch.backends.cudnn.benchmark is True

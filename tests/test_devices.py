"""Device choice, mixed-precision switches and the local GPU slot pool (simulated GPUs on CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

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

"""The shared training loop: batch plan, resume after SIGKILL, SIGTERM, and DDP on CPU (gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pcam.config import load_config, stage_settings, validate_stage
from pcam.devices import torchrun_command
from pcam.errors import ConfigError, DataError
from pcam.train import CHECKPOINT, epoch_order, plan_batches, step_micro_batches

ROOT = Path(__file__).resolve().parent.parent


def test_batch_plan_keeps_the_global_batch_whatever_the_world_size():
    one = plan_batches(100, 16, None, 1, 3)
    two = plan_batches(100, 16, 4, 2, 3)
    assert (one.micro_batch, one.accumulation, one.steps_per_epoch, one.total_steps) == (
        16,
        1,
        6,
        18,
    )
    assert (two.micro_batch, two.accumulation, two.total_steps) == (4, 2, 18)
    with pytest.raises(ConfigError, match="micro_batch"):
        plan_batches(100, 16, 3, 1, 1)
    with pytest.raises(ConfigError, match="split over 3"):
        plan_batches(100, 16, None, 3, 1)
    with pytest.raises(DataError, match="fewer than one batch"):
        plan_batches(10, 16, None, 1, 1)


def test_ranks_and_micro_batches_partition_each_global_batch():
    order = epoch_order(40, seed=3, epoch=1)
    assert np.array_equal(order, epoch_order(40, seed=3, epoch=1))
    assert not np.array_equal(order, epoch_order(40, seed=3, epoch=2))
    plan = plan_batches(40, 8, 2, 2, 1)
    for step in range(plan.steps_per_epoch):
        got = [i for r in range(2) for mb in step_micro_batches(order, step, plan, r) for i in mb]
        assert got == order[step * 8 : step * 8 + 8].tolist()
        assert all(len(mb) == 2 for mb in step_micro_batches(order, step, plan, 0))


def _args(root: Path, out: Path, **overrides) -> list[str]:
    """`pcam train-classifier` arguments for a tiny deterministic run writing under `out`."""
    settings = stage_settings(load_config(ROOT / "config" / "config.yaml"), "puzzle", "classifier")
    settings.update(
        crop_size=32, resize_range=[32, 48], batch_size=4, epochs=3, checkpoint_every=1, log_every=1
    )
    settings.update(overrides)
    settings = validate_stage("classifier", settings)
    compute = load_config(ROOT / "config" / "config.yaml")["compute"]  # --compute is validated
    compute.update(gpus_per_job=1, num_workers=0, mixed_precision="off")
    return [
        "--log-file", str(out / "train.log"), "train-classifier",
        "--dataset", json.dumps({"root": str(root)}), "--settings", json.dumps(settings),
        "--compute", json.dumps(compute), "--out-model", str(out / "model.pt"),
        "--out-curve", str(out / "curve.csv"), "--state-dir", str(out / "state"),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _run(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "pcam", *args]
    subprocess.run(cmd, check=True, env=_env(), cwd=ROOT, timeout=600)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _curve(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]


def test_killed_training_resumes_and_ends_with_the_uninterrupted_weights(demo_root, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run(_args(demo_root, whole))
    # 24 images, batch 4: 18 steps. Kill once step 5 has been logged (checkpoint every step).
    cmd = [sys.executable, "-m", "pcam", *_args(demo_root, killed)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, start_new_session=True)
    log = killed / "train.log"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and "step 5/18" in log.read_text():
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.pt").exists()
    assert (killed / "state" / CHECKPOINT).exists()
    _run(_args(demo_root, killed))
    text = log.read_text()
    resumed = int(text.split("resuming from step ")[1].split()[0])
    assert 4 <= resumed < 18  # the kill can land before step 5's checkpoint
    a, b = _weights(whole / "model.pt"), _weights(killed / "model.pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert [r["step"] for r in _curve(killed / "curve.csv")] == [str(s) for s in range(1, 19)]
    assert not (killed / "state" / CHECKPOINT).exists()  # removed once the outputs exist


def test_sigterm_saves_a_checkpoint_and_exits_for_a_retry(demo_root, tmp_path):
    cmd = [sys.executable, "-m", "pcam", *_args(demo_root, tmp_path, checkpoint_every=1000)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT)
    log = tmp_path / "train.log"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (log.exists() and "step 2/18" in log.read_text()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert (tmp_path / "state" / CHECKPOINT).exists()  # checkpoint_every alone would not save yet
    assert not (tmp_path / "model.pt").exists()


def test_two_gloo_processes_follow_the_one_process_loss_curve(demo_root, tmp_path):
    # Frozen BN: without SyncBN on CPU, trainable BN would normalise per process.
    settings = {"norm": "frozen", "epochs": 1, "loss_terms": ["cls", "pcls", "re"]}
    _run(_args(demo_root, tmp_path / "one", **settings))
    cmd = torchrun_command(2, _args(demo_root, tmp_path / "two", **settings))
    subprocess.run(cmd, check=True, env=_env(), cwd=ROOT, timeout=600)
    one, two = _curve(tmp_path / "one" / "curve.csv"), _curve(tmp_path / "two" / "curve.csv")
    assert len(one) == len(two) == 6
    for a, b in zip(one, two, strict=True):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-3), (a, b)
    assert "2 process(es)" in (tmp_path / "two" / "train.log").read_text()


class _Points(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = torch.full((2,), float(i))
        return {"x": x, "y": x.sum(0, keepdim=True)}


def test_selection_writes_the_best_scoring_epoch_not_the_last(tmp_path):
    from torch import nn

    from pcam.optim import single_group
    from pcam.train import fit

    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    seen: list[dict[str, torch.Tensor]] = []
    scores = iter([0.5, 0.9, 0.1])

    def select_fn(m: nn.Module) -> float:
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scores)

    def loss_fn(m, batch, progress):
        loss = ((m(batch["x"]) - batch["y"]) ** 2).mean() * 1e-3
        return loss, {}

    settings = {
        "batch_size": 4, "micro_batch": None, "epochs": 3, "lr": 0.01, "weight_decay": 0.0,
        "momentum": 0.9, "nesterov": False, "poly_power": 0.9, "seed": 0,
        "checkpoint_every": 1, "log_every": 1,
    }  # fmt: skip
    fit(
        model, loss_fn, _Points(), single_group(model.parameters()), settings, {},
        out_model=tmp_path / "m.pt", out_curve=tmp_path / "c.csv", state_dir=tmp_path / "s",
        save_fn=lambda m, p: torch.save(m.state_dict(), p), sync_bn=False, select_fn=select_fn,
    )  # fmt: skip
    written = torch.load(tmp_path / "m.pt", weights_only=True)
    assert len(seen) == 3 and not torch.equal(seen[1]["weight"], seen[2]["weight"])
    for key, value in seen[1].items():  # epoch 2 scored best
        torch.testing.assert_close(written[key], value)
    assert "selection_score" in (tmp_path / "c.csv").read_text().splitlines()[0]

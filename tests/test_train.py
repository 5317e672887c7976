"""The shared training loop: batch plan, resume after SIGKILL, SIGTERM, DDP on CPU (gloo),
selection, the 0-based schedule progress, and a resume onto another device."""

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

from pcam.batches import StepSampler, epoch_order, plan_batches, step_micro_batches
from pcam.checkpoint import CHECKPOINT
from pcam.config import load_config, stage_settings, validate_stage
from pcam.devices import torchrun_command
from pcam.errors import ConfigError, DataError

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


def test_the_sampler_from_any_step_is_the_tail_of_the_whole_run():
    plan = plan_batches(40, 8, 4, 1, 3)  # 5 steps an epoch, 2 micro-batches a step
    whole = list(StepSampler(40, plan, seed=3, first_step=0, rank=0))
    assert len(whole) == len(StepSampler(40, plan, 3, 0, 0)) == 30
    assert {e for mb in whole for e, _ in mb} == {0, 1, 2}  # (epoch, index) keys
    for first in (1, 5, 7, 14):
        assert list(StepSampler(40, plan, 3, first, 0)) == whole[2 * first :]


def _args(root: Path, out: Path, **overrides) -> list[str]:
    """`pcam train-classifier` arguments for a tiny deterministic run writing under `out`."""
    settings = stage_settings(load_config(ROOT / "config" / "config.yaml"), "puzzle", "classifier")
    settings.update(
        crop_size=32, resize_range=[32, 48], batch_size=4, epochs=3, checkpoint_every=4, log_every=1
    )
    settings.update(overrides)
    settings = validate_stage("classifier", settings)
    compute = load_config(ROOT / "config" / "config.yaml")["compute"]  # --compute is validated
    compute.update(gpus_per_job=1, num_workers=0, mixed_precision="off")
    manifest = out.parent / "manifest.tsv"  # what the workflow passes: the dataset's fingerprint
    manifest.write_text("one line per dataset file\n")
    return [
        "--log-file", str(out / "train.log"), "train-classifier",
        "--dataset", json.dumps({"root": str(root)}), "--settings", json.dumps(settings),
        "--compute", json.dumps(compute), "--out-model", str(out / "model.pt"),
        "--out-curve", str(out / "curve.csv"), "--state-dir", str(out / "state"),
        "--state-inputs", str(manifest),
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


def _tb_steps(tb_dir: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), purge_orphaned_data=False)  # raw events, as written
    acc.Reload()
    return [e.step for e in acc.Scalars("loss")]


def test_killed_training_resumes_and_ends_with_the_uninterrupted_weights(demo_root, tmp_path):
    """The puzzle classifier, SIGKILLed mid-epoch: bit-identical weights and model file, and a
    curve (CSV and TensorBoard) with every step once."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run(_args(demo_root, whole))
    # 24 images, batch 4: 6 steps an epoch, 18 in all. Kill once step 5 has been logged
    # (checkpoints every 4 steps: the resume is mid-epoch).
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
    # live curves: every logged step up to the kill, TensorBoard at most one step behind
    logged = [int(r["step"]) for r in _curve(killed / "curve.csv")]
    assert len(logged) >= 5 and logged == list(range(1, len(logged) + 1))
    assert _tb_steps(killed / "tb") in (logged, logged[:-1])
    _run(_args(demo_root, killed))
    resumed = int(log.read_text().split("resuming from step ")[1].split()[0])
    assert resumed in (4, 8)  # checkpoints inside an epoch
    a, b = _weights(whole / "model.pt"), _weights(killed / "model.pt")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert (whole / "model.pt").read_bytes() == (killed / "model.pt").read_bytes()
    assert [int(r["step"]) for r in _curve(killed / "curve.csv")] == list(range(1, 19))
    assert _tb_steps(killed / "tb") == list(range(1, 19))
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
    """16 items keyed by (epoch, index): x = (i, i), y = 2i."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        x = torch.full((2,), float(key[1]))
        return {"x": x, "y": x.sum(0, keepdim=True)}


SETTINGS = {
    "batch_size": 4, "micro_batch": None, "epochs": 3, "lr": 0.01, "weight_decay": 0.0,
    "momentum": 0.9, "nesterov": False, "poly_power": 0.9, "seed": 0,
    "checkpoint_every": 1, "log_every": 1,
}  # fmt: skip
COMPUTE = {"device": "cpu", "gpus_per_job": 0, "mixed_precision": "off", "num_workers": 0}


def _fit_points(tmp_path: Path, loss_fn, select_fn=None, **settings) -> torch.nn.Module:
    from torch import nn

    from pcam.optim import single_group
    from pcam.train import TrainingJob, fit

    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    fit(
        model, loss_fn, _Points(), single_group(model.parameters()), {**SETTINGS, **settings},
        COMPUTE, job=TrainingJob(tmp_path / "m.pt", tmp_path / "c.csv", tmp_path / "s"),
        key="points", save_fn=lambda m, p: torch.save(m.state_dict(), p), sync_bn=False,
        select_fn=select_fn,
    )  # fmt: skip
    return model


def _squared_error(m, batch, progress):
    return ((m(batch["x"]) - batch["y"]) ** 2).mean() * 1e-3, {}


def test_selection_writes_the_best_scoring_epoch_not_the_last(tmp_path):
    seen: list[dict[str, torch.Tensor]] = []
    scores = iter([0.5, 0.9, 0.1])

    def select_fn(m) -> float:
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scores)

    _fit_points(tmp_path, _squared_error, select_fn)
    written = torch.load(tmp_path / "m.pt", weights_only=True)
    assert len(seen) == 3 and not torch.equal(seen[1]["weight"], seen[2]["weight"])
    for key, value in seen[1].items():  # epoch 2 scored best
        torch.testing.assert_close(written[key], value)
    assert "selection_score" in (tmp_path / "c.csv").read_text().splitlines()[0]
    assert _tb_steps_of(tmp_path / "tb", "selection_score") == [4, 8, 12]


def _tb_steps_of(tb_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_schedules_see_the_0_based_step_like_the_official_code(tmp_path):
    """progress = t / T with t the 0-based step: alpha's ramp starts at 0 (spec 2.4)."""
    from pcam.losses import alpha_at

    seen: list[float] = []

    def loss_fn(m, batch, progress):
        seen.append(progress)
        return _squared_error(m, batch, progress)

    _fit_points(tmp_path, loss_fn, epochs=1)
    assert seen == [0.0, 0.25, 0.5, 0.75]
    assert [alpha_at(p, 1.0, 4.0, 0.5) for p in seen] == [0.0, 2.0, 4.0, 4.0]


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_a_checkpoint_resumes_onto_a_non_cpu_device(tmp_path):
    """Checkpoints load on the CPU and move with load_state_dict: resuming onto another device
    ("meta" stands for CUDA here) puts the optimiser state there and the step comes back."""
    from torch import nn

    from pcam.checkpoint import load_checkpoint, save_checkpoint
    from pcam.devices import DistInfo
    from pcam.optim import single_group
    from pcam.train import TrainingJob, _Run

    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()  # a momentum buffer to restore
    job = TrainingJob(tmp_path / "m.pt", tmp_path / "c.csv", tmp_path / "s")
    save_checkpoint(
        job.state_dir / CHECKPOINT,
        {
            "key": "points", "step": 2, "best": None, "started": 0.0, "elapsed": 1.0, "curve": [],
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
        },
    )  # fmt: skip
    assert load_checkpoint(job.state_dir / CHECKPOINT)["model"]["weight"].device.type == "cpu"
    with torch.device("meta"):
        fresh = nn.Linear(2, 1)
    meta = DistInfo(0, 1, 0, torch.device("meta"))
    run = _Run(fresh, _squared_error, single_group(fresh.parameters()), SETTINGS, COMPUTE,
               meta, job, "points", None)  # fmt: skip
    run.curves.close()
    assert run.step == 2
    momentum = run.optimizer.state[fresh.weight]["momentum_buffer"]
    assert momentum.device.type == "meta" and momentum.shape == (1, 2)

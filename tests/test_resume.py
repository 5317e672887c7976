"""Resume, bit for bit: AffinityNet and DeepLab killed mid-epoch end with the uninterrupted
weights; the state key decides what may be resumed; curves and TensorBoard never repeat a step.

A kill is injected deterministically: the n-th optimiser step of the process raises before it
changes anything, so the only state a re-run finds is what the checkpoints wrote, as after a
SIGKILL (tests/test_train.py kills a real process).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import pcam.batches
import pcam.train
from pcam.checkpoint import CHECKPOINT, STALE, load_checkpoint
from pcam.config import load_config, stage_settings, validate_stage
from pcam.data.voc import DatasetSpec, read_split, training_mask
from pcam.io import load_label_png, save_label_png
from pcam.stages.affinitynet import train_affinitynet
from pcam.stages.deeplab import train_deeplab
from pcam.train import TrainingJob

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
COMPUTE = {"device": "cpu", "gpus_per_job": 0, "mixed_precision": "off", "num_workers": 0}
# 24 images, batch 8: 3 steps an epoch, 6 in all; checkpoints at steps 2, 4 and 6.
TINY = dict(crop_size=32, resize_range=[32, 64], batch_size=8, epochs=2, checkpoint_every=2)


class Killed(Exception):
    """Stands for a SIGKILL in the middle of a step."""


def _kill_at(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the n-th optimiser step (1-based) of the next training raise `Killed`."""
    real = pcam.train._train_step
    calls = [0]

    def step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(pcam.train, "_train_step", step)


def _settings(stage: str, **overrides) -> dict:
    settings = stage_settings(load_config(ROOT / "config" / "config.yaml"), "puzzle", stage)
    settings.update({**TINY, "log_every": 1, **overrides})
    return validate_stage(stage, settings)


@pytest.fixture(scope="module")
def spec(demo_root: Path) -> DatasetSpec:
    return DatasetSpec.from_settings({"root": str(demo_root)})


@pytest.fixture
def labels(spec: DatasetSpec, tmp_path: Path) -> list[Path]:
    """Two shard directories of label PNGs (the ground-truth training masks)."""
    dirs = [tmp_path / "labels" / "shard-0-of-2", tmp_path / "labels" / "shard-1-of-2"]
    for k, image_id in enumerate(read_split(spec, spec.train_split)):
        save_label_png(dirs[k % 2] / f"{image_id}.png", training_mask(spec, image_id), spec.palette)
    return dirs


def _job(root: Path, *inputs: Path) -> TrainingJob:
    return TrainingJob(root / "model.pt", root / "curve.csv", root / "state", tuple(inputs))


def _deeplab(spec, job, labels, compute=COMPUTE, **overrides) -> None:
    settings = _settings("deeplab", head_channels=16, init_from_classifier=False, **overrides)
    train_deeplab(spec, settings, compute=compute, label_dirs=labels, job=job)


def _affinitynet(spec, job, labels) -> None:
    settings = _settings("affinitynet", radius=3, init_from_classifier=False)
    train_affinitynet(spec, settings, compute=COMPUTE, label_dirs=labels, job=job)


def _assert_same_weights(a: Path, b: Path) -> None:
    wa = torch.load(a, weights_only=True)["state_dict"]
    wb = torch.load(b, weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ, e.g. {differ[:3]}"
    assert a.read_bytes() == b.read_bytes()  # and no incidental bytes in the file


def _curve_steps(path: Path) -> list[int]:
    lines = path.read_text().splitlines()
    column = lines[0].split(",").index("loss")
    return [int(r.split(",")[0]) for r in lines[1:] if r.split(",")[column]]


def _tb_steps(tb_dir: Path, tag: str = "loss") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), purge_orphaned_data=False)  # raw events, as written
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


@pytest.mark.parametrize("network", ["deeplab", "affinitynet"])
def test_killed_mid_epoch_and_resumed_ends_with_the_uninterrupted_weights(
    spec, labels, tmp_path, monkeypatch, network
):
    train = _deeplab if network == "deeplab" else _affinitynet
    whole, killed = _job(tmp_path / "whole"), _job(tmp_path / "killed")
    train(spec, whole, labels)
    _kill_at(monkeypatch, 5)  # in step 5: the last checkpoint is step 4, mid-epoch 2
    with pytest.raises(Killed):
        train(spec, killed, labels)
    monkeypatch.undo()
    assert load_checkpoint(killed.state_dir / CHECKPOINT)["step"] == 4
    assert _curve_steps(killed.out_curve) == _tb_steps(killed.tb_dir) == [1, 2, 3, 4]
    train(spec, killed, labels)
    _assert_same_weights(whole.out_model, killed.out_model)
    assert _curve_steps(killed.out_curve) == _tb_steps(killed.tb_dir) == [1, 2, 3, 4, 5, 6]
    assert not (killed.state_dir / CHECKPOINT).exists()


def test_dataloader_workers_and_dropout_do_not_shift_a_resume(spec, labels, tmp_path, monkeypatch):
    """DeepLab's decoder has dropout; workers read the batches: the resume at step 2 (epoch 0,
    mid-epoch) still matches, and the one loader's workers serve both epochs."""
    compute = {**COMPUTE, "num_workers": 2}
    whole, killed = _job(tmp_path / "whole"), _job(tmp_path / "killed")
    built = []
    real_loader = pcam.batches.DataLoader

    def counting_loader(*args, **kwargs):
        built.append(kwargs["num_workers"])
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(pcam.batches, "DataLoader", counting_loader)
    _deeplab(spec, whole, labels, compute)
    assert built == [2]  # one loader for the whole training, not one per epoch
    _kill_at(monkeypatch, 3)
    with pytest.raises(Killed):
        _deeplab(spec, killed, labels, compute)
    monkeypatch.undo()
    _deeplab(spec, killed, labels, compute)
    _assert_same_weights(whole.out_model, killed.out_model)


def _resumed_step(caplog: pytest.LogCaptureFixture) -> int | None:
    for record in caplog.records:
        if record.getMessage().startswith("resuming from step "):
            return int(record.getMessage().split()[3])
    return None


def _run_one_step(spec, job, labels, monkeypatch, caplog, **overrides) -> int | None:
    """Run a training that dies in its second step of this process; the step resumed from."""
    caplog.clear()
    _kill_at(monkeypatch, 2)
    with caplog.at_level(logging.INFO), pytest.raises(Killed):
        _deeplab(spec, job, labels, **overrides)
    monkeypatch.undo()
    return _resumed_step(caplog)


def test_state_is_resumed_only_under_the_same_key(spec, labels, tmp_path, monkeypatch, caplog):
    manifest = tmp_path / "manifest.tsv"  # as the workflow passes with --state-inputs
    manifest.write_text("demo_000000\t1234\n")
    job = _job(tmp_path / "run", manifest)
    settings = {"checkpoint_every": 1}
    assert _run_one_step(spec, job, labels, monkeypatch, caplog, **settings) is None
    # execution-only settings do not key the state: resumed
    quiet = {**settings, "log_every": 3}
    assert _run_one_step(spec, job, labels, monkeypatch, caplog, **quiet) == 1
    changes = {
        "a setting": lambda: settings.update(lr=0.01),
        "a label PNG": lambda: _rewrite_one_label(spec, labels[0]),
        "the manifest": lambda: manifest.write_text("demo_000000\t1235\n"),
    }
    for what, change in changes.items():
        key = load_checkpoint(job.state_dir / CHECKPOINT)["key"]
        change()
        assert _run_one_step(spec, job, labels, monkeypatch, caplog, **settings) is None, what
        assert "training starts from step 0" in caplog.text, what
        stale = job.state_dir / STALE / key / CHECKPOINT
        assert load_checkpoint(stale)["key"] == key, what  # moved aside, not deleted
    assert _run_one_step(spec, job, labels, monkeypatch, caplog, **settings) == 1


def _rewrite_one_label(spec: DatasetSpec, shard: Path) -> None:
    path = sorted(shard.glob("*.png"))[0]
    mask = load_label_png(path)
    mask[: mask.shape[0] // 2] = 0
    save_label_png(path, mask, spec.palette)

"""The per-image inference driver: shard selection and resume, model checks, layout, devices."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pcam.data.voc import DatasetSpec, read_split
from pcam.errors import DataError
from pcam.inference import (
    InferenceJob,
    ShardRun,
    compiled_context,
    for_inference,
    images_to_do,
    run_images,
    to_device,
)
from pcam.io import shard_ids
from pcam.models import save_model
from pcam.models.classifier import Classifier
from pcam.segment import scaled_inputs
from tests.stage_settings import cpu_compute

torch.set_num_threads(1)
SETTINGS = {"backbone": "resnet18", "pretrained": False, "output_stride": 16, "norm": "bn"}
COMPUTE = cpu_compute()


@pytest.fixture(scope="module")
def spec(demo_root: Path) -> DatasetSpec:
    return DatasetSpec.from_settings({"root": str(demo_root)})


@pytest.fixture(scope="module")
def classifier_file(spec, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "classifier.pt"
    model = Classifier("resnet18", spec.num_classes - 1)
    save_model(path, "classifier", model, SETTINGS, spec.num_classes - 1)
    return path


def _job(num_outputs: int | None) -> InferenceJob:
    prepare = functools.partial(scaled_inputs, scales=[1.0], flip=False)
    return InferenceJob("test", ("classifier",), prepare, num_outputs, "foreground classes")


def _run(model: Path, split: str, shard: int = 0, num_shards: int = 1) -> ShardRun:
    return ShardRun(model, split, shard, num_shards, COMPUTE)


def test_images_to_do_keeps_the_ids_missing_any_output(spec, tmp_path):
    ids = shard_ids(read_split(spec, spec.val_split), 1, 2)
    a, b = tmp_path / "a", tmp_path / "b"
    outputs = [(a, ".png"), (b, ".npz")]
    run = _run(tmp_path / "m.pt", spec.val_split, 1, 2)
    assert images_to_do(spec, run, outputs) == ids
    assert a.is_dir() and b.is_dir()  # even before anything is written
    (a / f"{ids[0]}.png").touch()  # one of two outputs: still to do
    (a / f"{ids[1]}.png").touch()
    (b / f"{ids[1]}.npz").touch()  # both: finished
    assert images_to_do(spec, run, outputs) == [ids[0], *ids[2:]]


@pytest.mark.parametrize("workers", [0, 1])
def test_run_images_feeds_each_image_once_with_its_inputs_on_the_device(
    spec, classifier_file, workers
):
    ids = read_split(spec, spec.val_split)[:3]
    seen = []

    def step(net: nn.Module, item, device: torch.device) -> None:
        assert not net.training and torch.is_inference_mode_enabled()
        (batch,) = item.inputs
        assert batch.device == device and batch.shape == (1, 3, *item.image.shape[:2])
        assert batch.is_contiguous(memory_format=torch.channels_last)
        seen.append(item.image_id)

    run = ShardRun(classifier_file, spec.val_split, 0, 1, cpu_compute(num_workers=workers))
    run_images(spec, run, _job(spec.num_classes - 1), ids, step)  # 1: prepared in a worker
    assert seen == ids


def test_resume_runs_only_the_unfinished_images(spec, classifier_file, tmp_path):
    ids = shard_ids(read_split(spec, spec.train_split), 0, 3)
    written = []

    def step(net: nn.Module, item, device: torch.device) -> None:
        (tmp_path / f"{item.image_id}.npz").write_bytes(b"done")
        written.append(item.image_id)

    job, run = _job(spec.num_classes - 1), _run(classifier_file, spec.train_split, 0, 3)
    todo = images_to_do(spec, run, [(tmp_path, ".npz")])
    run_images(spec, run, job, todo[:2], step)  # killed after two images
    todo = images_to_do(spec, run, [(tmp_path, ".npz")])
    assert todo == ids[2:]
    run_images(spec, run, job, todo, step)
    assert written == ids
    assert images_to_do(spec, run, [(tmp_path, ".npz")]) == []


def test_nothing_is_loaded_for_an_empty_list(spec, tmp_path):
    # the model file does not even exist: a finished shard never opens it
    run_images(spec, _run(tmp_path / "missing.pt", spec.val_split), _job(20), [], lambda *a: None)


def test_class_count_mismatch_is_a_data_error_naming_the_model_file(spec, classifier_file):
    ids = read_split(spec, spec.val_split)[:1]
    found = spec.num_classes - 1
    message = rf"{classifier_file}: predicts {found} classes, the dataset has 5 foreground"
    with pytest.raises(DataError, match=message):
        run_images(spec, _run(classifier_file, spec.val_split), _job(5), ids, lambda *a: None)


def test_model_of_another_kind_is_refused(spec, classifier_file):
    job = InferenceJob("test", ("deeplab", "segformer"), lambda im: None)
    ids = read_split(spec, spec.val_split)[:1]
    with pytest.raises(DataError, match="not a deeplab or segformer model file"):
        run_images(spec, _run(classifier_file, spec.val_split), job, ids, lambda *a: None)


def test_channels_last_layout_gives_the_same_cams(classifier_file):
    from pcam.models import load_model

    x = torch.randn(2, 3, 45, 61)
    with torch.inference_mode():
        plain = load_model(classifier_file)(x)[1]
        fast = for_inference(load_model(classifier_file), False)(to_device(x, torch.device("cpu")))
    torch.testing.assert_close(fast[1], plain, rtol=0, atol=1e-5)


def test_to_device_walks_lists_and_leaves_other_values():
    tensors = [torch.zeros(1, 3, 4, 5), torch.zeros(2, 3)]
    moved = to_device(tensors, torch.device("meta"))
    assert [t.device.type for t in moved] == ["meta", "meta"]
    assert moved[0].is_contiguous(memory_format=torch.channels_last)
    assert to_device(None, torch.device("meta")) is None


@pytest.mark.slow  # inductor compiles C++ kernels: ~1 minute on 2 idle cores
def test_compiled_network_matches_eager_across_sizes():
    pytest.importorskip("torch._inductor")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    net[1].running_mean.uniform_(-1, 1)  # statistics that freezing folds into the conv
    net[1].running_var.uniform_(0.5, 2)
    inputs = [torch.randn(2, 3, 9, 13), torch.randn(2, 3, 17, 6)]  # one compilation, two sizes
    with torch.no_grad():
        eager = [net(x) for x in inputs]
    compiled = for_inference(net, True)
    with torch.inference_mode(), compiled_context(True):
        for x, expected in zip(inputs, eager, strict=True):
            out = compiled(to_device(x, torch.device("cpu")))
            np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5)

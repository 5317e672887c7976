"""Multi-scale CAM aggregation (spec 3.1) and the CAM dump stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pcam.cams import max_normalise, multiscale_cams, strided_size
from pcam.data.voc import DatasetSpec, image_labels, read_split
from pcam.errors import DataError
from pcam.inference import ShardRun
from pcam.io import shard_ids
from pcam.models import save_model
from pcam.models.classifier import Classifier
from pcam.segment import scaled_inputs
from pcam.stages.cams import make_cams
from tests.stage_settings import cpu_compute

torch.set_num_threads(1)
SETTINGS = {"backbone": "resnet18", "pretrained": False, "output_stride": 16, "norm": "bn"}
COMPUTE = cpu_compute(gpus_per_job=1)  # on a machine without GPUs: no slot


def _cams(forward, image: np.ndarray, scales, flip: bool, channels=None):
    return multiscale_cams(
        forward, scaled_inputs(image, scales, flip), image.shape[:2], flip, channels
    )


def _pooled(x: torch.Tensor) -> torch.Tensor:
    """A flip-equivariant 'network': 2 channels of 16x16 average pooling."""
    return F.avg_pool2d(x[:, :2], 16, ceil_mode=True) + 3.0


def _ramp(x: torch.Tensor) -> torch.Tensor:
    """A network that is not flip-equivariant: activation grows with the column."""
    n, _, h, w = x.shape
    cols = torch.arange((w + 15) // 16, dtype=torch.float32)
    return cols.expand(n, 1, (h + 15) // 16, -1).clone()


def test_strided_size_rounds_up():
    assert strided_size(375, 500) == (94, 125)
    assert strided_size(64, 64) == (16, 16)
    assert strided_size(375, 500, 16) == (24, 32)


def test_shapes_and_scale_sum():
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    strided, high = _cams(_pooled, image, [0.5, 1.0, 2.0], flip=False)
    assert strided.shape == (2, 13, 18) and high.shape == (2, 50, 70)
    # ReLU(pool + 3) > 0 everywhere; each scale adds a positive map
    one, _ = _cams(_pooled, image, [1.0], flip=False)
    assert (strided > one).all()


def test_kept_channels_equal_the_same_channels_of_all():
    image = np.random.default_rng(2).integers(0, 256, (37, 29, 3), dtype=np.uint8)

    def net(x: torch.Tensor) -> torch.Tensor:  # 3 channels, one negative (ReLU must clip it)
        pooled = F.avg_pool2d(x, 16, ceil_mode=True)
        return torch.cat([pooled[:, :1] - 5, pooled[:, 1:2] + 1, pooled[:, 2:] + 2], dim=1)

    every = _cams(net, image, [0.5, 1.5], flip=True)
    kept = _cams(net, image, [0.5, 1.5], flip=True, channels=[2, 0])
    for all_maps, few in zip(every, kept, strict=True):
        assert few.shape[0] == 2
        torch.testing.assert_close(few, all_maps[[2, 0]], rtol=0, atol=0)
    assert float(kept[0][1].abs().max()) == 0.0  # the negative channel, rectified


def test_flip_is_flipped_back_before_summing():
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    plain, plain_hr = _cams(_pooled, image, [1.0], flip=False)
    both, both_hr = _cams(_pooled, image, [1.0], flip=True)
    torch.testing.assert_close(both, 2 * plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(both_hr, 2 * plain_hr, rtol=1e-4, atol=1e-4)
    ramp, _ = _cams(_ramp, image, [1.0], flip=True)  # ramp + mirrored ramp
    torch.testing.assert_close(ramp, ramp.flip(-1))


def test_max_normalise_gives_each_channel_a_unit_max():
    cams = torch.stack([torch.full((4, 4), float(c + 1)) for c in range(5)])
    cams[3, 0, 0] = 10.0
    out = max_normalise(cams[[1, 3]])
    assert out.shape == (2, 4, 4)
    assert out.amax(dim=(1, 2)).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert float(out[1, 1, 1]) == pytest.approx(4 / (10 + 1e-5), abs=1e-7)
    assert max_normalise(cams[[]]).shape == (0, 4, 4)


@pytest.fixture(scope="module")
def spec(demo_root: Path) -> DatasetSpec:
    return DatasetSpec.from_settings({"root": str(demo_root)})


def test_make_cams_writes_present_classes_and_resumes(spec, tmp_path):
    torch.manual_seed(0)
    model = Classifier("resnet18", spec.num_classes - 1)
    save_model(tmp_path / "model.pt", "classifier", model, SETTINGS, 8)
    settings = {"scales": [0.5, 1.0], "flip": True, "dtype": "float16"}
    out = tmp_path / "cams"
    run = ShardRun(tmp_path / "model.pt", spec.train_split, 0, 3, COMPUTE)
    make_cams(spec, settings, run, out)
    mine = shard_ids(read_split(spec, spec.train_split), 0, 3)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{i}.npz" for i in mine)
    for image_id in mine:
        with np.load(out / f"{image_id}.npz") as data:
            present = np.flatnonzero(image_labels(spec, image_id)) + 1
            assert data["keys"].tolist() == [0, *present.tolist()]
            assert data["hr_cam"].dtype == np.float16
            assert data["hr_cam"].shape == (len(present), 64, 64)
            assert data["cam"].shape == (len(present), 16, 16)
            assert data["hr_cam"].max() <= 1.0
    first = out / f"{mine[0]}.npz"
    stamp = first.stat().st_mtime_ns
    first_other = out / f"{mine[1]}.npz"
    first_other.unlink()
    make_cams(spec, settings, run, out)
    assert first.stat().st_mtime_ns == stamp and first_other.exists()


def test_make_cams_refuses_a_model_of_another_kind(spec, tmp_path):
    three = Classifier("resnet18", 3)
    save_model(tmp_path / "m.pt", "classifier", three, SETTINGS, 3)
    with pytest.raises(DataError, match=rf"{tmp_path / 'm.pt'}: predicts 3 classes"):
        make_cams(
            spec, {"scales": [1.0], "flip": False, "dtype": "float32"},
            ShardRun(tmp_path / "m.pt", spec.val_split, 0, 1, COMPUTE), tmp_path / "out",
        )  # fmt: skip

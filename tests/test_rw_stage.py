"""Stage 5: the random-walk stage and AffinityNet's inference padding (rw.pad_to, spec 6.1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pcam.data.voc import DatasetSpec, load_image, read_split
from pcam.errors import DataError
from pcam.inference import ShardRun
from pcam.io import save_scores, shard_ids
from pcam.models import save_model
from pcam.models.affinitynet import AffinityNet
from pcam.stages.rw import make_rw
from tests.stage_settings import cpu_compute, section

torch.set_num_threads(1)
COMPUTE = cpu_compute()


@pytest.fixture(scope="module")
def net() -> AffinityNet:
    torch.manual_seed(0)
    net = AffinityNet("resnet18")
    for side in net.sides:  # non-trivial GroupNorm affine parameters
        side[1].weight.data.uniform_(0.5, 1.5)
        side[1].bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def _official_boundary(net: AffinityNet, x: torch.Tensor, canvas: int) -> torch.Tensor:
    """spec 6.1 by hand: image + mirror, zero-padded right/bottom to canvas x canvas, edge
    logits cropped to the stride-4 grid, sigmoid of the mean with the flipped-back mirror."""
    h, w = x.shape[-2:]
    both = F.pad(torch.cat([x, x.flip(-1)]), (0, canvas - w, 0, canvas - h))
    logits = net(both)[:, 0, : -(-h // 4), : -(-w // 4)]
    return torch.sigmoid(logits[:1] / 2 + logits[1:].flip(-1) / 2)


def test_a_canvas_pads_like_the_official_code_and_changes_the_boundaries(net):
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        canvas = net.boundary(x, 64)
        torch.testing.assert_close(canvas, _official_boundary(net, x, 64))
        stride = net.boundary(x)
        assert canvas.shape == stride.shape == (1, 10, 14)
        # GroupNorm's statistics cover the padding: more of it gives other boundaries
        assert float((canvas - stride).abs().max()) > 1e-3
        # a canvas no larger than the image pads to the stride only
        torch.testing.assert_close(net.boundary(x, 16), stride, rtol=0, atol=0)


def test_sides_above_the_canvas_are_padded_to_the_stride_not_cropped(net):
    x = torch.randn(1, 3, 80, 70)
    with torch.no_grad():
        out = net.boundary(x, 64)
        assert out.shape == (1, 20, 18)
        torch.testing.assert_close(out, net.boundary(x), rtol=0, atol=0)  # both 80x80


@pytest.fixture(scope="module")
def spec(demo_root: Path) -> DatasetSpec:
    return DatasetSpec.from_settings({"root": str(demo_root)})


@pytest.fixture(scope="module")
def inputs(spec, net, tmp_path_factory) -> tuple[Path, Path]:
    """An AffinityNet model file and CAM archives (2 classes each) for the train split."""
    tmp = tmp_path_factory.mktemp("rw")
    save_model(tmp / "aff.pt", "affinitynet", net, {"backbone": "resnet18", "pretrained": False}, 9)
    rng = np.random.default_rng(0)
    for image_id in read_split(spec, spec.train_split):
        h, w = load_image(spec.image_path(image_id)).shape[:2]
        cam = rng.random((2, -(-h // 4), -(-w // 4))).astype(np.float32)
        save_scores(tmp / "cams" / f"{image_id}.npz", [0, 3, 5], cam=cam)
    return tmp / "aff.pt", tmp / "cams"


def _run(spec, inputs, out: Path, shard: int = 0, num_shards: int = 6, **settings) -> list[str]:
    model, cams = inputs
    run = ShardRun(model, spec.train_split, shard, num_shards, COMPUTE)
    make_rw(spec, section("rw", **settings), run, [cams], out)
    return shard_ids(read_split(spec, spec.train_split), shard, num_shards)


@pytest.mark.parametrize("pad_to", ["stride", 512])
def test_make_rw_writes_globally_normalised_maps(spec, inputs, tmp_path, pad_to):
    ids = _run(spec, inputs, tmp_path, pad_to=pad_to)
    assert sorted(p.stem for p in tmp_path.iterdir()) == sorted(ids)
    for image_id in ids:
        with np.load(tmp_path / f"{image_id}.npz") as data:
            assert data["keys"].tolist() == [0, 3, 5]
            image = load_image(spec.image_path(image_id))
            assert data["rw"].shape == (2, *image.shape[:2])
            assert data["rw"].max() == pytest.approx(1.0)


def test_pad_to_512_gives_other_maps_than_the_stride(spec, inputs, tmp_path):
    ids = _run(spec, inputs, tmp_path / "stride", pad_to="stride")
    _run(spec, inputs, tmp_path / "canvas", pad_to=512)
    with np.load(tmp_path / "stride" / f"{ids[0]}.npz") as a:
        with np.load(tmp_path / "canvas" / f"{ids[0]}.npz") as b:
            assert a["rw"].shape == b["rw"].shape
            assert float(np.abs(a["rw"] - b["rw"]).max()) > 1e-3


def test_make_rw_resumes_and_names_a_missing_cam(spec, inputs, tmp_path):
    ids = _run(spec, inputs, tmp_path / "out")
    kept = tmp_path / "out" / f"{ids[0]}.npz"
    stamp = kept.stat().st_mtime_ns
    (tmp_path / "out" / f"{ids[1]}.npz").unlink()
    _run(spec, inputs, tmp_path / "out")
    assert kept.stat().st_mtime_ns == stamp and (tmp_path / "out" / f"{ids[1]}.npz").exists()
    model, _ = inputs
    with pytest.raises(DataError, match=rf"{ids[0]}.npz: not found"):
        run = ShardRun(model, spec.train_split, 0, 6, COMPUTE)
        make_rw(spec, section("rw"), run, [tmp_path / "none"], tmp_path / "other")

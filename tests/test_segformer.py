"""The second segmentation network: SegFormer-style MLP decoder on pvt_v2_b0 (deeplab.network)."""

from __future__ import annotations

import pytest
import torch
import yaml

from pcam.data.voc import DatasetSpec
from pcam.errors import ConfigError
from pcam.models import (
    MODEL_KINDS,
    build_model,
    load_model,
    save_model,
    segmentation_kind,
    segmentation_kinds,
)
from pcam.models.backbone import create_backbone
from pcam.models.segformer import SegFormer
from pcam.pipeline import segmentation_prefix
from tests.stage_settings import ROOT, cpu_compute, section

torch.set_num_threads(1)
COMPUTE = cpu_compute()


def _settings(**overrides) -> dict:
    """The config's `deeplab` section for a small SegFormer on pvt_v2_b0."""
    segformer = dict(
        network="segformer", backbone="pvt_v2_b0", output_stride=None, init_from_classifier=False
    )
    return section("deeplab", **{**segformer, "head_channels": 32, **overrides})


@pytest.fixture(scope="module")
def net() -> SegFormer:
    torch.manual_seed(0)
    return SegFormer.from_settings(_settings(), 5)


@pytest.mark.parametrize("size", [(64, 64), (65, 97), (33, 47)])
def test_logits_come_back_at_input_size(net, size):
    with torch.no_grad():
        assert net.eval()(torch.randn(2, 3, *size)).shape == (2, 5, *size)


def test_decoder_projects_four_levels_to_the_stride_4_grid(net):
    assert net.backbone.feature_info.reduction() == [4, 8, 16, 32]
    widths = [p.in_channels for p in net.project]
    assert widths == net.backbone.feature_info.channels() == [32, 64, 160, 256]
    assert {p.out_channels for p in net.project} == {32}
    assert net.fuse[0].in_channels == 4 * 32 and net.num_outputs == 5


def test_parameter_groups_cover_every_parameter_once(net):
    groups = net.parameter_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    head = {id(p) for g in groups if g["name"].startswith("head") for p in g["params"]}
    assert head == {id(p) for m in (net.project, net.fuse, net.classifier) for p in m.parameters()}


def test_a_few_training_steps_reduce_the_loss():
    from pcam.stages.deeplab import segmentation_loss

    torch.manual_seed(0)
    model = SegFormer.from_settings(_settings(), 3).train()
    # 8x8 blocks of random colour; a block's class follows its first two channels
    blocks = torch.randn(4, 3, 4, 4)
    x = blocks.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    target = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = segmentation_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.65 * losses[0], losses


def test_save_load_round_trip(net, tmp_path):
    save_model(tmp_path / "s.pt", "segformer", net, _settings(), 5)
    loaded = load_model(tmp_path / "s.pt", kind=segmentation_kinds())
    assert isinstance(loaded, SegFormer)
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x), rtol=0, atol=0)


def test_trained_through_the_segmentation_stage(demo_root, tmp_path):
    from pcam.stages.deeplab import train_deeplab
    from pcam.train import TrainingJob

    spec = DatasetSpec.from_settings({"root": str(demo_root)})
    settings = _settings(crop_size=32, resize_range=[32, 48], batch_size=12, epochs=1, log_every=1)
    job = TrainingJob(tmp_path / "m.pt", tmp_path / "curve.csv", tmp_path / "state")
    train_deeplab(spec, settings, compute=COMPUTE, label_dirs=None, job=job)
    model = load_model(tmp_path / "m.pt", kind="segformer")
    assert isinstance(model, SegFormer) and model.num_outputs == spec.num_classes
    assert len((tmp_path / "curve.csv").read_text().strip().splitlines()) >= 2


def test_backbones_without_dilation_need_a_null_output_stride():
    assert create_backbone("pvt_v2_b0", out_indices=4).feature_info.reduction()[-1] == 32
    with pytest.raises(ConfigError, match="output_stride: pvt_v2_b0 does not support dilation"):
        create_backbone("pvt_v2_b0", output_stride=16, out_indices=4)


def test_registry_schema_and_stage_prefix_agree():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    networks = schema["$defs"]["deeplab"]["properties"]["network"]["enum"]
    assert sorted(networks) == sorted(MODEL_KINDS[k].network for k in segmentation_kinds())
    assert segmentation_kind("deeplabv3plus") == "deeplab"
    assert (
        build_model(
            "deeplab", _settings(network="deeplabv3plus", backbone="resnet18", output_stride=16), 3
        ).num_outputs
        == 3
    )
    with pytest.raises(ConfigError, match="deeplab.network: unknown network 'unet'"):
        segmentation_kind("unet")
    assert segmentation_prefix({"network": "deeplabv3plus"}) == "deeplab"  # stable row names
    assert segmentation_prefix({"network": "segformer"}) == "segformer"

"""DeepLabV3+ (spec 8.1), its loss (8.2), training dataset and training stage (inference:
test_segmentation_inference.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pcam.config import load_config, stage_settings, validate_stage
from pcam.data.voc import DatasetSpec, load_image, read_split, training_mask
from pcam.errors import ConfigError, DataError
from pcam.io import save_label_png
from pcam.models.backbone import FixedBatchNorm2d
from pcam.models.deeplab import DeepLabV3Plus
from pcam.stages.deeplab import (
    SegmentationDataset,
    segmentation_loss,
    train_deeplab,
)
from pcam.train import TrainingJob

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
COMPUTE = {"device": "cpu", "gpus_per_job": 0, "mixed_precision": "off", "num_workers": 0}


def _settings(stage: str = "deeplab", **overrides) -> dict:
    """The config's defaults of `stage`, shrunk to a tiny CPU run."""
    settings = stage_settings(load_config(ROOT / "config" / "config.yaml"), "puzzle", stage)
    if stage == "deeplab":
        settings.update(head_channels=16, crop_size=32, resize_range=[32, 64], batch_size=12)
        settings.update(epochs=1, log_every=1, init_from_classifier=False)
    settings.update(overrides)
    return validate_stage(stage, settings)


@pytest.fixture(scope="module")
def spec(demo_root: Path) -> DatasetSpec:
    return DatasetSpec.from_settings({"root": str(demo_root)})


@pytest.fixture(scope="module")
def small_model() -> DeepLabV3Plus:
    torch.manual_seed(0)
    return DeepLabV3Plus("resnet18", 5, head_channels=16).eval()


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize("size", [(64, 64), (65, 97), (96, 128), (7, 5)])
def test_logits_come_back_at_input_size(small_model, size):
    with torch.no_grad():
        out = small_model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, *size) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_head_structure_follows_the_spec(small_model):
    aspp, decoder = small_model.aspp, small_model.decoder
    # 1x1 + one 3x3 per rate, each dilated by its rate, plus image pooling; 5 x 16 -> 16 channels
    dilations = [branch[0].dilation[0] for branch in aspp.branches]
    kernels = [branch[0].kernel_size[0] for branch in aspp.branches]
    assert dilations == [1, 6, 12, 18] and kernels == [1, 3, 3, 3]
    assert aspp.project[0][0].in_channels == 5 * 16
    assert decoder.reduce[0].out_channels == 48 and decoder.reduce[0].in_channels == 64
    assert decoder.fuse[0][0].in_channels == 16 + 48
    assert [m.p for m in decoder.fuse if isinstance(m, nn.Dropout)] == [0.5, 0.1]
    assert decoder.classifier.bias is not None and decoder.classifier.out_channels == 5
    head = list(aspp.modules()) + list(decoder.modules())
    norms = [m for m in head if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))]
    assert norms and all(isinstance(m, nn.GroupNorm) and m.num_groups == 4 for m in norms)
    assert all(not m.bias for m in head if isinstance(m, nn.Conv2d) and m is not decoder.classifier)


def test_group_count_divides_odd_widths():
    model = DeepLabV3Plus("resnet18", 3, head_channels=30, aspp_rates=(2,))
    groups = {
        m.num_channels: m.num_groups for m in model.aspp.modules() if isinstance(m, nn.GroupNorm)
    }
    assert groups == {30: 2}
    assert model.decoder.reduce[1].num_groups == 4  # 48 channels


def test_head_convs_are_kaiming_normal():
    torch.manual_seed(0)
    model = DeepLabV3Plus("resnet18", 3, head_channels=128)
    weight = model.aspp.branches[0][0].weight  # 1x1 over 512 channels: fan_in 512
    # Kaiming normal: std sqrt(2 / 512) = 0.0625; PyTorch's default init would give 0.0255
    assert weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)


def test_from_settings_reads_the_config_section():
    settings = _settings(head_channels=24, aspp_rates=[3, 5], output_stride=8)
    model = DeepLabV3Plus.from_settings(settings, 4)
    assert [b[0].dilation[0] for b in model.aspp.branches] == [1, 3, 5]
    assert model.aspp.project[0][0].out_channels == 24
    assert model.backbone.feature_info.reduction() == [4, 8]
    assert model.decoder.classifier.out_channels == 4
    with pytest.raises(ConfigError, match="deeplab.norm"):
        DeepLabV3Plus("resnet18", 4, norm="sync")


def _running_stats(model: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in model.backbone.named_buffers() if "running" in n]


@pytest.mark.parametrize("norm", ["frozen", "bn"])
def test_frozen_backbone_bn_keeps_its_statistics(norm):
    torch.manual_seed(0)
    model = DeepLabV3Plus("resnet18", 3, head_channels=16, norm=norm).train()
    before = _running_stats(model)
    model(torch.randn(2, 3, 32, 32) * 3 + 1).sum().backward()
    changed = any(not torch.equal(a, b) for a, b in zip(before, _running_stats(model), strict=True))
    bns = [m for m in model.backbone.modules() if isinstance(m, FixedBatchNorm2d)]
    if norm == "frozen":
        assert bns and not changed
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
        assert all(m.weight.grad is not None for m in bns)  # affine parameters still train
    else:
        assert not bns and changed


def test_parameter_groups_cover_every_parameter_once(small_model):
    pytest.importorskip("pcam.optim")
    groups = small_model.parameter_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(small_model.parameters()))
    mult = {id(p): g["lr_mult"] for g in groups for p in g["params"]}
    assert mult[id(small_model.decoder.classifier.weight)] == 10
    assert mult[id(small_model.decoder.classifier.bias)] == 20
    assert mult[id(small_model.aspp.branches[1][1].bias)] == 20  # a GroupNorm bias
    conv1 = next(p for n, p in small_model.backbone.named_parameters() if n.endswith("weight"))
    assert mult[id(conv1)] == 1


# --------------------------------------------------------------------------- loss


def test_cross_entropy_ignores_255_as_hand_computed():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.5], [0.3, 0.3, 3.0]]).T[None, :, None]
    target = torch.tensor([[[0, 255, 2]]])  # pixel 1 is ignored
    p = np.exp(logits[0, :, 0].numpy())
    p /= p.sum(axis=0)
    expected = -(np.log(p[0, 0]) + np.log(p[2, 2])) / 2
    logits.requires_grad_(True)
    loss = segmentation_loss(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.equal(logits.grad[0, :, 0, 1], torch.zeros(3))  # no gradient from 255
    nn_loss = nn.CrossEntropyLoss(ignore_index=255)(logits.detach(), target)
    assert loss.item() == pytest.approx(nn_loss.item(), rel=1e-6)


def test_all_ignored_batch_gives_zero_not_nan():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 2, 2), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# --------------------------------------------------------------------------- dataset


def _pseudo_label_dirs(spec: DatasetSpec, root: Path, ids: list[str]) -> list[Path]:
    """Two shard directories of 'pseudo-labels' (the ground truth with foreground shifted by 1)."""
    dirs = [root / "shard-0-of-2", root / "shard-1-of-2"]
    for k, image_id in enumerate(ids):
        mask = training_mask(spec, image_id)
        shifted = np.where((mask > 0) & (mask < 255), mask % (spec.num_classes - 1) + 1, mask)
        save_label_png(dirs[k % 2] / f"{image_id}.png", shifted.astype(np.uint8), spec.palette)
    return dirs


def test_dataset_reads_pseudo_labels_or_ground_truth(spec, tmp_path):
    ids = read_split(spec, spec.train_split)
    dirs = _pseudo_label_dirs(spec, tmp_path, ids)
    pseudo = SegmentationDataset(spec, ids, _settings(resize_range=[64, 64], crop_size=64), 0, dirs)
    truth = SegmentationDataset(spec, ids, _settings(resize_range=[64, 64], crop_size=64), 0, None)
    a, b = pseudo[0, 5], truth[0, 5]  # (epoch, index)
    assert a["image"].shape == (3, 64, 64) and a["mask"].shape == (64, 64)
    assert a["mask"].dtype == torch.int64 and torch.equal(a["image"], b["image"])
    # same augmentation, different label sources: shifted foreground, identical background/void
    fg = (b["mask"] > 0) & (b["mask"] < 255)
    assert fg.any() and torch.equal(a["mask"][~fg], b["mask"][~fg])
    assert torch.equal(a["mask"][fg], b["mask"][fg] % (spec.num_classes - 1) + 1)
    assert torch.equal(pseudo[0, 5]["mask"], a["mask"])  # reproducible per (seed, epoch, index)


def test_dataset_refuses_bad_labels(spec, tmp_path):
    ids = read_split(spec, spec.train_split)[:2]
    with pytest.raises(DataError, match=f"{ids[0]}.png: not found"):
        SegmentationDataset(spec, ids, _settings(), 0, [tmp_path / "none"])
    save_label_png(tmp_path / f"{ids[0]}.png", np.zeros((5, 5), np.uint8), spec.palette)
    image = load_image(spec.image_path(ids[1]))
    save_label_png(tmp_path / f"{ids[1]}.png", np.full(image.shape[:2], 40, np.uint8), spec.palette)
    dataset = SegmentationDataset(spec, ids, _settings(), 0, [tmp_path])
    with pytest.raises(DataError, match="differs from the image"):
        dataset[0, 0]
    with pytest.raises(DataError, match="label 40 is not a class index"):
        dataset[0, 1]


# --------------------------------------------------------------------------- stages


def test_select_with_val_writes_the_best_epoch_and_logs_every_score(spec, tmp_path):
    from pcam.models import load_model
    from pcam.stages.deeplab import val_miou_fn

    model = _train(spec, tmp_path, None, select_with_val=True, epochs=3, lr=0.05)
    rows = (tmp_path / "curve.csv").read_text().splitlines()
    column = rows[0].split(",").index("selection_score")
    scores = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    assert len(scores) == 3  # one per epoch
    written = val_miou_fn(spec)(load_model(model))
    assert written == pytest.approx(max(scores), abs=1e-9)
    assert not (tmp_path / "state" / "best.pt").exists()


def _train(spec: DatasetSpec, root: Path, label_dirs: list[Path] | None, **overrides) -> Path:
    """Train a tiny DeepLab writing under `root`; returns its model file."""
    job = TrainingJob(root / "model.pt", root / "curve.csv", root / "state")
    train_deeplab(spec, _settings(**overrides), compute=COMPUTE, label_dirs=label_dirs, job=job)
    return job.out_model


@pytest.fixture(scope="module")
def trained(spec, tmp_path_factory) -> Path:
    """A DeepLab trained for 2 steps (24 images, batch 12) on pseudo-labels."""
    pytest.importorskip("pcam.train")
    tmp = tmp_path_factory.mktemp("deeplab")
    dirs = _pseudo_label_dirs(spec, tmp / "labels", read_split(spec, spec.train_split))
    model = _train(spec, tmp, dirs)
    assert (tmp / "curve.csv").read_text().strip()
    return model


def test_train_deeplab_writes_a_loadable_model(spec, trained):
    from pcam.models import load_model

    model = load_model(trained)
    assert isinstance(model, DeepLabV3Plus)
    assert model(torch.zeros(1, 3, 33, 47)).shape == (1, spec.num_classes, 33, 47)


def test_train_deeplab_fully_supervised(spec, tmp_path):
    pytest.importorskip("pcam.train")
    from pcam.models import load_model

    assert isinstance(load_model(_train(spec, tmp_path, None)), DeepLabV3Plus)


def test_the_backbone_starts_from_the_classifier_given(spec, tmp_path):
    """`init_from_classifier`: the backbone's weights at step 0 are the classifier's (lr 1e-12 keeps
    them); none given is a config error."""
    from pcam.models import load_model, save_model
    from pcam.models.classifier import Classifier

    torch.manual_seed(3)  # not the training's seed: a random init would differ
    classifier = Classifier("resnet18", spec.num_classes)
    init = tmp_path / "classifier.pt"
    save_model(init, "classifier", classifier, _settings("classifier"), spec.num_classes)
    with pytest.raises(ConfigError, match="deeplab.init_from_classifier: no classifier"):
        _train(spec, tmp_path / "none", None, init_from_classifier="baseline")
    job = TrainingJob(tmp_path / "m.pt", tmp_path / "c.csv", tmp_path / "state")
    settings = _settings(init_from_classifier="baseline", lr=1e-12)
    train_deeplab(spec, settings, compute=COMPUTE, label_dirs=None, init_model=init, job=job)
    trained = load_model(job.out_model).backbone.state_dict()
    for key, value in classifier.backbone.state_dict().items():
        if "running" not in key and "num_batches" not in key:  # BN statistics move in training
            torch.testing.assert_close(trained[key], value, msg=key)

"""Backbone, classifier, puzzle wrapper and the model file format, on tiny CPU inputs."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from pcam.errors import ConfigError, DataError
from pcam.models import load_model, save_model
from pcam.models.backbone import FixedBatchNorm2d, create_backbone
from pcam.models.classifier import Classifier, PuzzleClassifier
from pcam.puzzle import merge, tile

torch.set_num_threads(1)

SETTINGS = {"backbone": "resnet18", "pretrained": False, "output_stride": 16, "norm": "bn"}


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    torch.manual_seed(0)
    return Classifier("resnet18", 3)


def test_classifier_shapes_and_stride_16(classifier):
    logits, cams = classifier.eval()(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3)
    assert cams.shape == (2, 3, 4, 4)  # 64 / 16
    assert classifier.output_stride == 16
    torch.testing.assert_close(logits, cams.mean(dim=(2, 3)))  # GAP of the raw CAMs
    assert (cams < 0).any()  # raw head output: no ReLU


def test_head_is_a_bias_free_1x1_conv(classifier):
    head = classifier.head
    assert isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1)
    assert head.bias is None
    assert head.in_channels == 512 and head.out_channels == 3


def test_parameter_groups_cover_every_parameter_once(classifier):
    groups = classifier.parameter_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in classifier.parameters()}
    head_group = [g for g in groups if any(p is classifier.head.weight for p in g["params"])]
    assert len(head_group) == 1 and head_group[0]["lr_mult"] == 10


def test_puzzle_classifier_runs_full_and_tiles_through_one_network(classifier):
    puzzle = PuzzleClassifier(classifier, 4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = puzzle(x)
        tiled_logits, tiled_cams = classifier(tile(x, 4))
        logits, cams = classifier(x)
    assert out["tiled_logits"].shape == (8, 3)
    assert out["merged_cams"].shape == out["cams"].shape == (2, 3, 4, 4)
    torch.testing.assert_close(out["tiled_logits"], tiled_logits)
    torch.testing.assert_close(out["merged_cams"], merge(tiled_cams, 4))
    torch.testing.assert_close(out["logits"], logits)
    torch.testing.assert_close(out["cams"], cams)
    assert puzzle.parameter_groups()[0]["params"]  # delegated to the classifier


def test_puzzle_rejects_sizes_whose_tiles_do_not_line_up(classifier):
    with pytest.raises(ValueError, match="divisible by 32"):
        PuzzleClassifier(classifier, 4).eval()(torch.randn(1, 3, 80, 80))
    with pytest.raises(ValueError, match="perfect square"):
        PuzzleClassifier(classifier, 2)


def test_frozen_bn_uses_running_statistics_and_keeps_affine_trainable():
    torch.manual_seed(0)
    plain = create_backbone("resnet18", out_indices=(4,))
    frozen = create_backbone("resnet18", out_indices=(4,), frozen_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert set(plain.state_dict()) == set(frozen.state_dict())  # same checkpoint keys
    frozen.load_state_dict(plain.state_dict())
    bn = next(m for m in frozen.modules() if isinstance(m, FixedBatchNorm2d))
    assert bn.weight.requires_grad and bn.bias.requires_grad
    before = bn.running_mean.clone()
    x = torch.randn(2, 3, 32, 32)
    frozen.train()(x)  # train mode: still no statistics update, same output as eval
    assert torch.equal(bn.running_mean, before)
    torch.testing.assert_close(frozen(x)[0], plain.eval()(x)[0])
    # SyncBN conversion (DDP) must leave the fixed layers alone
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(frozen)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())


def test_local_weights_file_is_loaded_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(1)
    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)  # a different random init, so only the file can make them equal
    backbone = create_backbone("resnet18", pretrained=str(path))
    weights = torch.load(path, weights_only=True)
    loaded = backbone.state_dict()
    assert len(loaded) > 50
    for key, value in loaded.items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0, msg=key)


def test_missing_weights_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.pth"):
        create_backbone("resnet18", pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="unknown timm model"):
        create_backbone("resnet_does_not_exist")


def test_resnest50d_constructs_at_output_stride_16():
    backbone = create_backbone("resnest50d", output_stride=16)
    assert backbone.feature_info.reduction() == [4, 8, 16, 16]
    assert backbone.feature_info.channels()[-1] == 2048


def test_save_and_load_round_trip(tmp_path, classifier):
    path = tmp_path / "model.pt"
    save_model(path, "classifier", classifier, SETTINGS, 3)
    restored = load_model(path)
    assert isinstance(restored, Classifier) and not restored.training
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(restored(x)[1], classifier.eval()(x)[1])
    payload = torch.load(path, weights_only=True)
    assert payload["kind"] == "classifier" and payload["num_classes"] == 3


def test_load_model_errors_name_the_file(tmp_path, classifier):
    with pytest.raises(DataError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="corrupt.pt"):
        load_model(bad)
    other = tmp_path / "other.pt"
    torch.save({"kind": "classifier", "weights": 1}, other)
    with pytest.raises(DataError, match="other.pt"):
        load_model(other)
    wrong = tmp_path / "wrong.pt"
    save_model(wrong, "classifier", classifier, SETTINGS, 3)
    payload = torch.load(wrong, weights_only=True)
    payload["num_classes"] = 5
    torch.save(payload, wrong)
    with pytest.raises(DataError, match="wrong.pt"):
        load_model(wrong)
    with pytest.raises(ValueError, match="unknown model kind"):
        save_model(tmp_path / "x.pt", "resnet", classifier, SETTINGS, 3)

"""The AffinityNet stage: the loss closure and the classifier-initialised frozen backbone."""

from __future__ import annotations

import pytest
import torch

from pcam.errors import ConfigError, DataError
from pcam.models import load_classifier_backbone, save_model
from pcam.models.affinitynet import AffinityNet
from pcam.models.classifier import Classifier
from pcam.stages.affinitynet import make_loss_fn

torch.set_num_threads(1)


def test_backbone_starts_from_the_classifier_with_its_bn_statistics(tmp_path):
    torch.manual_seed(0)
    classifier = Classifier("resnet18", 5)
    with torch.no_grad():
        classifier.backbone.bn1.running_mean.fill_(0.25)  # as if trained
    settings = {"backbone": "resnet18", "pretrained": False, "output_stride": 16, "norm": "bn"}
    save_model(tmp_path / "c.pt", "classifier", classifier, settings, 5)
    model = AffinityNet("resnet18")
    load_classifier_backbone(model, tmp_path / "c.pt")
    for key, value in classifier.backbone.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[key], value, msg=key)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    aff_settings = {"backbone": "resnet18", "pretrained": False}
    save_model(tmp_path / "a.pt", "affinitynet", model, aff_settings, 5)
    with pytest.raises(DataError, match="not a classifier"):
        load_classifier_backbone(model, tmp_path / "a.pt")


def test_loss_closure_gives_a_finite_loss_with_gradients_on_the_head_only():
    torch.manual_seed(0)
    model = AffinityNet("resnet18")
    loss_fn = make_loss_fn(radius=5, crop_size=64)
    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[:, 16:48, 16:48] = 3
    mask[:, 30:34] = 255
    loss, terms = loss_fn(model, {"image": torch.randn(2, 3, 64, 64), "mask": mask}, 0.5)
    loss.backward()
    assert torch.isfinite(loss) and set(terms) == {"bg", "fg", "neg"}
    assert model.fuse.weight.grad is not None
    with pytest.raises(ConfigError, match="radius 10"):
        make_loss_fn(radius=10, crop_size=64)

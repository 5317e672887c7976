"""One folder of offline ImageNet weights for all three networks (`pretrained_dir`), and the
`classifier.from_checkpoint` key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
import yaml

from pcam.config import load_config, stage_settings, validate_config, validate_stage
from pcam.errors import ConfigError
from pcam.models.backbone import create_backbone

ROOT = Path(__file__).resolve().parent.parent
NETWORKS = ("classifier", "affinitynet", "deeplab")


@pytest.fixture
def weights_dir(tmp_path) -> tuple[Path, dict]:
    """A folder holding resnet18.pth: a randomly initialised timm resnet18's state dict."""
    torch.manual_seed(1)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(state, folder / "resnet18.pth")
    return folder, state


def test_backbone_loads_its_file_from_the_folder(weights_dir):
    folder, state = weights_dir
    torch.manual_seed(2)  # a different random init, which the file must overwrite
    backbone = create_backbone("resnet18", pretrained=str(folder), out_indices=(4,))
    loaded = backbone.state_dict()
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])
    assert torch.equal(loaded["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])


def test_a_folder_without_the_backbone_names_what_it_looked_for(weights_dir):
    folder, _ = weights_dir
    with pytest.raises(ConfigError, match=r"resnet34\.safetensors, resnet34\.pth, resnet34\.bin"):
        create_backbone("resnet34", pretrained=str(folder))


def _voc(overrides: dict) -> dict:
    voc = yaml.safe_load((ROOT / "config" / "voc.yaml").read_text())
    return load_config(ROOT / "config" / "config.yaml", {**voc, **overrides})


def test_one_key_reaches_every_network_that_asks_for_imagenet_weights():
    cfg = _voc({"pretrained_dir": "/weights"})
    for experiment in cfg["experiments"]:
        for network in NETWORKS:
            assert stage_settings(cfg, experiment, network)["pretrained"] == "/weights"
    assert stage_settings(_voc({}), "puzzle", "classifier")["pretrained"] is True


def test_pretrained_false_and_explicit_files_are_left_alone():
    cfg = load_config(ROOT / "config" / "config.yaml", {"pretrained_dir": "/weights"})
    assert stage_settings(cfg, "puzzle", "classifier")["pretrained"] is False  # the demo
    cfg = _voc({"pretrained_dir": "/weights", "deeplab": {"pretrained": "/mine.pth"}})
    assert stage_settings(cfg, "puzzle", "deeplab")["pretrained"] == "/mine.pth"


def test_from_checkpoint_key_is_validated():
    base = load_config(ROOT / "config" / "config.yaml")
    assert stage_settings(base, "puzzle", "classifier")["from_checkpoint"] is None
    ok = copy.deepcopy(base)
    ok["classifier"]["from_checkpoint"] = "imported/classifier.pt"
    validate_config(ok)
    validate_stage("classifier", stage_settings(ok, "puzzle", "classifier"))
    for bad in (5, "", True):
        cfg = copy.deepcopy(base)
        cfg["classifier"]["from_checkpoint"] = bad
        with pytest.raises(ConfigError, match="classifier.from_checkpoint"):
            validate_config(cfg)
    cfg = copy.deepcopy(base)
    cfg["pretrained_dir"] = 3
    with pytest.raises(ConfigError, match="pretrained_dir"):
        validate_config(cfg)

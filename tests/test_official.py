"""`pcam import-checkpoint`: every key of the official layouts (fixtures of names and shapes)
finds a place in our models with nothing left over, and export -> import round trips exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pcam.cli import main
from pcam.errors import ConfigError, DataError
from pcam.models import _model_class, load_model
from pcam.models.official import (
    adopt_imported,
    check_fit,
    import_checkpoint,
    model_settings,
    official_to_pcam,
    pcam_to_official,
)

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "official").glob("*.json"))


def _fixture(path: Path) -> dict:
    return json.loads(path.read_text())


def _fake_state(keys: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Zero tensors of the fixture's shapes (zero-stride views: no memory for ResNeSt-101)."""
    return {
        k: torch.zeros((), dtype=torch.int64 if k.startswith("path_") else torch.float32).expand(s)
        for k, s in keys.items()
    }


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_every_official_key_is_placed_and_nothing_is_left_over(path):
    fixture = _fixture(path)
    kind, backbone = fixture["kind"], fixture["pcam_backbone"]
    mapped = official_to_pcam(kind, _fake_state(fixture["keys"]))
    settings, num_classes = model_settings(kind, backbone, mapped)
    with torch.device("meta"):
        ours = _model_class(kind).from_settings(settings, num_classes).state_dict()
    check_fit(kind, mapped, ours)  # raises on anything missing, extra or of another shape
    assert set(mapped) == set(ours)


def _randomised(kind: str, backbone: str, num_classes: int) -> tuple[torch.nn.Module, dict]:
    settings = {
        "classifier": {"backbone": backbone, "pretrained": False, "output_stride": 16,
                       "norm": "bn"},
        "affinitynet": {"backbone": backbone, "pretrained": False},
        "deeplab": {"backbone": backbone, "pretrained": False, "output_stride": 16,
                    "norm": "frozen", "network": "deeplabv3plus",
                    "head_channels": 256, "aspp_rates": [6, 12, 18]},
    }[kind]  # fmt: skip
    torch.manual_seed(0)
    model = _model_class(kind).from_settings(settings, num_classes)
    for name, buffer in model.named_buffers():  # BN statistics that differ from the defaults
        if name.endswith(("running_mean", "running_var")):
            buffer.copy_(torch.rand_like(buffer) + 0.5)
    return model.eval(), settings


@pytest.mark.parametrize(
    ("kind", "num_classes"), [("classifier", 20), ("affinitynet", 21), ("deeplab", 21)]
)
def test_export_then_import_gives_identical_outputs(tmp_path, kind, num_classes):
    model, _ = _randomised(kind, "resnet50", num_classes)
    exported = pcam_to_official(kind, model.state_dict())
    fixture = _fixture(Path(__file__).parent / "fixtures" / "official" / f"{kind}-resnet50.json")
    official_keys = {k for k in fixture["keys"] if not k.startswith("path_indices_")}
    assert set(exported) == official_keys  # the export is the official layout, aliases included
    official = tmp_path / "official.pth"
    torch.save(exported, official)
    out = tmp_path / "model.pt"
    args = ["import-checkpoint", "--official", str(official), "--kind", kind]
    assert main([*args, "--backbone", "resnet50", "--out", str(out)]) == 0
    imported = load_model(out, kind=kind)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        expected, got = model(x), imported(x)
    for a, b in zip(expected if isinstance(expected, tuple) else [expected],
                    got if isinstance(got, tuple) else [got], strict=True):  # fmt: skip
        assert torch.equal(a, b)


@pytest.fixture
def official_classifier(tmp_path) -> tuple[Path, dict]:
    model, _ = _randomised("classifier", "resnet18", 3)
    state = pcam_to_official("classifier", model.state_dict())
    path = tmp_path / "official.pth"
    torch.save(state, path)
    return path, state


def test_refuses_what_it_cannot_place(tmp_path, official_classifier):
    path, state = official_classifier
    out = tmp_path / "m.pt"

    def refused(change: dict, match: str) -> None:
        torch.save(change, path)
        with pytest.raises(DataError, match=match):
            import_checkpoint(path, "classifier", "resnet18", out)
        assert not out.exists()

    refused(
        {**state, "projector.weight": torch.zeros(3)}, r"official\.pth: 1 official key.*projector"
    )
    gone = ("model.layer3.0.conv1.weight", "stage4.0.0.conv1.weight")  # the tensor and its alias
    missing = {k: v for k, v in state.items() if k not in gone}
    refused(missing, "ours left unfilled.*backbone.layer3.0.conv1.weight")
    refused({**state, "stage1.0.weight": state["model.conv1.weight"] + 1}, "disagree")
    torch.save(state, path)
    with pytest.raises(DataError, match="does not fit a pcam classifier: ours left unfilled"):
        import_checkpoint(path, "classifier", "resnet34", out)


def test_refuses_a_batchnorm_deeplab_head_with_a_hint():
    keys = dict(
        _fixture(Path(__file__).parent / "fixtures" / "official" / "deeplab-resnet50.json")["keys"]
    )
    keys["aspp.aspp1.bn.running_mean"] = [256]
    mapped = official_to_pcam("deeplab", _fake_state(keys))
    settings, n = model_settings("deeplab", "resnet50", mapped)
    with torch.device("meta"):
        ours = _model_class("deeplab").from_settings(settings, n).state_dict()
    with pytest.raises(DataError, match="use_gn False"):
        check_fit("deeplab", mapped, ours)


def test_adopt_imported_checks_kind_and_backbone(tmp_path, official_classifier):
    path, _ = official_classifier
    model_file = tmp_path / "imported.pt"
    import_checkpoint(path, "classifier", "resnet18", model_file)
    out = tmp_path / "results" / "classifier" / "model.pt"
    with pytest.raises(ConfigError, match="holds a resnet18 classifier.*backbone is resnet50"):
        adopt_imported(model_file, "classifier", {"backbone": "resnet50"}, out)
    with pytest.raises(DataError, match="not a affinitynet model file"):
        adopt_imported(model_file, "affinitynet", {"backbone": "resnet18"}, out)
    adopt_imported(model_file, "classifier", {"backbone": "resnet18"}, out)
    assert out.read_bytes() == model_file.read_bytes()


def test_imported_file_records_backbone_and_classes(tmp_path, official_classifier):
    path, state = official_classifier
    out = tmp_path / "m.pt"
    assert import_checkpoint(path, "classifier", "resnet18", out) == len(state) // 2 + 1
    payload = torch.load(out, weights_only=True)
    assert payload["settings"]["backbone"] == "resnet18" and payload["num_classes"] == 3

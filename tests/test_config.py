"""The schema rejects bad config, naming the key; experiments merge onto stage defaults."""

import copy
from pathlib import Path

import pytest
import yaml

from pcam.config import load_config, stage_settings, validate_config, validate_stage
from pcam.errors import ConfigError

CONFIG = Path(__file__).resolve().parent.parent / "config" / "config.yaml"


@pytest.fixture(scope="module")
def base() -> dict:
    with open(CONFIG) as fh:
        return yaml.safe_load(fh)


def test_shipped_config_is_valid(base):
    validate_config(copy.deepcopy(base))


def test_experiment_overrides_merge_deeply(base):
    cfg = validate_config(copy.deepcopy(base))
    assert stage_settings(cfg, "baseline", "classifier")["loss_terms"] == ["cls"]
    assert stage_settings(cfg, "puzzle", "classifier")["loss_terms"] == ["cls", "pcls", "re"]
    # The YAML anchor/merge keeps the label CRF parameters; only iterations differ (spec 4 / 7).
    pseudo = stage_settings(cfg, "puzzle", "pseudo_labels")["crf"]
    labels = stage_settings(cfg, "puzzle", "affinity_labels")["crf"]
    assert pseudo["iterations"] == 1 and labels["iterations"] == 10
    assert {k: v for k, v in pseudo.items() if k != "iterations"} == {
        k: v for k, v in labels.items() if k != "iterations"
    }


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"classifier": {"lr": -0.1}}, "classifier.lr"),
        ({"classifier": {"learning_rate": 0.1}}, "learning_rate"),
        ({"rw": {"beta": "ten"}}, "rw.beta"),
        ({"classifier": {"num_pieces": 3}}, "classifier.num_pieces"),
        ({"classifier": {"loss_terms": ["pcls", "re"]}}, "classifier.loss_terms"),
        ({"affinity_labels": {"fg_threshold": 1.5}}, "affinity_labels.fg_threshold"),
        ({"compute": {"mixed_precision": "fp8"}}, "compute.mixed_precision"),
        ({"cams": {"dtype": "int8"}}, "cams.dtype"),
        ({"classifier": {"momentum": "nesterov"}}, "classifier.momentum"),
        ({"experiments": {"bad": {"supervision": "semi"}}}, "experiments.bad.supervision"),
        (
            {"experiments": {"bad": {"supervision": "weak", "rw": {"exp_times": -1}}}},
            "experiments.bad.rw",
        ),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(patch, key):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG, patch)
    assert key in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_stage_validation_for_cli(base):
    settings = stage_settings(validate_config(copy.deepcopy(base)), "puzzle", "rw")
    assert validate_stage("rw", settings) is settings
    with pytest.raises(ConfigError, match="method"):
        validate_stage("rw", {**settings, "method": "magic"})


def test_voc_config_restores_every_paper_value_the_demo_defaults_shrink():
    voc = yaml.safe_load((CONFIG.parent / "voc.yaml").read_text())
    cfg = load_config(CONFIG, overrides=voc)
    paper_scales = [0.5, 1.0, 1.5, 2.0]
    assert stage_settings(cfg, "puzzle", "cams")["scales"] == paper_scales
    assert stage_settings(cfg, "puzzle", "deeplab_inference")["scales"] == paper_scales
    classifier = stage_settings(cfg, "puzzle", "classifier")
    assert (classifier["backbone"], classifier["epochs"], classifier["crop_size"]) == (
        "resnest101e", 15, 512,
    )  # fmt: skip
    assert stage_settings(cfg, "puzzle", "deeplab")["epochs"] == 50
    assert stage_settings(cfg, "puzzle", "affinitynet")["radius"] == 10
    assert stage_settings(cfg, "puzzle", "affinitynet")["init_from_classifier"] is False
    assert stage_settings(cfg, "puzzle", "rw")["exp_times"] == 8
    assert stage_settings(cfg, "puzzle", "deeplab")["norm"] == "frozen"
    assert stage_settings(cfg, "baseline", "classifier")["loss_terms"] == ["cls"]

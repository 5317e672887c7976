"""The schema rejects bad config, naming the key; experiments merge onto stage defaults."""

import copy
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pcam.cli import main
from pcam.config import (
    backbone_run,
    load_config,
    load_schema,
    parse_run,
    run_seed,
    runs,
    stage_settings,
    validate_compute,
    validate_config,
    validate_stage,
)
from pcam.errors import ConfigError
from tests.snakemake_runner import TINY, make_project, parse_job_list

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "config.yaml"


def _parts(node: dict) -> list[dict]:
    """A schema node with its `$ref` resolved, plus every part it takes in (`allOf`, `then`)."""
    while "$ref" in node:
        node = load_schema()["$defs"][node["$ref"].rpartition("/")[2]]
    members = [*node.get("allOf", []), *([node["then"]] if "then" in node else [])]
    return [node, *(part for member in members for part in _parts(member))]


def required_paths(node: dict, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key path the schema requires, depth first (experiments' contents aside)."""
    parts = _parts(node)
    properties = {k: v for part in parts for k, v in part.get("properties", {}).items()}
    for key in dict.fromkeys(k for part in parts for k in part.get("required", [])):
        yield (*prefix, key)
        if key in properties:
            yield from required_paths(properties[key], (*prefix, key))


REQUIRED = list(required_paths(load_schema()))


def key_paths(tree: dict, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key path of a loaded YAML mapping."""
    for key, value in tree.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from key_paths(value, (*prefix, key))


def _at(cfg: dict, path: tuple[str, ...]):
    """The value at a key path."""
    for key in path:
        cfg = cfg[key]
    return cfg


def _without(cfg: dict, path: tuple[str, ...]) -> dict:
    out = copy.deepcopy(cfg)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return out


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
    assert (classifier["lr"], classifier["momentum"], classifier["batch_size"]) == (
        0.1, "official", 32,
    )  # fmt: skip
    deeplab = stage_settings(cfg, "puzzle", "deeplab")
    assert (deeplab["epochs"], deeplab["batch_size"], deeplab["resize_range"]) == (
        50, 32, [256, 1024],
    )  # fmt: skip
    assert stage_settings(cfg, "puzzle", "affinitynet")["radius"] == 10
    assert stage_settings(cfg, "puzzle", "affinitynet")["init_from_classifier"] is False
    assert stage_settings(cfg, "puzzle", "affinitynet")["side_kernel"] == 1
    assert stage_settings(cfg, "puzzle", "rw")["exp_times"] == 8
    assert stage_settings(cfg, "puzzle", "deeplab")["norm"] == "frozen"
    assert stage_settings(cfg, "puzzle", "pseudo_labels")["ignore_missing_tags"] is False
    assert stage_settings(cfg, "baseline", "classifier")["loss_terms"] == ["cls"]


def test_config_yaml_holds_exactly_the_required_keys(base):
    """Every default is written in config.yaml and the schema requires every key written there
    (an experiment's contents are its own: only `supervision` is required of each)."""
    written = {p for p in key_paths(base) if p[0] != "experiments" or len(p) == 1}
    assert len(REQUIRED) > 100
    assert set(REQUIRED) == written
    assert all(exp["supervision"] for exp in base["experiments"].values())


@pytest.mark.parametrize("path", REQUIRED, ids=".".join)
def test_each_required_key_missing_is_named(base, path):
    key = ".".join(path)
    with pytest.raises(ConfigError, match=re.escape(f"{key}: required key is missing")):
        validate_config(_without(base, path))


def test_an_experiment_needs_its_supervision(base):
    cfg = _without(base, ("experiments", "puzzle", "supervision"))
    with pytest.raises(ConfigError, match="experiments.puzzle.supervision: required key"):
        validate_config(cfg)


def test_every_key_of_config_yaml_is_commented():
    """Each key carries a comment on its line, or on the line above (meaning, unit, paper)."""
    lines = CONFIG.read_text().splitlines()
    key = re.compile(r"^\s*(?:[A-Za-z_][\w-]*|<<):(.*)$")
    bare = [
        line
        for i, line in enumerate(lines)
        if (m := key.match(line))
        and "#" not in m.group(1)
        and not lines[i - 1].lstrip().startswith("#")
    ]
    assert bare == []


def test_schema_is_plain_json_schema_without_defaults():
    """Standard 2020-12 keywords only (no home-made `x-` ones) and no `default:` anywhere:
    config.yaml is the one place defaults live."""
    found: list[str] = []

    def walk(node, path):
        if isinstance(node, dict):
            found.extend(f"{path}.{k}" for k in node if k == "default" or k.startswith("x-"))
            for k, v in node.items():
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(load_schema(), "")
    assert found == []


def test_overrides_merge_into_sections_and_need_not_repeat_keys(base):
    cfg = copy.deepcopy(base)
    cfg["experiments"]["short"] = {"supervision": "weak", "rw": {"radius": 3}}
    assert stage_settings(validate_config(cfg), "short", "rw") == {**base["rw"], "radius": 3}
    cfg["experiments"]["short"]["rw"] = {"radius": 3, "radious": 4}
    with pytest.raises(ConfigError, match="experiments.short.rw.radious: unknown key"):
        validate_config(cfg)


OVERLAYS = [TINY, *(CONFIG.parent / f for f in ("voc.yaml", "demo-tools.yaml", "demo-seeds.yaml"))]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlays_on_config_yaml_validate(overlay):
    cfg = load_config(CONFIG, yaml.safe_load(overlay.read_text()))
    assert cfg["compute"]["cam_shards"] >= 1


def test_demo_tools_overlay_changes_only_the_style_and_where_things_go():
    """The second demo dataset runs with the demo's settings (issue 9 C): the overlay may only
    change the generator's style and the data, results and logs folders (none shared)."""
    base = load_config(CONFIG)
    cfg = load_config(CONFIG, yaml.safe_load((CONFIG.parent / "demo-tools.yaml").read_text()))
    leaves = {p for p in key_paths(cfg) if not isinstance(_at(cfg, p), dict)}
    changed = {p for p in leaves if _at(cfg, p) != _at(base, p)}
    assert changed == {("results_dir",), ("logs_dir",), ("dataset", "root"), ("demo", "style")}
    assert cfg["demo"]["style"] != base["demo"]["style"]


def test_unknown_key_in_a_training_section_is_named_alone(base):
    """The shared training keys come in through allOf: a bad one does not make the others look
    unknown (unevaluatedProperties), and a misspelt key is named."""
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG, {"deeplab": {"lr": -1, "learing_rate": 0.1}})
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == 2
    assert "deeplab.learing_rate: unknown key" in lines[0]
    assert "deeplab.lr: " in lines[1]


def test_compute_is_validated(base):
    assert validate_compute(copy.deepcopy(base["compute"])) == base["compute"]
    with pytest.raises(ConfigError, match="--compute: compute.cam_shards: required key"):
        validate_compute(_without(base, ("compute", "cam_shards"))["compute"])
    with pytest.raises(ConfigError, match="compute.mixed_precision"):
        validate_compute({**base["compute"], "mixed_precision": "fp8"})


def test_cli_refuses_bad_compute_before_anything_runs(base, tmp_path, capsys):
    out = tmp_path / "cams"
    settings = stage_settings(validate_config(copy.deepcopy(base)), "puzzle", "cams")
    compute = _without(base, ("compute", "num_workers"))["compute"]
    argv = [
        "make-cams", "--dataset", json.dumps({"root": str(tmp_path / "data")}),
        "--settings", json.dumps(settings), "--compute", json.dumps(compute),
        "--model", str(tmp_path / "no-model.pt"), "--split", "train", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 2
    assert "compute.num_workers: required key is missing" in capsys.readouterr().err
    assert not out.exists()


def test_snakemake_stops_before_any_job_when_a_key_is_missing(base, tmp_path):
    """A dry run of the real workflow fails naming the key, and plans (and runs) nothing."""
    project = make_project(tmp_path)
    broken = _without(base, ("rw", "radius"))
    (project.root / "config" / "config.yaml").write_text(yaml.safe_dump(broken))
    assert validate_config(yaml.safe_load(yaml.safe_dump(base)))  # the same file, key kept
    proc = subprocess.run(
        project.command("-n", "--cores", "1"),
        env=project.env, cwd=project.work, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "rw.radius: required key is missing" in output
    assert parse_job_list(output) == []
    assert sorted(p.name for p in project.work.iterdir()) in ([], [".snakemake"])


def test_installed_wheel_ships_the_schema(tmp_path):
    """A non-editable install (a built wheel, installed into a bare folder) validates config."""
    pytest.importorskip("setuptools")  # the build backend, used without build isolation (offline)
    src = tmp_path / "src"
    shutil.copytree(REPO / "pcam", src / "pcam", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")]
    subprocess.run([*build, str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("pcam-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    shutil.rmtree(src)  # nothing of the source tree is left to read the schema from
    check = (
        "import sys, pcam, pcam.config as c; "
        "assert pcam.__file__.startswith(sys.argv[1]), pcam.__file__; "
        "c.load_config(sys.argv[2]); print(c.SCHEMA_FILE)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", check, str(site), str(CONFIG)],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)},
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(site / "pcam" / "schemas"))


def _with_seeds(base: dict, seeds: list[int] | None) -> dict:
    cfg = copy.deepcopy(base)
    if seeds is not None:
        cfg["experiments"]["puzzle"]["seeds"] = seeds
    return validate_config(cfg)


def test_one_seed_or_none_keeps_the_runs_and_zero_keeps_every_setting(base):
    plain, zero = _with_seeds(base, None), _with_seeds(base, [0])
    assert runs(plain) == runs(zero) == ["puzzle", "baseline", "full"]
    for section in ("classifier", "cams", "affinitynet", "rw", "deeplab", "deeplab_inference"):
        assert stage_settings(zero, "puzzle", section) == stage_settings(plain, "puzzle", section)
    three = _with_seeds(base, [3])
    assert runs(three) == runs(plain) and run_seed(three, "puzzle") == 3
    assert stage_settings(three, "puzzle", "deeplab")["seed"] == base["deeplab"]["seed"] + 3


def test_several_seeds_are_one_run_each_with_every_stage_seed_offset(base):
    cfg = copy.deepcopy(base)
    cfg["classifier"]["seed"] = 10  # an offset: the section's own seed is kept under it
    cfg = _with_seeds(cfg, [0, 2])
    assert runs(cfg) == ["puzzle/seed-0", "puzzle/seed-2", "baseline", "full"]
    assert runs(cfg, "weak") == ["puzzle/seed-0", "puzzle/seed-2", "baseline"]
    assert parse_run("puzzle/seed-2") == ("puzzle", 2) and parse_run("full") == ("full", None)
    seeds = {s: stage_settings(cfg, "puzzle/seed-2", s)["seed"] for s in
             ("classifier", "affinitynet", "deeplab")}  # fmt: skip
    assert seeds == {"classifier": 12, "affinitynet": 2, "deeplab": 2}
    assert "seed" not in stage_settings(cfg, "puzzle/seed-2", "cams")
    with pytest.raises(ConfigError, match="not an experiment run"):
        parse_run("puzzle/seed-x")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"seeds": []}, "experiments.puzzle.seeds"),
        ({"seeds": [1, 1]}, "experiments.puzzle.seeds: .* non-unique"),
        ({"seeds": [-1]}, "experiments.puzzle.seeds.0"),
    ],
)
def test_bad_seeds_are_refused_naming_the_key(base, change, match):
    cfg = copy.deepcopy(base)
    cfg["experiments"]["puzzle"].update(change)
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)


def test_an_experiment_may_not_be_named_like_a_seed_folder(base):
    cfg = copy.deepcopy(base)
    cfg["experiments"]["seed-1"] = {"supervision": "weak"}
    with pytest.raises(ConfigError, match="experiments: 'seed-1' does not match"):
        validate_config(cfg)


@pytest.mark.parametrize("section", ["affinitynet", "deeplab"])
def test_a_backbone_comes_from_the_named_experiment_for_every_run(base, section):
    cfg = _with_seeds(copy.deepcopy(base), [0, 2])  # puzzle runs two seeds, baseline one
    assert base[section]["init_from_classifier"] == "baseline"
    every = runs(cfg) if section == "deeplab" else runs(cfg, "weak")  # full has no AffinityNet
    assert {backbone_run(cfg, run, section) for run in every} == {"baseline"}
    cfg["experiments"]["baseline"]["seeds"] = [5, 6]  # the named experiment's first run
    assert backbone_run(cfg, "puzzle/seed-2", section) == "baseline/seed-5"
    cfg[section]["init_from_classifier"] = True  # each run its own classifier
    assert backbone_run(cfg, "puzzle/seed-2", section) == "puzzle/seed-2"
    cfg[section]["init_from_classifier"] = False  # the `pretrained` weights: no classifier
    assert backbone_run(cfg, "puzzle/seed-2", section) is None


@pytest.mark.parametrize(
    ("section", "value", "who"),
    [
        ("affinitynet", "full", "puzzle"),
        ("affinitynet", "nosuch", "puzzle"),
        ("deeplab", "full", "puzzle"),
        ("deeplab", True, "full"),  # the fully supervised experiment trains no classifier
    ],
)
def test_a_backbone_source_without_a_classifier_is_refused(base, section, value, who):
    cfg = copy.deepcopy(base)
    cfg[section]["init_from_classifier"] = value
    name = "full" if value is True else value
    match = f"experiments.{who}: {section}.init_from_classifier: '{name}' is not a weakly"
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)

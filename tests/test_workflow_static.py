"""The workflow's rules against the stage table, the schema and both profiles, without running a
job: every rule has its threads, retries, resources and a profile entry; every profile key is in
force as written (nothing auto-applied overrides it); compute keys are classified."""

from __future__ import annotations

import re

import pytest
import yaml

from pcam.config import load_schema
from pcam.fingerprint import EXECUTION_COMPUTE_KEYS, RESULT_COMPUTE_KEYS, result_compute
from pcam.pipeline import SECTIONS, SUPERVISIONS, scored_stages
from tests.snakemake_runner import REPO

RULES_DIR = REPO / "workflow" / "rules"
PROFILES = REPO / "workflow" / "profiles"
TRAINING = {"train_classifier", "train_affinitynet", "train_deeplab"}
TORCH = TRAINING | {"make_cams", "make_rw", "infer_deeplab"}
_RULE = re.compile(r"^(\s*)rule (\w+):\s*$")


def _rules() -> dict[str, str]:
    """Rule name -> the text of its block, from every workflow/rules/*.smk and the Snakefile."""
    rules: dict[str, str] = {}
    for path in [REPO / "workflow" / "Snakefile", *sorted(RULES_DIR.glob("*.smk"))]:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            match = _RULE.match(line)
            if not match:
                continue
            indent, body = len(match.group(1)), []
            for nxt in lines[i + 1 :]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                body.append(nxt)
            rules[match.group(2)] = "\n".join(body)
    return rules


RULES = _rules()
JOB_RULES = {name: body for name, body in RULES.items() if "shell:" in body}


def _profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def test_the_rules_are_the_expected_ones():
    assert set(JOB_RULES) == {
        "demo_data", "check_data", "train_classifier", "make_cams", "eval_cams",
        "make_affinity_labels", "train_affinitynet", "make_rw", "eval_rw",
        "make_pseudo_labels", "eval_pseudo_labels", "train_deeplab", "infer_deeplab",
        "eval_deeplab", "provenance", "summary", "summary_page", "per_class_figure",
        "curves_figure", "gallery_figure", "val_gallery_figure",
    }  # fmt: skip


@pytest.mark.parametrize("rule", sorted(JOB_RULES))
def test_every_rule_declares_threads_and_only_training_is_retried(rule):
    body = JOB_RULES[rule]
    assert re.search(r"^\s+threads: \S+", body, re.M), f"{rule}: no threads:"
    if rule in TRAINING:
        # retries come from the profile: a retry resumes from the checkpoint
        assert "retries:" not in body
    else:
        # bad data or config fails the same way twice (pcam exits 2): never retried
        assert re.search(r"^\s+retries: 0$", body, re.M), f"{rule}: needs retries: 0"
    if rule in TORCH:
        assert "gpu=GPUS" in body, f"{rule}: GPUs come from compute.gpus_per_job"
        assert "result=result_keys(" in body and "compute=compute_json" in body
    else:
        assert "gpu=" not in body


@pytest.mark.parametrize("rule", sorted(JOB_RULES))
def test_every_shell_value_is_quoted_or_safe(rule):
    """Paths are quoted with :q; unquoted fields are numbers, constants, threads or strings
    built with shlex (params.args/labels/init) and split names restricted by the schema."""
    shell = JOB_RULES[rule].split("shell:", 1)[1]
    fields = re.findall(r"\{([^{}:]+)(:q)?\}", shell)
    safe = {
        "threads", "wildcards.shard", "params.n_shards", "params.n_images", "params.n_train",
        "params.n_val", "params.size", "params.seed", "params.args", "params.labels",
        "params.init", "params.server", "params.masks",
    }  # fmt: skip
    unquoted = {name for name, quoted in fields if not quoted and name not in safe}
    assert not unquoted, f"{rule}: unquoted {unquoted}"


def test_settings_sections_are_the_stage_tables():
    schema = load_schema()
    used = {s for body in JOB_RULES.values() for s in re.findall(r'settings\("(\w+)"\)', body)}
    assert used == set(SECTIONS)
    for section in SECTIONS:
        assert section in schema["$defs"] and section in schema["properties"]


def test_every_scored_stage_has_its_evaluation_rule():
    outputs = {
        rule: re.findall(r'/eval/(\{\{stage\}\}|\w+)\.csv"', body)
        for rule, body in JOB_RULES.items()
        if rule.startswith("eval_")
    }
    assert outputs == {
        "eval_cams": ["cam"],
        "eval_rw": ["rw"],
        "eval_pseudo_labels": ["{{stage}}"],
        "eval_deeplab": ["{{stage}}"],
    }
    names = {s.name for sup in SUPERVISIONS for s in scored_stages(sup)}
    fixed = {"cam", "rw"}
    pseudo = {"rw_crf", "rw_crf_aug"}  # eval_pseudo_labels' wildcard, from the table's source
    assert fixed | pseudo <= names
    assert {s.name for sup in SUPERVISIONS for s in scored_stages(sup)
            if s.source == "pseudo_labels"} == pseudo  # fmt: skip
    # the rest are the segmentation rows that eval_deeplab's wildcard takes from the table
    assert all(n.startswith("deeplab") for n in names - fixed - pseudo)


def test_slurm_profile_covers_every_rule():
    profile = _profile("slurm")
    assert set(profile["set-resources"]) == set(JOB_RULES)
    for rule, resources in profile["set-resources"].items():
        assert "gpu" not in resources, f"{rule}: GPUs come from compute.gpus_per_job, not here"
        if rule in TRAINING:
            assert "attempt" in str(resources["runtime"]), f"{rule}: a retry needs more time"
    for key in ("slurm_partition", "slurm_account", "mem_mb", "runtime", "cpus_per_task"):
        assert key in profile["default-resources"]


def test_workstation_profile_has_what_a_local_run_needs():
    profile = _profile("workstation")
    assert profile["rerun-incomplete"] is True
    assert profile["default-resources"] == {"gpu": 0}
    assert "executor" not in profile and "set-resources" not in profile


def test_no_profile_is_applied_behind_the_users_back():
    """Snakemake applies profiles/default (beside the Snakefile or in the working directory)
    on top of any --profile, key by key."""
    for where in (REPO / "workflow", REPO):
        assert not (where / "profiles" / "default").exists()


def _resolved(*argv: str):
    from snakemake.cli import parse_args

    return parse_args(["-s", str(REPO / "workflow" / "Snakefile"), *argv])[1]


def _raw(resources: dict) -> dict:
    return {k: str(v.raw) for k, v in resources.items()}


@pytest.mark.parametrize("name", ["slurm", "workstation"])
def test_every_profile_key_is_in_force(name, monkeypatch):
    """What Snakemake resolves from `--profile workflow/profiles/NAME` alone equals the file,
    key by key: no other profile overrides any of them."""
    monkeypatch.chdir(REPO)
    args = _resolved("--profile", str(PROFILES / name))
    assert args.workflow_profile is None
    for key, value in _profile(name).items():
        got = getattr(args, key.replace("-", "_"))
        if key == "default-resources":
            resolved = _raw(got)
            assert {k: resolved[k] for k in value} == {k: str(v) for k, v in value.items()}
        elif key == "set-resources":
            assert {r: _raw(v) for r, v in got.items()} == {
                r: {k: str(x) for k, x in v.items()} for r, v in value.items()
            }
        elif key == "resources":
            assert [f"{k}={v.raw}" for k, v in got.items()] == value
        else:
            assert got == value, f"{key}: resolved {got!r}, profile says {value!r}"


def test_compute_keys_are_classified():
    """Every compute key either changes results (reaches params) or does not (never does)."""
    keys = set(load_schema()["$defs"]["compute"]["properties"])
    result = {k for role in RESULT_COMPUTE_KEYS.values() for k in role}
    assert result | set(EXECUTION_COMPUTE_KEYS) == keys
    assert not result & set(EXECUTION_COMPUTE_KEYS)


def test_result_compute_keeps_what_changes_numbers():
    compute = {"device": "auto", "gpus_per_job": 2, "mixed_precision": "auto", "num_workers": 8,
               "cam_shards": 4, "crf_threads": 8, "torch_threads": 4,
               "compile_inference": False}  # fmt: skip
    assert result_compute(compute, "training") == {
        "device": "auto", "gpus_per_job": 2, "mixed_precision": "auto"
    }  # fmt: skip
    assert result_compute(compute, "inference") == {
        "device": "auto", "mixed_precision": "auto", "compile_inference": False, "on_gpu": True
    }  # fmt: skip
    assert result_compute({**compute, "gpus_per_job": 0}, "inference")["on_gpu"] is False
    assert result_compute({**compute, "device": "cpu"}, "inference")["on_gpu"] is False

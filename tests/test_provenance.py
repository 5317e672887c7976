"""Provenance: git state, the run record a compute job leaves, and the per-experiment file."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pcam import cli, provenance
from pcam.errors import DataError
from tests.snakemake_runner import commit_copy

COMPUTE = {"gpus_per_job": 1, "mixed_precision": "auto", "num_workers": 0, "cam_shards": 1,
           "crf_threads": 1}  # fmt: skip


def test_commit_and_dirty_flag_of_a_checkout(tmp_path):
    (tmp_path / "a.txt").write_text("one\n")
    sha = commit_copy(tmp_path)
    assert provenance.git_state(tmp_path) == {"commit": sha, "dirty": False}
    (tmp_path / "untracked.txt").write_text("not part of the code\n")
    assert provenance.git_state(tmp_path)["dirty"] is False
    (tmp_path / "a.txt").write_text("two\n")
    state = provenance.git_state(tmp_path)
    assert state == {"commit": sha, "dirty": True}
    assert provenance.commit_label(state) == f"{sha}-dirty"


def test_code_outside_a_checkout_or_inside_another_one_is_unknown(tmp_path):
    unknown = {"commit": "unknown", "dirty": None}
    assert provenance.git_state(tmp_path) == unknown
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.txt").write_text("x\n")
    commit_copy(tmp_path)
    assert provenance.git_state(tmp_path / "sub") == unknown  # top level is its parent
    assert provenance.commit_label(unknown) == "unknown"


def test_package_versions_name_every_package_asked_for():
    versions = provenance.package_versions(("torch", "snakemake", "no-such-package-xyz"))
    assert versions["no-such-package-xyz"] == "not installed"
    assert versions["torch"].startswith("2.") and versions["snakemake"][0].isdigit()
    assert set(provenance.PACKAGES) >= {"torch", "timm", "snakemake", "pydensecrf2"}


def test_run_record_of_a_cpu_job(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "results" / "e" / "cams" / "train" / "shard-0-of-2"
    out.mkdir(parents=True)
    path = provenance.write_run_record("make-cams", out, COMPUTE, "2026-01-01T00:00:00+00:00")
    assert path == out.parent / ".runs" / "shard-0-of-2.json"
    record = json.loads(path.read_text())
    assert record["device"] == "cpu" and record["precision"] == "fp32"
    assert record["peak_gpu_mb"] is None
    assert record["command"] == "make-cams" and record["output"] == str(out)
    assert record["started"] <= record["finished"] and record["peak_rss_mb"] > 0
    for key in ("commit", "dirty", "host", "cpus", "python", "packages", "world_size"):
        assert key in record, key
    bf16 = provenance.device_facts({**COMPUTE, "mixed_precision": "bf16"})
    assert bf16["precision"] == "bf16"


def test_only_rank_zero_writes_a_record(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    path = provenance.write_run_record("train-deeplab", tmp_path / "model.pt", COMPUTE, "t")
    assert not path.exists()


def _handle(monkeypatch, command: str, handler) -> None:
    """Let `handler` run `pcam command` (its row of the command table) for this test."""
    row = dataclasses.replace(cli.COMMANDS[command], handler=handler)
    monkeypatch.setitem(cli.COMMANDS, command, row)


def _stub(out_attr: str):
    def handler(a):
        Path(getattr(a, out_attr)).parent.mkdir(parents=True, exist_ok=True)
        Path(getattr(a, out_attr)).write_text("made\n")
        return 0

    return handler


def test_the_pcam_command_leaves_a_record_for_compute_jobs_only(tmp_path, monkeypatch):
    _handle(monkeypatch, "evaluate", _stub("out"))
    scores = tmp_path / "e" / "eval" / "cam.csv"
    assert cli.main(["evaluate", "--root", "x", "--split", "train", "--pred", "p",
                     "--out", str(scores)]) == 0  # fmt: skip
    assert scores.exists() and not provenance.record_path(scores).exists()  # no --compute
    _handle(monkeypatch, "train-deeplab", _stub("out_model"))
    model = tmp_path / "e" / "deeplab" / "model.pt"
    assert cli.main(["train-deeplab", "--dataset", '{"root": "x"}', "--settings", "{}",
                     "--compute", json.dumps(COMPUTE), "--out-model", str(model),
                     "--out-curve", "c.csv", "--state-dir", "s"]) == 0  # fmt: skip
    record = json.loads(provenance.record_path(model).read_text())
    assert record["command"] == "train-deeplab" and record["output"] == str(model)


def test_a_failed_job_leaves_no_record(tmp_path, monkeypatch):
    def fail(a):
        raise DataError("broken input")

    _handle(monkeypatch, "train-deeplab", fail)
    model = tmp_path / "model.pt"
    argv = ["train-deeplab", "--dataset", '{"root": "x"}', "--settings", "{}", "--compute",
            json.dumps(COMPUTE), "--out-model", str(model), "--out-curve", "c",
            "--state-dir", "s"]  # fmt: skip
    assert cli.main(argv) == 2
    assert not provenance.record_path(model).exists()


def _record(folder: Path, name: str, started: str, finished: str, **extra) -> Path:
    output = folder / name
    output.mkdir(parents=True, exist_ok=True)
    record = {"output": str(output), "started": started, "finished": finished, "device": "cpu",
              "precision": "fp32", "commit": "abc", "dirty": False, **extra}  # fmt: skip
    path = provenance.record_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return output


def test_experiment_provenance_gathers_the_jobs_that_made_its_outputs(tmp_path):
    exp = tmp_path / "results" / "puzzle"
    t0, t1 = "2026-01-01T10:00:00+00:00", "2026-01-01T10:05:00+00:00"
    _record(exp / "classifier", "model.pt", t0, t1)
    _record(exp / "cams" / "train", "shard-0-of-2", "2026-01-01T10:06:00+00:00",
            "2026-01-01T10:07:00+00:00", device="cuda", precision="fp16")  # fmt: skip
    gone = _record(exp / "cams" / "train", "shard-0-of-4", "2026-01-01T09:00:00+00:00", "x")
    shutil.rmtree(gone)  # an output no longer there: its record is not this run's
    settings = {"supervision": "weak", "classifier": {"lr": 0.1}}
    out = exp / "provenance.json"
    provenance.write_provenance("puzzle", settings, exp, out)
    data = provenance.read_provenance(out)
    assert data["experiment"] == "puzzle" and data["settings"] == settings
    assert [Path(j["output"]).name for j in data["jobs"]] == ["model.pt", "shard-0-of-2"]
    assert data["devices"] == ["cpu", "cuda"] and data["precisions"] == ["fp16", "fp32"]
    assert data["started"] == "2026-01-01T10:00:00+00:00"
    assert data["finished"] == "2026-01-01T10:07:00+00:00"
    assert data["job_commits"] == ["abc"]
    assert data["commit"] == provenance.git_state()["commit"]


def test_the_checkout_of_this_code_is_recorded():
    state = provenance.git_state()
    try:
        head = subprocess.run(
            ["git", "-C", str(provenance.CODE_ROOT), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("the code under test is not in a git checkout")
    if Path(head[0]).resolve() != provenance.CODE_ROOT:
        assert state["commit"] == "unknown"
    else:
        assert state["commit"] == head[1]


def test_unreadable_provenance_and_records_name_the_file(tmp_path):
    bad = tmp_path / "provenance.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"provenance\.json: unreadable"):
        provenance.read_provenance(bad)
    bad.write_text("{}")
    with pytest.raises(DataError, match="no 'experiment'"):
        provenance.read_provenance(bad)
    runs = tmp_path / "e" / "x" / ".runs"
    runs.mkdir(parents=True)
    (runs / "y.json").write_text("[")
    with pytest.raises(DataError, match=r"y\.json: unreadable run record"):
        provenance.read_run_records(tmp_path / "e")


def test_resolved_settings_hold_each_stage_the_experiment_runs():
    from pcam.config import load_config, stage_settings

    cfg = load_config(Path(__file__).resolve().parent.parent / "config" / "config.yaml")
    weak = provenance.resolved_settings(cfg, "baseline")
    full = provenance.resolved_settings(cfg, "full")
    assert weak["classifier"] == stage_settings(cfg, "baseline", "classifier")
    assert weak["classifier"]["loss_terms"] == ["cls"]  # the experiment's override, merged
    assert set(full) == {"supervision", "dataset", "compute", "evaluation", "deeplab",
                         "deeplab_inference"}  # fmt: skip
    assert weak["supervision"] == "weak" and full["supervision"] == "full"


def test_a_job_that_used_cuda_records_the_gpu_and_fp16(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # a simulated GPU job
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Simulated GPU {i}")
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda i: (i + 1) * 3 * 2**29)
    monkeypatch.setenv("WORLD_SIZE", "2")
    facts = provenance.device_facts({**COMPUTE, "gpus_per_job": 2})
    assert facts == {
        "device": "cuda", "device_names": ["Simulated GPU 0", "Simulated GPU 1"],
        "peak_gpu_mb": 3072.0, "precision": "fp16", "world_size": 2, "gpus_per_job": 2,
    }  # fmt: skip
    assert provenance.device_facts({**COMPUTE, "mixed_precision": "off"})["precision"] == "fp32"

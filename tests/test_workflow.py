"""End to end through Snakemake: the whole DAG on a tiny demo config, the report, resuming after
SIGKILL, and stale-only re-runs after a change of setting or of one stage's code."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.snakemake_runner import Project, make_project

pytestmark = pytest.mark.slow

WEAK_STAGES = {"cam", "rw", "rw_crf", "deeplab", "deeplab_crf"}
FULL_STAGES = {"deeplab_full", "deeplab_full_crf"}


def _summary(project: Project) -> list[dict]:
    with open(project.work / "results" / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_summary_has_every_stage_for_every_experiment(done):
    rows = _summary(done)
    stages: dict[str, set] = {}
    for row in rows:
        stages.setdefault(row["experiment"], set()).add(row["stage"])
        assert 0.0 <= float(row["miou"]) <= 100.0
        assert int(row["n_images"]) > 0
    assert stages == {"puzzle": WEAK_STAGES, "baseline": WEAK_STAGES, "full": FULL_STAGES}
    header = list(rows[0])
    assert header[:8] == [
        "experiment", "stage", "split", "n_images", "threshold", "miou", "fg_miou", "paper_miou",
    ]  # fmt: skip
    # the demo is not VOC: no paper values beside ours
    assert all(row["paper_miou"] == "" for row in rows)


def test_report_builds_offline(done):
    report = done.work / "results" / "report.html"
    done.run("--cores", "1", "--report", str(report))
    text = report.read_text(errors="replace")
    assert report.stat().st_size > 100_000
    for name in (
        "summary.csv", "summary.html", "table2.png", "per_class_iou.png", "training_curves.png",
        "gallery.html", "gallery_val.html",
    ):  # fmt: skip
        assert name in text


def test_nothing_to_do_after_a_complete_run(done):
    assert done.planned_jobs() == set()


def _override(project: Project, name: str, text: str) -> Path:
    path = project.work / f"{name}.yaml"
    path.write_text(text)
    return path


def test_changing_pseudo_label_crf_reruns_only_its_descendants(done):
    change = _override(done, "crf2", "pseudo_labels:\n  crf:\n    iterations: 2\n")
    jobs = done.planned_jobs(configfiles=(change,))
    weak = {"puzzle", "baseline"}
    expected = {
        (rule, exp)
        for exp in weak
        for rule in (
            "make_pseudo_labels", "eval_pseudo_labels", "train_deeplab", "infer_deeplab",
            "eval_deeplab", "per_class_figure", "curves_figure", "gallery_figure",
            "val_gallery_figure", "provenance",
        )
    } | {("summary", ""), ("summary_page", ""), ("all", "")}  # fmt: skip
    assert jobs == expected


def test_changing_one_experiment_setting_reruns_that_experiment_only(done):
    change = _override(
        done, "alpha", "experiments:\n  baseline:\n    supervision: weak\n"
        "    classifier:\n      loss_terms: [cls]\n      seed: 1\n",
    )  # fmt: skip
    jobs = done.planned_jobs(configfiles=(change,))
    assert {exp for _, exp in jobs} == {"baseline", ""}
    assert ("train_classifier", "baseline") in jobs and ("make_cams", "baseline") in jobs


def test_changing_random_walk_code_reruns_it_and_its_descendants(done):
    module = done.root / "pcam" / "stages" / "rw.py"
    original = module.read_text()
    module.write_text(original + "\n_EDITED = True  # a code change\n")
    try:
        jobs = done.planned_jobs()
    finally:
        module.write_text(original)
    rules = {rule for rule, _ in jobs}
    assert "make_rw" in rules and "make_pseudo_labels" in rules and "train_deeplab" in rules
    assert not rules & {"train_classifier", "make_cams", "make_affinity_labels",
                        "train_affinitynet", "eval_cams"}  # fmt: skip
    assert {exp for _, exp in jobs} == {"puzzle", "baseline", ""}


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_training_killed_with_sigkill_resumes_through_snakemake(tmp_path):
    project = make_project(tmp_path)
    longer = _override(project, "long", "deeplab:\n  epochs: 12\n  checkpoint_every: 2\n")
    # Only the fully supervised experiment: its DeepLab needs no earlier stage.
    target = "results/full/deeplab/model.pt"
    project.run("--cores", "2", "results/data_check.csv", configfiles=(longer,))
    proc = subprocess.Popen(
        project.command("--cores", "2", target, configfiles=(longer,)),
        env=project.env, cwd=project.work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    state = project.work / "results" / "full" / ".state"
    try:
        assert _wait_for(lambda: any(state.glob("deeplab-*/checkpoint.pt")), timeout=600)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (project.work / target).exists()
    marker = next(state.glob("deeplab-*/checkpoint.pt"))
    project.run("--unlock", configfiles=(longer,))
    project.run("--cores", "2", "--rerun-incomplete", target, configfiles=(longer,))
    assert (project.work / target).exists()
    log = (project.work / "logs" / "full" / "train_deeplab.log").read_text()
    assert "resum" in log.lower(), log[-2000:]
    assert marker.parent.exists()

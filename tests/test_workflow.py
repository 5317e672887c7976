"""End to end through Snakemake: the whole DAG on a tiny demo config (results and dataset under
paths with spaces), the report, the threads each job got, and exactly which jobs a change plans:
each class of config key, a stage's code, an edited or touched dataset file. Resuming after
SIGKILL needs no manual step."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcam.checkpoint import content_digest
from pcam.data.manifest import KINDS
from pcam.pipeline import all_scored_stages
from tests.snakemake_runner import Project, job_keys, make_project
from tests.test_workflow_static import JOB_RULES

pytestmark = pytest.mark.slow

WEAK_STAGES = {"cam", "rw", "rw_crf", "rw_crf_aug", "deeplab", "deeplab_crf"}
FULL_STAGES = {"deeplab_full", "deeplab_full_crf"}
WEAK = ("puzzle", "baseline")
EVERY = ("puzzle", "baseline", "full")


def _summary(project: Project) -> list[dict]:
    with open(project.results_path("summary.csv"), newline="") as fh:
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
    # the thresholds the stage table names (evaluation.cam_threshold, evaluation.rw_threshold)
    thresholds = {r["stage"]: r["threshold"] for r in rows if r["experiment"] == "puzzle"}
    assert (thresholds["cam"], thresholds["rw"], thresholds["rw_crf"]) == ("0.15", "0.35", "")


def test_report_builds_offline(done):
    report = done.results_path("report.html")
    done.run("--cores", "1", "--report", str(report))
    text = report.read_text(errors="replace")
    assert report.stat().st_size > 100_000
    for name in (
        "summary.csv", "summary.html", "table2.png", "per_class_iou.png", "training_curves.png",
        "gallery.html", "gallery_val.html",
    ):  # fmt: skip
        assert name in text


def test_nothing_to_do_after_a_complete_run(done):
    assert done.planned() == []


def _expected_threads(rule: str) -> int:
    if rule in ("make_affinity_labels", "make_pseudo_labels", "infer_deeplab"):
        return 2  # compute.crf_threads
    if rule.startswith("eval_"):
        return 2  # evaluation.workers
    return 1  # compute.torch_threads for torch rules; 1 for the rest


# an eval job's log is named after the stage it scores: eval_<stage>.log
_EVAL_RULE = {
    **{f"eval_{s.name}": "eval_deeplab" for s in all_scored_stages() if s.on_val},
    **{f"eval_{s.name}": "eval_pseudo_labels" for s in all_scored_stages()
       if s.source == "pseudo_labels"},
}  # fmt: skip


def test_every_job_ran_with_its_rules_threads(done):
    """Snakemake exports a rule's threads as OMP_NUM_THREADS, which torch follows
    (test_torch_follows_omp_num_threads); every job's log says what it was given."""
    logs = [p for p in (done.work / "logs").rglob("*.log") if ".history" not in p.name]
    seen = {}
    for path in logs:
        if "benchmarks" in path.parts:
            continue
        rule = path.parent.name if path.parent.name == "check_data" else path.stem
        rule = re.sub(r"-.*", "", rule)
        rule = _EVAL_RULE.get(rule, rule)
        found = re.search(r"attempt started, .* OMP_NUM_THREADS=(\S+)", path.read_text())
        assert found, path
        seen.setdefault(rule, set()).add(int(found.group(1)))
    assert set(seen) == set(JOB_RULES)  # every rule with a shell command ran and logged
    assert seen == {rule: {_expected_threads(rule)} for rule in seen}


def test_torch_follows_omp_num_threads():
    code = "import torch; print(torch.get_num_threads())"
    for n in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": n}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == n


def _override(project: Project, name: str, text: str) -> Path:
    path = project.work.parent / f"{name}.yaml"
    path.write_text(text)
    return path


def _keys(project: Project, *args: str, configfiles: tuple[Path, ...] = ()):
    counts = job_keys(project.planned(*args, configfiles=configfiles))
    assert set(counts.values()) <= {1}, counts
    return set(counts)


def _job(rule: str, **wildcards) -> tuple:
    return (rule, tuple(sorted(wildcards.items())))


# What any change of an evaluation re-runs beside it: each experiment's provenance (it records
# the evaluation settings and the jobs), the summary and its page.
REPORTING = {_job("summary"), _job("summary_page"), _job("all")} | {
    _job("provenance", experiment=e) for e in EVERY
}


@pytest.mark.parametrize(
    "text",
    [
        "compute:\n  num_workers: 1\n",
        "compute:\n  crf_threads: 1\n",
        "compute:\n  torch_threads: 2\n",
        "evaluation:\n  workers: 1\n",
    ],
    ids=["num_workers", "crf_threads", "torch_threads", "evaluation.workers"],
)
def test_execution_only_keys_plan_nothing(done, text):
    assert _keys(done, configfiles=(_override(done, "execution", text),)) == set()


def test_gpus_per_job_is_the_one_gpu_setting_of_both_profiles(done):
    """compute.gpus_per_job is every GPU rule's `gpu` resource: the local slot count and, under
    SLURM, `--gpus=N`; the SLURM profile adds none of its own."""
    two = _override(done, "gpus", "compute:\n  gpus_per_job: 2\n")
    torch = {"train_classifier", "make_cams", "train_affinitynet", "make_rw", "train_deeplab",
             "infer_deeplab"}  # fmt: skip
    every = len(done.planned("--forceall"))
    for profile in ("workstation", "slurm"):
        jobs = done.planned("--forceall", configfiles=(two,), profile=profile)
        assert len(jobs) == every
        for job in jobs:
            if job.rule != "all":
                assert job.resources["gpu"] == ("2" if job.rule in torch else "0"), (profile, job)


def test_a_result_compute_key_reruns_every_computation_and_no_check(done):
    every = _keys(done, "--forceall")
    change = _override(done, "precision", "compute:\n  mixed_precision: bf16\n")
    jobs = _keys(done, configfiles=(change,))
    assert jobs == {j for j in every if j[0] not in ("demo_data", "check_data")}
    assert len(jobs) == len(every) - 7  # demo_data and the six checks


@pytest.mark.parametrize("key, rule", [("rw_threshold", "eval_rw"), ("cam_threshold", "eval_cams")])
def test_an_evaluation_threshold_reruns_only_its_evaluation(done, key, rule):
    change = _override(done, key, f"evaluation:\n  {key}: 0.3\n")
    assert _keys(done, configfiles=(change,)) == REPORTING | {
        _job(r, experiment=e) for e in WEAK for r in (rule, "per_class_figure")
    }


def test_the_evaluation_subset_reruns_every_evaluation_only(done):
    change = _override(done, "every", "evaluation:\n  every: 2\n")
    dl_stages = {"puzzle": ("deeplab", "deeplab_crf"), "baseline": ("deeplab", "deeplab_crf"),
                 "full": ("deeplab_full", "deeplab_full_crf")}  # fmt: skip
    expected = REPORTING | {_job("per_class_figure", experiment=e) for e in EVERY}
    expected |= {_job(r, experiment=e) for e in WEAK for r in ("eval_cams", "eval_rw")}
    expected |= {
        _job("eval_pseudo_labels", stage=s, experiment=e)
        for e in WEAK
        for s in ("rw_crf", "rw_crf_aug")
    }
    expected |= {
        _job("eval_deeplab", stage=s, experiment=e) for e, ss in dl_stages.items() for s in ss
    }
    assert _keys(done, configfiles=(change,)) == expected


def test_changing_pseudo_label_crf_reruns_only_its_descendants(done):
    change = _override(done, "crf2", "pseudo_labels:\n  crf:\n    iterations: 2\n")
    jobs = done.planned_jobs(configfiles=(change,))
    expected = {
        (rule, exp)
        for exp in WEAK
        for rule in (
            "make_pseudo_labels", "eval_pseudo_labels", "train_deeplab", "infer_deeplab",
            "eval_deeplab", "per_class_figure", "curves_figure", "gallery_figure",
            "val_gallery_figure", "provenance",
        )
    } | {("summary", ""), ("summary_page", ""), ("all", "")}  # fmt: skip
    assert jobs == expected


def test_changing_one_experiment_setting_reruns_that_experiment_only(done):
    change = _override(
        done, "alpha", "experiments:\n  puzzle:\n    supervision: weak\n"
        "    classifier:\n      alpha: 2.0\n",
    )  # fmt: skip
    jobs = done.planned_jobs(configfiles=(change,))
    assert {exp for _, exp in jobs} == {"puzzle", ""}
    assert ("train_classifier", "puzzle") in jobs and ("make_cams", "puzzle") in jobs


def test_changing_the_shared_backbone_reruns_every_experiment_trained_on_it(done):
    """The baseline's classifier is every AffinityNet's and DeepLab's backbone (config.yaml):
    a change to it re-trains them all, but not puzzle's own classifier."""
    change = _override(
        done, "seed", "experiments:\n  baseline:\n    supervision: weak\n"
        "    classifier:\n      loss_terms: [cls]\n      seed: 1\n",
    )  # fmt: skip
    jobs = done.planned_jobs(configfiles=(change,))
    assert {exp for _, exp in jobs} == {"baseline", "puzzle", "full", ""}
    assert {("train_affinitynet", "puzzle"), ("train_deeplab", "full")} <= jobs
    assert ("train_classifier", "puzzle") not in jobs and ("make_cams", "puzzle") not in jobs


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


def _ids(project: Project, split: str) -> list[str]:
    return project.data_path("ImageSets", "Segmentation", f"{split}.txt").read_text().split()


class _Edited:
    """Rewrite a file's content for the block; put its bytes and mtime back afterwards."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.stat, self.data = self.path.stat(), self.path.read_bytes()
        return self.path

    def __exit__(self, *exc):
        self.path.write_bytes(self.data)
        os.utime(self.path, ns=(self.stat.st_atime_ns, self.stat.st_mtime_ns))


def test_a_rewritten_val_mask_reruns_its_check_and_the_evaluations_that_read_it(done):
    """Not the val inference (it reads images), nothing of another split."""
    with _Edited(done.data_path("SegmentationClass", f"{_ids(done, 'val')[0]}.png")) as mask:
        image = Image.open(mask)
        pixels = np.array(image)
        pixels[pixels.shape[0] // 2, :] = 255  # a line of "ignore" across the mask
        rewritten = Image.fromarray(pixels, mode="P")
        rewritten.putpalette(image.getpalette())
        rewritten.save(mask)
        jobs = _keys(done)
    dl_stages = {"puzzle": ("deeplab", "deeplab_crf"), "baseline": ("deeplab", "deeplab_crf"),
                 "full": ("deeplab_full", "deeplab_full_crf")}  # fmt: skip
    assert jobs == REPORTING | {_job("check_data", kind="labels", split="val")} | {
        _job(r, experiment=e) for e in EVERY for r in ("per_class_figure", "val_gallery_figure")
    } | {_job("eval_deeplab", stage=s, experiment=e) for e, ss in dl_stages.items() for s in ss}
    assert len(jobs) == 19
    assert done.planned() == []  # put back: nothing to do again


def test_a_rewritten_training_image_rechecks_its_split_only(done):
    only_train_aug = sorted(set(_ids(done, "train_aug")) - set(_ids(done, "train")))[0]
    with _Edited(done.data_path("JPEGImages", f"{only_train_aug}.jpg")) as image:
        Image.open(image).rotate(180).save(image, quality=95)
        jobs = _keys(done)
    checks = {j for j in jobs if j[0] == "check_data"}
    assert checks == {_job("check_data", kind=k, split="train_aug") for k in ("images", "labels")}
    trained = {(j[0], dict(j[1]).get("experiment")) for j in jobs if j[0].startswith("train_")}
    assert trained == {("train_classifier", e) for e in WEAK} | {
        ("train_affinitynet", e) for e in WEAK
    } | {("train_deeplab", e) for e in EVERY}


def test_touching_every_data_file_plans_nothing(done):
    files = [p for p in done.data_path().rglob("*") if p.is_file()]
    assert len(files) > 80
    for path in files:
        path.touch()
    assert done.planned() == []


def test_shell_injection_through_a_split_name_is_refused(done, tmp_path):
    change = _override(done, "inject", 'dataset:\n  eval_split: "train;touch PWNED;#"\n')
    proc = subprocess.run(
        done.command("--cores", "1", configfiles=(change,)),
        env=done.env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "dataset.eval_split" in proc.stdout + proc.stderr
    for where in (tmp_path, done.work, done.root):
        assert not list(where.rglob("PWNED")), where


def test_hostile_paths_reach_commands_quoted(tmp_path):
    project = make_project(tmp_path, results="out;touch PWNED;#", data="d $(touch PWNED)/x y")
    targets = [f"{project.results}/manifest/val/{k}.tsv" for k in KINDS]
    project.run("--cores", "2", *targets)
    assert all((project.work / t).is_file() for t in targets)
    assert not list(tmp_path.rglob("PWNED"))


def test_a_failing_check_is_attempted_once_and_its_report_survives(tmp_path):
    """Bad data fails the same way twice: not retried even when retries are asked for; the
    report and the full messages stay in logs/; a re-run keeps the first attempt's history."""
    project = make_project(tmp_path)
    lists = project.data_path("ImageSets", "Segmentation")
    project.run("--cores", "2", f"{project.data}/ImageSets/Segmentation/val.txt")
    ids = (lists / "val.txt").read_text().split()
    (lists / "val.txt").write_text("\n".join([*ids, ids[1]]) + "\n")
    (lists / "train.txt").write_text("")
    targets = [f"{project.results}/manifest/{s}/images.tsv" for s in ("val", "train")]
    for attempt in (1, 2):
        proc = project.run("--cores", "2", "--retries", "3", "--keep-going", *targets, check=False)
        assert proc.returncode != 0
        logs = project.work / "logs" / "check_data"
        report = list(csv.DictReader((logs / "val-images.csv").open()))
        assert [(r["image_id"], r["problem"]) for r in report] == [
            (ids[1], f"id {ids[1]} is listed 2 times (entries [2, {len(ids) + 1}])")
        ]
        assert f"id {ids[1]} is listed 2 times" in (logs / "val-images.log").read_text()
        assert "split list is empty" in (logs / "train-images.log").read_text()
        for name in ("val-images", "train-images"):
            history = (logs / f"{name}.history.log").read_text()
            assert history.count("attempt started") == attempt, name
        assert not any((project.work / t).exists() for t in targets)


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def _kill_after_a_checkpoint(project: Project, target: str, stage: str, configfiles) -> Path:
    """Run `target`, SIGKILL the whole run once `stage` has a checkpoint; the checkpoint."""
    proc = subprocess.Popen(
        project.command("--cores", "2", target, configfiles=configfiles),
        env=project.env, cwd=project.work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    state = project.results_path(target.split("/")[1], ".state")
    try:
        assert _wait_for(lambda: any(state.glob(f"{stage}-*/checkpoint.pt")), timeout=900)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (project.work / target).exists()
    return next(state.glob(f"{stage}-*/checkpoint.pt"))


def test_training_killed_with_sigkill_resumes_with_no_manual_step(tmp_path):
    project = make_project(tmp_path)
    longer = _override(project, "long", "deeplab:\n  epochs: 12\n  checkpoint_every: 2\n")
    # Only the fully supervised experiment: its DeepLab needs no earlier stage.
    target = "results/full/deeplab/model.pt"
    marker = _kill_after_a_checkpoint(project, target, "deeplab", (longer,))
    assert list((project.work / ".snakemake" / "locks").glob("*.lock"))  # left behind
    proc = project.run("--cores", "2", target, configfiles=(longer,))  # no --unlock
    assert "removed the stale lock" in proc.stderr
    assert (project.work / target).exists()
    log = (project.work / "logs" / "full" / "train_deeplab.log").read_text()
    assert "resum" in log.lower(), log[-2000:]
    assert marker.parent.exists()


def test_an_upstream_change_never_resumes_a_stale_checkpoint(tmp_path):
    """Kill DeepLab after a checkpoint, change a pseudo-label setting, re-run: the labels are
    remade and DeepLab starts from step 0 (it would otherwise mix old and new labels)."""
    project = make_project(tmp_path)
    one = _override(
        project, "one", "run_experiments: [puzzle]\ndeeplab:\n  epochs: 12\n  checkpoint_every: 2\n"
    )
    target = "results/puzzle/deeplab/model.pt"
    _kill_after_a_checkpoint(project, target, "deeplab", (one,))
    labels = project.results_path("puzzle", "pseudo_labels")
    before = content_digest(labels)
    # A threshold far from the default, so that the labels surely change (a small step can leave
    # every pixel's argmax as it was, and then resuming is right: the inputs are the same).
    changed = _override(project, "threshold", "pseudo_labels:\n  threshold: 0.80\n")
    project.run("--cores", "2", target, configfiles=(one, changed))
    assert content_digest(labels) != before, "the setting change did not change the labels"
    log = (project.work / "logs" / "puzzle" / "train_deeplab.log").read_text()
    assert "resuming" not in log, log[-2000:]
    history = (project.work / "logs" / "puzzle" / "train_deeplab.history.log").read_text()
    assert history.count("attempt started") == 2

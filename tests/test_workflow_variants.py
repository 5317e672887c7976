"""Experiments that vary the chain, through Snakemake: several seeds (one full chain each under
results/{experiment}/seed-K, aggregated in the summary), a classifier adopted from an imported
checkpoint instead of trained, and another segmentation network's row names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pcam.summary import COLUMNS, MEAN_SEED, SEED_COLUMNS
from tests.snakemake_runner import Project, make_project
from tests.stage_settings import section

pytestmark = pytest.mark.slow

WEAK_STAGES = ["cam", "rw", "rw_crf", "rw_crf_aug", "deeplab", "deeplab_crf"]


def _override(project: Project, name: str, text: str) -> Path:
    path = project.work.parent / f"{name}.yaml"
    path.write_text(text)
    return path


def _summary(project: Project) -> pd.DataFrame:
    return pd.read_csv(project.results_path("summary.csv"), dtype=str, keep_default_na=False)


def test_three_seeds_run_one_chain_each_and_the_summary_aggregates_them(tmp_path):
    project = make_project(tmp_path)
    seeds = _override(
        project,
        "seeds",
        "run_experiments: [puzzle]\nexperiments:\n  puzzle:\n    seeds: [0, 1, 2]\n",
    )
    project.run("--cores", "2", configfiles=(seeds,), timeout=3600)  # a bound, not a target
    for k in range(3):
        run = project.results_path("puzzle", f"seed-{k}")
        assert sorted(p.stem for p in (run / "eval").glob("*.csv")) == sorted(WEAK_STAGES)
        settings = json.loads((run / "provenance.json").read_text())["settings"]
        assert [settings[s]["seed"] for s in ("classifier", "affinitynet", "deeplab")] == [k] * 3
    assert not project.results_path("puzzle", "eval").exists()  # no unseeded chain beside them
    models = {project.results_path("puzzle", f"seed-{k}", "classifier", "model.pt").read_bytes()
              for k in range(3)}  # fmt: skip
    assert len(models) == 3  # the seed reached the training: three different classifiers

    summary = _summary(project)
    assert list(summary.columns) == [*COLUMNS, *SEED_COLUMNS]
    assert list(summary["stage"]) == [s for s in WEAK_STAGES for _ in range(4)]
    assert list(summary["seed"]) == ["0", "1", "2", MEAN_SEED] * len(WEAK_STAGES)
    per_seed = summary[summary["seed"] != MEAN_SEED]
    mean = summary[summary["seed"] == MEAN_SEED].set_index("stage")
    values = per_seed.assign(miou=per_seed["miou"].astype(float)).groupby("stage")["miou"]
    # the CSV holds 2 decimals: a mean or std of the rounded seed rows is within 0.01 of the
    # row computed from the unrounded numbers; min and max are seed rows themselves
    for column, expected in (("miou", values.mean()), ("miou_std", values.std())):
        got = mean.loc[expected.index, column].astype(float)
        np.testing.assert_allclose(got, expected, atol=0.01)
    assert (mean.loc[values.min().index, "miou_min"].astype(float) == values.min()).all()
    assert (mean.loc[values.max().index, "miou_max"].astype(float) == values.max()).all()
    assert (mean["n_seeds"] == "3").all()
    page = project.results_path("figures", "summary.html").read_text()
    cam = mean.loc["cam"]
    assert f"{cam['miou']} ± {float(cam['miou_std']):.2f}" in page


def test_one_seed_plans_todays_jobs_and_two_plan_a_chain_each(tmp_path):
    project = make_project(tmp_path)
    only = _override(project, "only", "run_experiments: [puzzle]\n")
    one = _override(project, "one", "experiments:\n  puzzle:\n    seeds: [0]\n")
    two = _override(project, "two", "experiments:\n  puzzle:\n    seeds: [4, 7]\n")

    def plan(*files: Path) -> set:
        return {j.key for j in project.planned(configfiles=(only, *files))}

    today = plan()
    assert plan(one) == today
    # AffinityNet's backbone is the baseline's classifier (config.yaml), for every seed
    assert ("train_classifier", (("experiment", "baseline"),)) in today
    shared = {(rule, w) for rule, w in today if dict(w).get("experiment") != "puzzle"}
    chain = today - shared  # every job of the experiment, keyed by experiment=puzzle

    def of(run: str) -> set:
        return {
            (rule, tuple((k, run if k == "experiment" else v) for k, v in w)) for rule, w in chain
        }

    assert plan(two) == shared | of("puzzle/seed-4") | of("puzzle/seed-7")


def _imported_classifier(project: Project, seed: int) -> Path:
    """A model file as `pcam import-checkpoint` writes it, for the demo's classes."""
    from pcam.data.demo import STYLES
    from pcam.models.classifier import Classifier
    from pcam.models.official import import_checkpoint, pcam_to_official

    torch.manual_seed(seed)
    model = Classifier.from_settings(section("classifier"), len(STYLES["parts"].classes))
    official = project.work / "official.pth"
    torch.save(pcam_to_official("classifier", model.state_dict()), official)
    out = project.work / "imported" / "classifier.pt"
    import_checkpoint(official, "classifier", "resnet18", out)
    return out


def test_from_checkpoint_adopts_the_imported_classifier_and_tracks_its_file(tmp_path):
    project = make_project(tmp_path)
    imported = _imported_classifier(project, seed=0)
    adopt = _override(
        project, "adopt", "run_experiments: [puzzle]\n"
        "classifier:\n  from_checkpoint: imported/classifier.pt\n",
    )  # fmt: skip
    target = f"{project.results}/puzzle/classifier/model.pt"
    project.run("--cores", "2", target, configfiles=(adopt,))
    assert project.results_path("puzzle", "classifier", "model.pt").read_bytes() == (
        imported.read_bytes()
    )
    log = (project.work / "logs" / "puzzle" / "train_classifier.log").read_text()
    assert "adopted imported/classifier.pt" in log and "step" not in log.split("adopted")[1]
    assert project.planned(target, configfiles=(adopt,)) == []
    _imported_classifier(project, seed=1)  # another imported model: the job is stale
    planned = project.planned(target, configfiles=(adopt,))
    assert [j.rule for j in planned] == ["train_classifier"]


def test_another_segmentation_network_adds_rows_under_its_name(tmp_path):
    project = make_project(tmp_path)
    segformer = "deeplab: {network: segformer, backbone: pvt_v2_b0, output_stride: null}"
    experiments = _override(
        project, "networks", "run_experiments: [puzzle, full, seg, segfull]\nexperiments:\n"
        f"  seg:\n    supervision: weak\n    {segformer}\n"
        f"  segfull:\n    supervision: full\n    {segformer}\n",
    )  # fmt: skip
    jobs = project.planned(configfiles=(experiments,))
    rows = {}
    for job in jobs:
        if job.rule == "eval_deeplab":
            rows.setdefault(job.wildcards["experiment"], set()).add(job.wildcards["stage"])
    assert rows == {
        "puzzle": {"deeplab", "deeplab_crf"},
        "full": {"deeplab_full", "deeplab_full_crf"},
        "seg": {"segformer", "segformer_crf"},
        "segfull": {"segformer_full", "segformer_full_crf"},
    }
    trained = {j.wildcards["experiment"] for j in jobs if j.rule == "train_deeplab"}
    assert trained == {"puzzle", "full", "seg", "segfull"}  # one model folder each: deeplab/

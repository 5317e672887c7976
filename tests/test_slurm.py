"""The tiny DAG submitted to a real single-node SLURM through the executor plugin.

The fixture starts SLURM (munge, MariaDB + slurmdbd for accounting, slurmctld, slurmd) with
`tools/slurm/localslurm.sh` when it is not running, and stops what it started. Job accounting
(`sacct`, the plugin's default status path) must show every rule as a SLURM job.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.snakemake_runner import REPO, make_project

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SCRIPT = REPO / "tools" / "slurm" / "localslurm.sh"


def _status() -> bool:
    return subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("a local SLURM needs root and apt-get (Debian)")
    started = False
    if not _status():
        t0 = time.monotonic()
        subprocess.run([str(SCRIPT), "start"], check=True, timeout=900)
        print(f"SLURM set-up took {time.monotonic() - t0:.1f} s")
        started = True
    yield
    if started:
        subprocess.run([str(SCRIPT), "stop"], timeout=120)


def test_tiny_dag_runs_as_slurm_jobs(slurm, tmp_path):
    project = make_project(tmp_path)
    one = tmp_path / "one.yaml"
    one.write_text("compute:\n  cam_shards: 1\nrun_experiments: [puzzle]\n")
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    t0 = time.monotonic()
    proc = subprocess.run(
        ["timeout", "-k", "30", "1500", *project.command(
            "--profile", str(REPO / "workflow" / "profiles" / "slurm"),
            "--jobs", "4", "--resources", "gpu=2",
            "--default-resources", "slurm_partition=main", "mem_mb=1500", "runtime=30",
            "cpus_per_task=1", "gpu=0",
            "--set-resources", "train_classifier:gpu=1", "make_cams:gpu=1",
            "train_affinitynet:gpu=1", "make_rw:gpu=1", "train_deeplab:gpu=1",
            "infer_deeplab:gpu=1",
            "--slurm-init-seconds-before-status-checks", "5",
            configfiles=(one,),
        )],
        env=project.env, cwd=project.work, capture_output=True, text=True,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    print(f"tiny DAG on SLURM took {elapsed:.1f} s")
    assert (project.work / "results" / "summary.csv").exists()

    acct = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-S", start, "--format=JobID,Comment,State"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    ran = {}
    for line in acct.splitlines():
        _, comment, state = line.split("|")
        if comment.startswith("rule_"):
            rule = comment[len("rule_") :].split("_wildcards_")[0]
            ran.setdefault(rule, set()).add(state)
    expected = {
        "demo_data", "check_data", "train_classifier", "make_cams", "eval_cams",
        "make_affinity_labels", "train_affinitynet", "make_rw", "eval_rw",
        "make_pseudo_labels", "eval_pseudo_labels", "train_deeplab", "infer_deeplab",
        "eval_deeplab", "summary", "per_class_figure", "curves_figure", "gallery_figure",
    }  # fmt: skip
    assert expected <= set(ran), f"missing from sacct: {expected - set(ran)}"
    assert all(states == {"COMPLETED"} for states in ran.values()), ran

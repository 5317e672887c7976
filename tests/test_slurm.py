"""The tiny DAG submitted to a real single-node SLURM through the executor plugin, with every
setting taken from the profile file: nothing on the command line but the profile and configs.

The fixture starts SLURM (munge, MariaDB + slurmdbd for accounting, slurmctld, slurmd) with
`tools/slurm/localslurm.sh` when it is not running, and stops what it started. The test copies
`workflow/profiles/slurm` with values that fit the local node (a partition and an account it
creates, small memory, one CPU, distinct run times per rule) and checks with `sacct` that every
job ran with its rule's values. A failing check-data job is submitted once, retries or not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.snakemake_runner import REPO, Project, make_project

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SCRIPT = REPO / "tools" / "slurm" / "localslurm.sh"
PARTITION, ACCOUNT, CLUSTER = "pcamtest", "pcamacct", "pcam"
TORCH = {"train_classifier", "make_cams", "train_affinitynet", "make_rw", "train_deeplab",
         "infer_deeplab"}  # fmt: skip
FIELDS = "JobID,Comment,Partition,Account,TimelimitRaw,ReqMem,AllocTRES,State"


def _status() -> bool:
    return subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode == 0


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)


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
    try:
        # a partition and an account of the test's own, so that sacct shows where they came from
        # (each command fails harmlessly when a killed earlier session left it in place)
        _run("scontrol", "create", f"PartitionName={PARTITION}", "Nodes=localhost", "State=UP",
             "MaxTime=INFINITE", check=False)  # fmt: skip
        _run("sacctmgr", "-i", "add", "account", ACCOUNT, f"Cluster={CLUSTER}", check=False)
        _run("sacctmgr", "-i", "add", "user", "root", f"Account={ACCOUNT}", f"Cluster={CLUSTER}",
             check=False)  # fmt: skip
        _run("scontrol", "show", "partition", PARTITION)
        assoc = _run("sacctmgr", "-n", "-P", "show", "assoc", "user=root", f"account={ACCOUNT}")
        assert assoc.stdout, "the test account has no association for root"
        yield
    finally:
        _run("sacctmgr", "-i", "delete", "user", "root", f"Account={ACCOUNT}", check=False)
        _run("sacctmgr", "-i", "delete", "account", ACCOUNT, check=False)
        _run("scontrol", "delete", f"PartitionName={PARTITION}", check=False)
        if started:
            subprocess.run([str(SCRIPT), "stop"], timeout=120)


def _profile_for_this_node(base: Path) -> tuple[Path, dict]:
    """A copy of the SLURM profile whose values fit the local 2-CPU node; each rule gets its
    own run time and memory (training keeps its `attempt * N` expression), and `summary` gets
    no entry, so the default resources must apply to it."""
    profile = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    profile["default-resources"].update(
        slurm_partition=PARTITION, slurm_account=ACCOUNT, mem_mb=700, runtime=25, cpus_per_task=1
    )
    for i, (_, resources) in enumerate(sorted(profile["set-resources"].items())):
        minutes = 30 + i
        if "attempt" in str(resources.get("runtime", "")):
            minutes = f"attempt * {minutes}"
        resources.update(cpus_per_task=1, mem_mb=600 + 10 * i, runtime=minutes)
    del profile["set-resources"]["summary"]
    profile.update(jobs=4, resources=["gpu=2"])
    profile["slurm-init-seconds-before-status-checks"] = 5
    where = base / "profile"
    where.mkdir()
    (where / "config.yaml").write_text(yaml.safe_dump(profile))
    return where, profile


def _expected(profile: dict, rule: str) -> dict:
    """What sacct should show for a job of `rule` (first attempt)."""
    values = {**profile["default-resources"], **profile["set-resources"].get(rule, {})}
    runtime = str(values["runtime"]).removeprefix("attempt * ")
    return {
        "Partition": PARTITION,
        "Account": ACCOUNT,
        "TimelimitRaw": runtime,
        "ReqMem": f"{values['mem_mb']}M",
    }


def _jobs(start: str) -> list[dict]:
    out = _run("sacct", "-n", "-X", "-P", "-S", start, f"--format={FIELDS}").stdout
    rows = [dict(zip(FIELDS.split(","), line.split("|"), strict=True)) for line in out.splitlines()]
    for row in rows:
        row["rule"] = row["Comment"].removeprefix("rule_").split("_wildcards_")[0]
    return [r for r in rows if r["Comment"].startswith("rule_")]


def _submit(project: Project, profile: Path, *targets: str, configfiles=()):
    """snakemake with the profile copy and configs only, bounded in time."""
    command = project.command(*targets, configfiles=configfiles, profile=profile)
    return subprocess.run(
        ["timeout", "-k", "30", "1500", *command],
        env=project.env, cwd=project.work, capture_output=True, text=True,
    )  # fmt: skip


def test_tiny_dag_runs_with_the_profiles_settings(slurm, tmp_path):
    project = make_project(tmp_path)
    one = tmp_path / "one.yaml"
    one.write_text("compute:\n  cam_shards: 1\nrun_experiments: [puzzle]\n")
    profile_dir, profile = _profile_for_this_node(tmp_path)
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    t0 = time.monotonic()
    proc = _submit(project, profile_dir, configfiles=(one,))
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    print(f"tiny DAG on SLURM took {elapsed:.1f} s")
    assert project.results_path("summary.csv").exists()

    jobs = _jobs(start)
    rules = {*profile["set-resources"], "summary"}
    ran = {j["rule"] for j in jobs}
    assert ran == rules, f"missing from sacct: {rules - ran}"
    for job in jobs:
        assert job["State"] == "COMPLETED", job
        got = {k: job[k] for k in ("Partition", "Account", "TimelimitRaw", "ReqMem")}
        assert got == _expected(profile, job["rule"]), job
        # GPUs per job come from compute.gpus_per_job (1 in the tiny config), never the profile
        gpus = "gres/gpu=1" in job["AllocTRES"]
        assert gpus == (job["rule"] in TORCH), job


def test_a_failing_check_is_submitted_once(slurm, tmp_path):
    """retries: 3 in the profile; a DataError fails the same way twice, so: one job."""
    project = make_project(tmp_path)
    profile_dir, _ = _profile_for_this_node(tmp_path)
    lists = project.data_path("ImageSets", "Segmentation")
    val = f"{project.data}/ImageSets/Segmentation/val.txt"
    assert _submit(project, profile_dir, val).returncode == 0
    ids = (lists / "val.txt").read_text().split()
    (lists / "val.txt").write_text("\n".join([*ids, ids[0]]) + "\n")
    start = time.strftime("%Y-%m-%dT%H:%M:%S")
    proc = _submit(project, profile_dir, f"{project.results}/manifest/val/images.tsv")
    assert proc.returncode != 0
    checks = [j for j in _jobs(start) if j["rule"] == "check_data"]
    assert [j["State"] for j in checks] == ["FAILED"], checks
    log = (project.work / "logs" / "check_data" / "val-images.log").read_text()
    assert f"id {ids[0]} is listed 2 times" in log

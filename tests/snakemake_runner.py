"""Run the real workflow the way a user does (`snakemake` on the command line) from the tests.

The project (pcam, workflow, config) is copied into a temporary directory so a test may edit a
stage module and see what Snakemake plans; `PYTHONPATH` points the jobs at that copy. Commands
use the workstation profile, as `make demo` does, unless a test names another.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "configs" / "tiny.yaml"


@dataclass
class Project:
    root: Path  # the copy of the code
    work: Path  # snakemake's working directory (data/, results/, logs/, .snakemake/)
    env: dict
    configfiles: tuple[Path, ...] = ()  # applied after tiny.yaml by every command
    results: str = "results"  # results_dir, relative to `work`
    data: str = "data/demo"  # dataset.root, relative to `work`

    @property
    def snakefile(self) -> Path:
        return self.root / "workflow" / "Snakefile"

    def profile(self, name: str) -> Path:
        return self.root / "workflow" / "profiles" / name

    def command(
        self, *args: str, configfiles: tuple[Path, ...] = (), profile: str | Path = "workstation"
    ) -> list[str]:
        files = [str(TINY), *(str(p) for p in (*self.configfiles, *configfiles))]
        where = profile if isinstance(profile, Path) else self.profile(profile)
        return [
            sys.executable, "-m", "snakemake", "-s", str(self.snakefile), "--profile", str(where),
            "--directory", str(self.work), *args, "--configfile", *files,  # last: it takes nargs
        ]  # fmt: skip

    def run(
        self,
        *args: str,
        configfiles: tuple[Path, ...] = (),
        timeout: float = 1200,
        check: bool = True,
        profile: str | Path = "workstation",
    ) -> subprocess.CompletedProcess:
        """Run snakemake to completion; raise with its output when it fails and `check`."""
        proc = subprocess.run(
            self.command(*args, configfiles=configfiles, profile=profile),
            env=self.env, cwd=self.work, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(
                f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
            )
        return proc

    def planned(
        self, *args: str, configfiles: tuple[Path, ...] = (), profile: str = "workstation"
    ) -> list[Job]:
        """Every job a dry run plans."""
        cores = ("--cores", "2") if profile == "workstation" else ()
        proc = self.run("-n", *cores, *args, configfiles=configfiles, profile=profile)
        return parse_job_list(proc.stdout + proc.stderr)

    def planned_jobs(self, *args: str, configfiles: tuple[Path, ...] = ()) -> set[tuple]:
        """(rule, experiment or '') of every job a dry run plans."""
        jobs = self.planned(*args, configfiles=configfiles)
        return {(j.rule, j.wildcards.get("experiment", "")) for j in jobs}

    def results_path(self, *parts: str) -> Path:
        return self.work / self.results / Path(*parts)

    def data_path(self, *parts: str) -> Path:
        return self.work / self.data / Path(*parts)


def make_project(
    base: Path, results: str = "results", data: str = "data/demo", *, git: bool = False
) -> Project:
    """Copy the code to `base/code` and prepare an empty working directory.

    `results` and `data` (results_dir and dataset.root, relative to it) may hold spaces. `git`:
    make the copy a git checkout with one commit (so provenance has a commit to record).
    """
    root = base / "code"
    for name in ("pcam", "workflow", "config"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    if git:
        commit_copy(root)
    work = base / "work"
    work.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PCAM_GPU_LOCK_DIR"] = str(base / "gpu-slots")
    env.setdefault("OMP_NUM_THREADS", "1")
    configfiles: tuple[Path, ...] = ()
    if (results, data) != ("results", "data/demo"):
        paths = base / "paths.yaml"
        paths.write_text(json.dumps({"results_dir": results, "dataset": {"root": data}}))
        configfiles = (paths,)
    return Project(root, work, env, configfiles, results, data)


@dataclass(frozen=True)
class Job:
    rule: str
    wildcards: dict = field(hash=False)
    resources: dict = field(hash=False)

    @property
    def key(self) -> tuple:
        """(rule, sorted wildcard items): what identifies a job in assertions."""
        return (self.rule, tuple(sorted(self.wildcards.items())))


def commit_copy(root: Path) -> str:
    """`git init` + commit everything in `root`; returns the commit's sha."""
    env = dict(os.environ, GIT_AUTHOR_NAME="pcam tests", GIT_AUTHOR_EMAIL="tests@pcam",
               GIT_COMMITTER_NAME="pcam tests", GIT_COMMITTER_EMAIL="tests@pcam")  # fmt: skip
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "copy"]):
        subprocess.run(["git", "-C", str(root), *args], env=env, check=True, capture_output=True)
    head = ["git", "-C", str(root), "rev-parse", "HEAD"]
    return subprocess.run(head, check=True, capture_output=True, text=True).stdout.strip()


_RULE = re.compile(r"^(?:local)?rule (\w+):\s*$")


def _pairs(text: str) -> dict:
    """`a=1, b=x` -> {"a": "1", "b": "x"} (values hold no commas here)."""
    return dict(item.split("=", 1) for item in (p.strip() for p in text.split(",")) if "=" in item)


def parse_job_list(text: str) -> list[Job]:
    """Jobs from a dry run's listing: each `rule NAME:` block with its wildcards and resources."""
    jobs: list[Job] = []
    rule: str | None = None
    info: dict[str, dict] = {}

    def flush():
        if rule is not None:
            jobs.append(Job(rule, info.get("wildcards", {}), info.get("resources", {})))

    for line in text.splitlines():
        stripped = line.strip()
        match = _RULE.match(stripped)
        if match:
            flush()
            rule, info = match.group(1), {}
            continue
        for key in ("wildcards", "resources"):
            if rule is not None and stripped.startswith(f"{key}:"):
                info[key] = _pairs(stripped[len(key) + 1 :])
    flush()
    return jobs


def job_keys(jobs: list[Job]) -> Counter:
    """How many times each (rule, wildcards) is planned (once, unless something is wrong)."""
    return Counter(j.key for j in jobs)

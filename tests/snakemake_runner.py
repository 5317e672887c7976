"""Run the real workflow the way a user does (`snakemake` on the command line) from the tests.

The project (pcam, workflow, config) is copied into a temporary directory so a test may edit a
stage module and see what Snakemake plans; `PYTHONPATH` points the jobs at that copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "configs" / "tiny.yaml"


@dataclass
class Project:
    root: Path  # the copy of the code
    work: Path  # snakemake's working directory (data/, results/, logs/, .snakemake/)
    env: dict

    @property
    def snakefile(self) -> Path:
        return self.root / "workflow" / "Snakefile"

    def command(self, *args: str, configfiles: tuple[Path, ...] = ()) -> list[str]:
        files = [str(TINY), *(str(p) for p in configfiles)]
        return [
            sys.executable, "-m", "snakemake", "-s", str(self.snakefile),
            "--directory", str(self.work), "--configfile", *files, *args,
        ]  # fmt: skip

    def run(
        self, *args: str, configfiles: tuple[Path, ...] = (), timeout: float = 1200
    ) -> subprocess.CompletedProcess:
        """Run snakemake to completion; raise with its output when it fails."""
        proc = subprocess.run(
            self.command(*args, configfiles=configfiles),
            env=self.env, cwd=self.work, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(
                f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
            )
        return proc

    def planned_jobs(self, *args: str, configfiles: tuple[Path, ...] = ()) -> set[tuple]:
        """(rule, experiment or '') of every job a dry run plans."""
        proc = self.run("-n", "--cores", "2", *args, configfiles=configfiles)
        return parse_jobs(proc.stdout + proc.stderr)


def make_project(base: Path, *, git: bool = False) -> Project:
    """Copy the code to `base/code` and prepare an empty working directory.

    `git`: make the copy a git checkout with one commit (so provenance has a commit to record).
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
    return Project(root=root, work=work, env=env)


def commit_copy(root: Path) -> str:
    """`git init` + commit everything in `root`; returns the commit's sha."""
    env = dict(os.environ, GIT_AUTHOR_NAME="pcam tests", GIT_AUTHOR_EMAIL="tests@pcam",
               GIT_COMMITTER_NAME="pcam tests", GIT_COMMITTER_EMAIL="tests@pcam")  # fmt: skip
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "copy"]):
        subprocess.run(["git", "-C", str(root), *args], env=env, check=True, capture_output=True)
    head = ["git", "-C", str(root), "rev-parse", "HEAD"]
    return subprocess.run(head, check=True, capture_output=True, text=True).stdout.strip()


_RULE = re.compile(r"^(?:local)?rule (\w+):\s*$")
_EXPERIMENT = re.compile(r"experiment=([A-Za-z0-9_-]+)")


def parse_jobs(text: str) -> set[tuple]:
    """Jobs from a dry run's listing: each `rule NAME:` block with its wildcards line."""
    jobs: set[tuple] = set()
    rule: str | None = None
    experiment = ""
    block: list[str] = []

    def flush():
        if rule is not None:
            jobs.add((rule, experiment, tuple(block)))

    for line in text.splitlines():
        match = _RULE.match(line.strip())
        if match:
            flush()
            rule, experiment, block = match.group(1), "", []
            continue
        if rule is not None and line.strip().startswith("wildcards:"):
            found = _EXPERIMENT.search(line)
            experiment = found.group(1) if found else ""
            block.append(line.strip())
    flush()
    return {(r, e) for r, e, _ in jobs}


def count_jobs(text: str) -> dict[str, int]:
    """The dry run's job-stats table: rule -> number of jobs."""
    counts: dict[str, int] = {}
    in_table = False
    for line in text.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            counts[parts[0]] = int(parts[1])
    return counts

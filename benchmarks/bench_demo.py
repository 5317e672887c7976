"""Demo time: CPU-seconds per rule and the DAG's wall time, from Snakemake's benchmark files.

Run, from the repository root:

    .venv/bin/python benchmarks/bench_demo.py                # the last run's logs/benchmarks
    .venv/bin/python benchmarks/bench_demo.py --clean-clone  # `make demo` on a fresh clone

Every rule writes `logs/benchmarks/**/*.tsv` (Snakemake's `benchmark:`): `s` is the job's wall
time, `cpu_time` its CPU-seconds (user + system, children included). Snakemake samples
`cpu_time` (every 0.5 s at first, then every 30 s), so a long job's last interval is not
counted: the per-rule CPU figures are lower bounds. `--clean-clone` also prints the exact CPU
total of the whole run (the kernel's account of every finished child process).

A job's file is written when it ends, so the file's mtime is its end and `mtime - s` its start;
the DAG wall time is the first start to the last end. `--exclude GLOB` (on the path under the
benchmark folder, repeatable) leaves jobs out of the totals, e.g. to estimate a DAG without
them; the estimate is then the remaining CPU divided by the cores, a lower bound.

`--clean-clone` clones HEAD (committed work only) into a temporary folder and runs there
`make install` and `make demo CORES=N` (each timed; install included is what a new user
waits), then reports that clone's benchmark files. `--keep DIR` clones into DIR and keeps it.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_RULE = re.compile(r"^\s*rule\s+(\w+)\s*:")
_BENCHMARK = re.compile(r'^\s*f"\{LOGS\}/benchmarks/(.+)\.tsv"')
_WILDCARD = re.compile(r"\{\{\w+\}\}")


@dataclass(frozen=True)
class Job:
    """One benchmark file: its path under the benchmark folder, rule, wall and CPU seconds and
    end time (epoch seconds)."""

    path: str
    rule: str
    seconds: float
    cpu_seconds: float
    end: float

    @property
    def start(self) -> float:
        return self.end - self.seconds


def rule_patterns(rules_dir: Path) -> list[tuple[str, re.Pattern, int]]:
    """(rule, regex of its benchmark path, literal length) for every rule with a benchmark."""
    patterns = []
    for smk in sorted(rules_dir.glob("*.smk")):
        rule, expect = None, False
        for line in smk.read_text().splitlines():
            if match := _RULE.match(line):
                rule, expect = match.group(1), False
            elif line.strip() == "benchmark:":
                expect = True
            elif expect and (match := _BENCHMARK.match(line)):
                template = match.group(1)
                literal = _WILDCARD.sub("", template)
                parts = [re.escape(p) for p in _WILDCARD.split(template)]
                patterns.append((rule, re.compile("[^/]+?".join(parts) + r"\.tsv$"), len(literal)))
                expect = False
    return patterns


def rule_of(path: str, patterns: list[tuple[str, re.Pattern, int]]) -> str:
    """The rule whose benchmark pattern matches `path` (the most literal one wins: `eval_cams`
    over `eval_{dl_stage}`), or "?" for a file no rule declares."""
    matches = [(length, rule) for rule, regex, length in patterns if regex.match(path)]
    return max(matches)[1] if matches else "?"


def read_jobs(bench_dir: Path, patterns: list[tuple[str, re.Pattern, int]]) -> list[Job]:
    """Every benchmark file under `bench_dir` as a Job (the last row, if a job was repeated)."""
    jobs = []
    for tsv in sorted(bench_dir.rglob("*.tsv")):
        rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
        if not rows:
            print(f"{tsv}: empty benchmark file, skipped", file=sys.stderr)
            continue
        row, rel = rows[-1], tsv.relative_to(bench_dir).as_posix()
        cpu = float(row["cpu_time"]) if row["cpu_time"] not in ("", "NA") else 0.0
        jobs.append(Job(rel, rule_of(rel, patterns), float(row["s"]), cpu, tsv.stat().st_mtime))
    return jobs


def report(jobs: list[Job], excluded: list[Job], cores: int) -> str:
    """The per-rule table and the totals, as text."""
    lines = [f"{'rule':<24}{'jobs':>5}{'wall s':>10}{'CPU s':>10}"]
    for rule in sorted(
        {j.rule for j in jobs}, key=lambda r: -sum(j.cpu_seconds for j in jobs if j.rule == r)
    ):
        mine = [j for j in jobs if j.rule == rule]
        wall, cpu = sum(j.seconds for j in mine), sum(j.cpu_seconds for j in mine)
        lines.append(f"{rule:<24}{len(mine):>5}{wall:>10.1f}{cpu:>10.1f}")
    cpu_total = sum(j.cpu_seconds for j in jobs)
    lines.append(
        f"{'total':<24}{len(jobs):>5}{sum(j.seconds for j in jobs):>10.1f}{cpu_total:>10.1f}"
    )
    if jobs:
        span = max(j.end for j in jobs) - min(j.start for j in jobs)
        lines.append(f"DAG wall time (first job start to last job end): {span:.0f} s")
    if excluded:
        cpu_out = sum(j.cpu_seconds for j in excluded)
        lines.append(
            f"excluded {len(excluded)} job(s), {cpu_out:.0f} CPU-s; without them the DAG needs "
            f">= {cpu_total / cores:.0f} s on {cores} cores (remaining CPU-s / cores)"
        )
    return "\n".join(lines)


def _timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run `cmd` in `cwd`; (wall seconds, CPU-seconds of every child process it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def clean_clone(dest: Path, cores: int) -> Path:
    """Clone HEAD into `dest`, time `make install` and `make demo`; returns the clone."""
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(dest)], check=True)
    install, install_cpu = _timed(["make", "install"], dest)
    demo, demo_cpu = _timed(["make", "demo", f"CORES={cores}"], dest)
    print(f"make install: {install:.0f} s wall ({install_cpu:.0f} CPU-s)")
    print(f"make demo:    {demo:.0f} s wall ({demo_cpu:.0f} CPU-s, exact), DAG + report")
    print(f"install included: {install + demo:.0f} s = {(install + demo) / 60:.1f} min")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--logs", type=Path, default=Path("logs/benchmarks"), help="benchmark folder"
    )
    parser.add_argument("--cores", type=int, default=2, help="cores of the run (for the estimate)")
    parser.add_argument("--exclude", action="append", default=[], help="glob of paths to leave out")
    parser.add_argument(
        "--clean-clone", action="store_true", help="time make demo on a fresh clone"
    )
    parser.add_argument("--keep", type=Path, help="with --clean-clone: clone here and keep it")
    args = parser.parse_args(argv)
    bench_dir = args.logs
    if args.clean_clone:
        base = args.keep or Path(tempfile.mkdtemp(prefix="pcam-bench-demo-")) / "pcam"
        bench_dir = clean_clone(base, args.cores) / "logs" / "benchmarks"
    if not bench_dir.is_dir():
        print(f"{bench_dir}: no benchmark folder (run the DAG first)", file=sys.stderr)
        return 1
    jobs = read_jobs(bench_dir, rule_patterns(ROOT / "workflow" / "rules"))
    out = [j for j in jobs if any(fnmatch.fnmatch(j.path, g) for g in args.exclude)]
    print(report([j for j in jobs if j not in out], out, args.cores))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Provenance: which code, settings and environment produced an experiment's results.

Two levels:

- A *run record* per compute job (`record_path(output)`: `{output's folder}/.runs/{output's
  name}.json`, outside the job's declared outputs): command, output, start and end time, host,
  device, precision, world size, git commit and dirty flag, package versions. The `pcam` command
  writes it when a job that takes `--compute` succeeds (`pcam.cli.main`), so device and times are
  the job's own, whatever rule or executor ran it.
- `results/{experiment}/provenance.json` (`experiment_provenance`): the experiment's resolved
  settings of every stage, the git state and package versions of the code, and the run records
  found under `results/{experiment}`, with the devices, precisions and the first start / last end.

Outside a git checkout (e.g. a copied or pip-installed tree) the commit is "unknown".
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import os
import platform
import resource
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pcam.errors import DataError
from pcam.fingerprint import EXECUTION_COMPUTE_KEYS
from pcam.io import write_text

log = logging.getLogger(__name__)

CODE_ROOT = Path(__file__).resolve().parent.parent  # the checkout (or site-packages) holding pcam
UNKNOWN = "unknown"
PACKAGES = ("torch", "timm", "snakemake", "pydensecrf2", "numpy", "pandas")
RUNS_DIR = ".runs"


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "--no-optional-locks", "-C", str(root), *args],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return proc.stdout.strip()


def git_state(root: Path = CODE_ROOT) -> dict[str, Any]:
    """{"commit": HEAD's sha or "unknown", "dirty": bool or None} of the checkout at `root`.

    Only a checkout whose top level is `root` itself counts: code copied or installed inside some
    other repository is "unknown". Dirty means a tracked file differs from HEAD.
    """
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
        if Path(top).resolve() != Path(root).resolve():
            return {"commit": UNKNOWN, "dirty": None}
        commit = _git(root, "rev-parse", "HEAD")
        changes = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": UNKNOWN, "dirty": None}
    return {"commit": commit, "dirty": bool(changes)}


def commit_label(state: Mapping[str, Any]) -> str:
    """The commit as the summary shows it: the sha, with "-dirty" when tracked files differed."""
    return f"{state['commit']}-dirty" if state["dirty"] else str(state["commit"])


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each distribution ("not installed" when absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment() -> dict[str, Any]:
    """Host, Python and package versions of this process, with the code's git state."""
    return {
        **git_state(),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "packages": package_versions(),
    }


# --------------------------------------------------------------------------- run records


def record_path(output: str | os.PathLike) -> Path:
    """Where the job that wrote `output` (a file or a shard folder) keeps its run record."""
    output = Path(output)
    return output.parent / RUNS_DIR / f"{output.name}.json"


def device_facts(compute: Mapping[str, Any]) -> dict[str, Any]:
    """Device and precision of the job that ran in this process, called once it is done.

    The device is CUDA exactly when the job initialised CUDA in this process (whatever chose
    it); the precision is `pcam.devices.autocast_dtype`'s policy for that device. Imports torch:
    call it only from jobs that already use it.
    """
    import torch

    from pcam.devices import autocast_dtype

    used_cuda = torch.cuda.is_initialized()
    device = torch.device("cuda" if used_cuda else "cpu")
    dtype = autocast_dtype(device, compute["mixed_precision"])
    names, peak = [], None
    if used_cuda:
        count = torch.cuda.device_count()
        names = [torch.cuda.get_device_name(i) for i in range(count)]
        peak = round(max(torch.cuda.max_memory_allocated(i) for i in range(count)) / 2**20, 1)
    return {
        "device": device.type,
        "device_names": names,
        "peak_gpu_mb": peak,  # tensors' peak on this process's busiest GPU (None on the CPU)
        "precision": {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype],
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "gpus_per_job": compute["gpus_per_job"],
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process and of its finished children (e.g. data loaders)."""
    kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )  # Linux reports KiB
    return round(kib / 1024, 1)


def write_run_record(
    command: str, output: str | os.PathLike, compute: Mapping[str, Any], started: str
) -> Path:
    """Write the run record of a finished job (rank 0 only under torchrun); returns its path."""
    path = record_path(output)
    if os.environ.get("RANK", "0") != "0":
        return path
    record = {
        "command": command,
        "output": str(output),
        "started": started,
        "finished": now(),
        "peak_rss_mb": peak_rss_mb(),
        **device_facts(compute),
        **environment(),
    }
    write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def read_run_records(experiment_dir: Path) -> list[dict[str, Any]]:
    """Run records under `experiment_dir` whose output still exists, oldest start first."""
    records = []
    for path in sorted(Path(experiment_dir).glob(f"**/{RUNS_DIR}/*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: unreadable run record ({exc})") from exc
        if Path(record["output"]).exists():
            records.append(record)
    return sorted(records, key=lambda r: (r["started"], r["output"]))


# --------------------------------------------------------------------------- per experiment


def resolved_settings(cfg: Mapping[str, Any], experiment: str) -> dict[str, Any]:
    """An experiment's supervision, dataset, compute and evaluation settings (those that change
    results) and the merged settings of every stage section it runs (what `provenance.json`
    records). `experiment`: its name or one seed's run of it (`NAME/seed-K`, `pcam.config.runs`)."""
    from pcam.config import run_supervision, stage_settings
    from pcam.pipeline import stage_sections

    supervision = run_supervision(dict(cfg), experiment)
    resolved = {
        "supervision": supervision,
        "dataset": cfg["dataset"],
        # what the numbers depend on: execution-only keys (processes, threads, shards) are left
        # out, so changing them re-runs nothing, provenance included
        "compute": {k: v for k, v in cfg["compute"].items() if k not in EXECUTION_COMPUTE_KEYS},
        "evaluation": {k: v for k, v in cfg["evaluation"].items() if k != "workers"},
    }
    for section in stage_sections(supervision):
        resolved[section] = stage_settings(dict(cfg), experiment, section)
    return resolved


def experiment_provenance(
    experiment: str, settings: Mapping[str, Any], experiment_dir: Path
) -> dict[str, Any]:
    """The provenance of one experiment: settings, code state, environment and its jobs.

    `settings`: the experiment's resolved settings (supervision, dataset, compute, evaluation and
    each stage section it runs), as the workflow passes them.
    """
    jobs = read_run_records(experiment_dir)
    return {
        "experiment": experiment,
        **environment(),
        "settings": dict(settings),
        "devices": sorted({j["device"] for j in jobs}),
        "precisions": sorted({j["precision"] for j in jobs}),
        "job_commits": sorted({commit_label(j) for j in jobs}),
        "started": min((j["started"] for j in jobs), default=None),
        "finished": max((j["finished"] for j in jobs), default=None),
        "written": now(),
        "jobs": jobs,
    }


def write_provenance(
    experiment: str, settings: Mapping[str, Any], experiment_dir: Path, out: Path
) -> dict[str, Any]:
    """Write `out` (JSON, atomically) and return what was written."""
    provenance = experiment_provenance(experiment, settings, experiment_dir)
    write_text(out, json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    log.info("provenance of %s: commit %s, %d job records", experiment,
             commit_label(provenance), len(provenance["jobs"]))  # fmt: skip
    return provenance


def read_provenance(path: Path) -> dict[str, Any]:
    """A provenance.json, with a clear error naming the file when it is unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable provenance file ({exc})") from exc
    for key in ("experiment", "commit", "dirty"):
        if key not in data:
            raise DataError(f"{path}: provenance file has no {key!r}")
    return data

"""Stale Snakemake locks: recover from a killed run without a manual `snakemake --unlock`.

Snakemake locks the files of a run under `.snakemake/locks/` and removes the locks when the run
ends; a SIGKILL'd run leaves them behind and the next run refuses to start. The workflow records
the run that holds the lock (`record_owner`, called from `onstart`, so only real runs write it:
host, pid and the process's start time) and, when it is parsed again, `release_stale_locks`
removes the locks only when they are provably stale:

- the recorded run was on this host and that process is gone, and
- no other Snakemake process on this host works in this directory.

Otherwise (a run still alive, a record from another host, which cannot be checked from here, or
no record at all) the locks stay and Snakemake's own message asks for `--unlock`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from pcam.io import write_text

log = logging.getLogger(__name__)

OWNER = "pcam-owner.json"
PROC = Path("/proc")


def lock_files(workdir: Path) -> list[Path]:
    """Snakemake's lock files of `workdir` (`.snakemake/locks/N.{input,output}.lock`)."""
    locks = Path(workdir) / ".snakemake" / "locks"
    return sorted(p for kind in ("input", "output") for p in locks.glob(f"*.{kind}.lock"))


def _stat_fields(pid: int, proc: Path = PROC) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state, ppid, ...), None when the process is gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    return stat.rpartition(")")[2].split()


def _start_time(pid: int, proc: Path = PROC) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22), None when it is gone."""
    fields = _stat_fields(pid, proc)
    return int(fields[19]) if fields else None


def _parent(pid: int, proc: Path = PROC) -> int | None:
    fields = _stat_fields(pid, proc)
    return int(fields[1]) if fields else None


def is_snakemake(argv: list[str]) -> bool:
    """True for `snakemake ...`, `python .../bin/snakemake ...` and `python -m snakemake ...`."""
    names = [os.path.basename(a) for a in argv[:2]]
    if "snakemake" in names:
        return True
    return any(a == "-m" and b == "snakemake" for a, b in zip(argv, argv[1:], strict=False))


def _ancestors(pid: int, proc: Path = PROC) -> set[int]:
    seen = {pid}
    while (parent := _parent(pid, proc)) and parent not in seen:
        seen.add(parent)
        pid = parent
    return seen


def live_holders(workdir: Path, proc: Path = PROC) -> list[int]:
    """Pids of Snakemake processes on this host whose working directory is `workdir`, other
    than this process and its ancestors (a `timeout` or shell that started us)."""
    workdir = Path(workdir).resolve()
    mine = _ancestors(os.getpid(), proc)
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = (entry / "cwd").resolve(strict=True)
        except OSError:
            continue  # gone, or another user's process (cannot work in our directory)
        if cwd == workdir and is_snakemake([a.decode(errors="replace") for a in argv if a]):
            found.append(int(entry.name))
    return sorted(found)


def record_owner(workdir: Path) -> None:
    """Record this process as the run holding `workdir`'s lock (call once the lock is taken)."""
    pid = os.getpid()
    record = {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid)}
    write_text(Path(workdir) / ".snakemake" / OWNER, json.dumps(record) + "\n")


def _read_owner(workdir: Path) -> dict | None:
    try:
        record = json.loads((Path(workdir) / ".snakemake" / OWNER).read_text())
        return record if {"host", "pid", "start"} <= set(record) else None
    except (OSError, ValueError):
        return None


def stale_reason(workdir: Path, proc: Path = PROC) -> tuple[bool, str]:
    """(True, why) when `workdir`'s locks are provably stale; (False, why not) otherwise."""
    owner = _read_owner(workdir)
    if owner is None:
        return False, "no record of the run that took the lock"
    if owner["host"] != socket.gethostname():
        return False, f"locked by a run on host {owner['host']} (pid {owner['pid']})"
    if _start_time(int(owner["pid"]), proc) == owner["start"]:
        return False, f"the run that took the lock (pid {owner['pid']}) is still alive"
    holders = live_holders(workdir, proc)
    if holders:
        return False, f"Snakemake process(es) {holders} work in this directory"
    return True, f"the run that took the lock (pid {owner['pid']}) is gone"


def release_stale_locks(workdir: Path, proc: Path = PROC) -> bool:
    """Remove `workdir`'s Snakemake locks when `stale_reason` proves them stale; True if removed.
    Logs why locks were kept, so the user knows when `snakemake --unlock` is theirs to run."""
    locks = lock_files(workdir)
    if not locks:
        return False
    stale, why = stale_reason(workdir, proc)
    if not stale:
        log.warning("keeping the lock of %s: %s", workdir, why)
        return False
    for path in locks:
        path.unlink(missing_ok=True)
    log.warning("removed the stale lock of %s (%s)", workdir, why)
    return True

"""Stale Snakemake locks are released only when provably stale (pcam.locks)."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from pcam import locks


def _lock(workdir):
    lock_dir = workdir / ".snakemake" / "locks"
    lock_dir.mkdir(parents=True)
    for name in ("0.input.lock", "0.output.lock"):
        (lock_dir / name).write_text("results/x\n")
    return lock_dir


def _record(workdir, **values):
    (workdir / ".snakemake" / locks.OWNER).write_text(json.dumps(values))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_nothing_to_release_without_locks(tmp_path):
    assert locks.release_stale_locks(tmp_path) is False


def test_a_killed_runs_lock_is_released(tmp_path):
    lock_dir = _lock(tmp_path)
    _record(tmp_path, host=socket.gethostname(), pid=_dead_pid(), start=1)
    assert locks.stale_reason(tmp_path)[0]
    assert locks.release_stale_locks(tmp_path) is True
    assert list(lock_dir.iterdir()) == []


def test_the_lock_of_a_live_run_stays(tmp_path):
    _lock(tmp_path)
    locks.record_owner(tmp_path)  # this very process: alive
    stale, why = locks.stale_reason(tmp_path)
    assert not stale and "still alive" in why
    assert locks.release_stale_locks(tmp_path) is False
    assert len(locks.lock_files(tmp_path)) == 2


def test_a_reused_pid_is_not_the_recorded_run(tmp_path):
    _lock(tmp_path)
    _record(tmp_path, host=socket.gethostname(), pid=os.getpid(), start=-1)
    assert locks.stale_reason(tmp_path)[0]


@pytest.mark.parametrize(
    "record, words",
    [
        ({"host": "another-login-node", "pid": 1, "start": 1}, "host another-login-node"),
        (None, "no record"),
    ],
)
def test_locks_that_cannot_be_checked_stay(tmp_path, record, words):
    _lock(tmp_path)
    if record:
        _record(tmp_path, **record)
    stale, why = locks.stale_reason(tmp_path)
    assert not stale and words in why
    assert locks.release_stale_locks(tmp_path) is False


def test_a_snakemake_working_here_keeps_the_lock(tmp_path):
    """Another Snakemake in the directory (e.g. started without the record) holds it."""
    fake = tmp_path / "bin" / "snakemake"
    fake.parent.mkdir()
    fake.write_text("import time\ntime.sleep(60)\n")
    work = tmp_path / "work"
    work.mkdir()
    _lock(work)
    _record(work, host=socket.gethostname(), pid=_dead_pid(), start=1)
    proc = subprocess.Popen([sys.executable, str(fake)], cwd=work)
    try:
        deadline = time.monotonic() + 10
        while proc.pid not in locks.live_holders(work) and time.monotonic() < deadline:
            time.sleep(0.1)
        stale, why = locks.stale_reason(work)
        assert not stale and str(proc.pid) in why
        assert locks.live_holders(tmp_path) == []  # another directory: not a holder
    finally:
        proc.kill()
        proc.wait()
    assert locks.release_stale_locks(work) is True


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["snakemake", "--cores", "2"], True),
        (["/venv/bin/python", "/venv/bin/snakemake", "-n"], True),
        (["python3", "-m", "snakemake", "--cores", "1"], True),
        (["timeout", "600", "snakemake"], False),  # a wrapper is not Snakemake itself
        (["vim", "workflow/Snakefile"], False),
        (["python", "-m", "pytest", "tests/test_snakemake.py"], False),
    ],
)
def test_is_snakemake(argv, expected):
    assert locks.is_snakemake(argv) is expected

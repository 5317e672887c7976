"""Per-job logging: the log file a rule declares, and a history that keeps every attempt.

Snakemake deletes a job's declared log before each attempt, so a retry or a re-run would lose
what the first attempt said. Every record therefore also goes to `{log stem}.history.log`
beside it, which nothing deletes; each attempt starts with a header naming the command, the
process and the thread count the job was given (Snakemake exports a rule's `threads:` as
OMP_NUM_THREADS, which torch follows).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

log = logging.getLogger("pcam")

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def history_path(log_file: str | os.PathLike) -> Path:
    """`logs/x/job.log` -> `logs/x/job.history.log` (appended to by every attempt)."""
    path = Path(log_file)
    return path.with_name(f"{path.stem}.history{path.suffix or '.log'}")


def setup_logging(log_file: str | None, verbose: bool, command: str) -> None:
    """Log to stderr, and to `log_file` and its history when given; announce the attempt."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers += [logging.FileHandler(log_file), logging.FileHandler(history_path(log_file))]
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=FORMAT,
        handlers=handlers,
        force=True,
    )
    if log_file:
        log.info(
            "pcam %s: attempt started, pid %d on %s, OMP_NUM_THREADS=%s",
            command,
            os.getpid(),
            socket.gethostname(),
            os.environ.get("OMP_NUM_THREADS", "unset"),
        )

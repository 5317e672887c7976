"""Live training curves: the curve CSV and TensorBoard event files, written as training goes.

A row is {step, epoch, lr, <every logged term>, images_per_s, elapsed_s} (or {step, epoch,
selection_score, elapsed_s} after an epoch's selection). The rows so far live in the checkpoint;
the CSV (atomic rewrite) and the event files are views of them, so a resumed run rewrites both
from the checkpoint's rows and no step is ever written twice: at every start the event files of
the directory are replaced by a replay of those rows. TensorBoard scalars are named after the
CSV columns; wall times are the training's start time plus `elapsed_s` (training seconds,
accumulated over resumes).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path

from pcam.io import write_text

log = logging.getLogger(__name__)

Row = dict[str, float]
_NOT_SCALARS = ("step", "epoch", "elapsed_s")
EVENTS_GLOB = "events.out.tfevents.*"


def curve_csv(rows: list[Row]) -> str:
    """The training curve as CSV text (columns: the rows' keys, in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns or ["step"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class TermWindow:
    """Running means of the logged terms between two curve rows."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, terms: dict[str, float]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1

    def row(self, step: int, epoch: int, lr: float, global_batch: int) -> Row:
        seconds = max(time.perf_counter() - self.start, 1e-9)
        means = {k: v / self.steps for k, v in self.sums.items()}
        return {
            "step": step,
            "epoch": epoch,
            "lr": lr,
            **means,
            "images_per_s": round(self.steps * global_batch / seconds, 3),
        }


class CurveLog:
    """The rows of one training, mirrored to `csv_path` and to event files in `tb_dir`.

    rows: those of the checkpoint resumed from (written out at once). started: the unix time the
    training first started; elapsed: its training seconds so far. `enabled=False` (ranks > 0):
    rows are kept, nothing is written.
    """

    def __init__(
        self,
        csv_path: Path,
        tb_dir: Path,
        rows: list[Row],
        started: float,
        elapsed: float,
        enabled: bool = True,
    ) -> None:
        self.csv_path, self.tb_dir, self.enabled = csv_path, tb_dir, enabled
        self.rows = list(rows)
        self.started, self._elapsed_before, self._since = started, elapsed, time.perf_counter()
        self._writer = None
        if enabled:
            self._writer = _fresh_writer(tb_dir)
            for row in self.rows:
                self._scalars(row)
            self._flush()

    def elapsed(self) -> float:
        """Training seconds so far, this process's and those before the resume."""
        return self._elapsed_before + time.perf_counter() - self._since

    def add(self, row: Row) -> None:
        """Append a row (its `elapsed_s` is set here) and bring both files up to date."""
        row = {**row, "elapsed_s": round(self.elapsed(), 3)}
        self.rows.append(row)
        if self.enabled:
            self._scalars(row)
            self._flush()

    def _scalars(self, row: Row) -> None:
        wall = self.started + float(row["elapsed_s"])
        for tag, value in row.items():
            if tag not in _NOT_SCALARS:
                self._writer.add_scalar(tag, float(value), int(row["step"]), walltime=wall)

    def _flush(self) -> None:
        write_text(self.csv_path, curve_csv(self.rows))
        self._writer.flush()  # a SIGKILL after this loses no logged step

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _fresh_writer(tb_dir: Path):
    """A SummaryWriter on `tb_dir` after removing its old event files (a replay follows)."""
    from torch.utils.tensorboard import SummaryWriter  # imported here: pulls in tensorboard

    old = sorted(tb_dir.glob(EVENTS_GLOB))
    for path in old:
        path.unlink()
    if old:
        log.info("%s: %d event file(s) replaced by the checkpoint's curve", tb_dir, len(old))
    return SummaryWriter(log_dir=str(tb_dir), flush_secs=3600)

"""Report charts (PNG, matplotlib Agg), each sized to fit the report's result pane.

Snakemake's report shows a PNG at its natural size in a centred pane (about 1,050 px wide in a
1,400 px window); what is larger is cut off and cannot be scrolled to. Every figure here is
therefore drawn at a fixed pixel size of at most `MAX_WIDTH_PX` x `MAX_HEIGHT_PX`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pcam.errors import DataError  # noqa: E402
from pcam.io import atomic_path  # noqa: E402
from pcam.pipeline import stage_order, train_stage_names  # noqa: E402
from pcam.summary import headline  # noqa: E402

# The pane of a 1,400 x 1,000 window is about 1,050 x 860 px (navbar and browser chrome aside).
MAX_WIDTH_PX, MAX_HEIGHT_PX = 980, 780
DPI = 100
CLASSES_PER_ROW = 11  # per-class chart: more classes wrap onto further rows (VOC: 2 rows)
ABSENT_MARK = "x"


def _figure(width_px: int, height_px: int, nrows: int = 1, ncols: int = 1):
    """A figure of exactly width_px x height_px pixels (bounded by the pane size)."""
    width_px, height_px = min(width_px, MAX_WIDTH_PX), min(height_px, MAX_HEIGHT_PX)
    return plt.subplots(
        nrows, ncols, figsize=(width_px / DPI, height_px / DPI), dpi=DPI, squeeze=False,
        layout="constrained",
    )  # fmt: skip


def save(fig, out: Path) -> None:
    """Write the figure as PNG atomically, at its own pixel size (no tight bounding box)."""
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)


# --------------------------------------------------------------------------- per-class IoU


def per_class_table(evals: Sequence[Path]) -> pd.DataFrame:
    """Per-class IoU in percent: one row per class, one column per stage (the CSV's stem).

    NaN where a class is absent from both the prediction and the ground truth of that stage.
    """
    from pcam.evaluate import read_per_class

    columns = {Path(p).stem: read_per_class(Path(p)) for p in evals}
    return 100 * pd.DataFrame(columns)


def per_class_figure(evals: Sequence[Path], out: Path) -> None:
    """Grouped bars of per-class IoU per stage; an absent class gets a grey mark, not a bar."""
    save(draw_per_class(per_class_table(evals)), out)


def _stage_bars(ax, x: np.ndarray, values: np.ndarray, width: float, colour, label) -> None:
    """One stage's bars at `x`; NaN (absent class) gets a grey mark, a measured 0 a "0"."""
    absent = np.isnan(values)
    ax.bar(x[~absent], values[~absent], width, color=colour, label=label)
    ax.plot(x[absent], np.full(absent.sum(), 2.0), ABSENT_MARK, color="grey")
    for x_zero in x[values == 0]:
        ax.text(x_zero, 0.5, "0", ha="center", va="bottom", fontsize="xx-small")


def draw_per_class(table: pd.DataFrame):
    """The per-class chart of `per_class_table`'s frame (rows of at most CLASSES_PER_ROW)."""
    classes, stages = list(table.index), list(table.columns)
    nrows = max(1, -(-len(classes) // CLASSES_PER_ROW))
    per_row = min(len(classes), CLASSES_PER_ROW)
    fig, axes = _figure(MAX_WIDTH_PX, 110 + 290 * nrows, nrows=nrows)
    width = 0.8 / max(len(stages), 1)
    colours = plt.get_cmap("tab10").colors
    for row, ax in enumerate(axes[:, 0]):
        chunk = table.iloc[row * CLASSES_PER_ROW : (row + 1) * CLASSES_PER_ROW]
        x = np.arange(len(chunk))
        for i, stage in enumerate(stages):
            offsets = x + (i - (len(stages) - 1) / 2) * width
            label = stage if row == 0 else None
            _stage_bars(ax, offsets, chunk[stage].to_numpy(float), width, colours[i % 10], label)
        ax.set_xticks(x, list(chunk.index), rotation=30, ha="right", fontsize="small")
        ax.set_xlim(-0.5, per_row - 0.5)
        ax.set_ylim(0, 100)
        ax.set_ylabel("IoU (%)")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].plot([], [], ABSENT_MARK, color="grey", label="absent (no GT, no prediction)")
    fig.legend(loc="outside upper center", ncol=min(len(stages) + 1, 6), fontsize="small")
    return fig


# --------------------------------------------------------------------------- training curves

_NOT_PLOTTED = {"step", "epoch", "images_per_s", "elapsed_s", "lr", "alpha"}


def _read_curve(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read the training curve ({exc})") from exc
    return frame.apply(pd.to_numeric, errors="coerce")


def curves_figure(curves: Sequence[Path], out: Path) -> None:
    """One panel per training stage, stacked: loss terms (left axis), learning rate (right)."""
    fig, axes = _figure(MAX_WIDTH_PX, 60 + 240 * len(curves), nrows=len(curves))
    for ax, path in zip(axes[:, 0], curves, strict=True):
        data = _read_curve(Path(path))
        ax.set_title(Path(path).parent.name, fontsize="medium")
        if "step" not in data or data.empty:
            ax.text(0.5, 0.5, "no rows", ha="center", transform=ax.transAxes)
            continue
        for name in data.columns:
            if name not in _NOT_PLOTTED and data[name].notna().any():
                ax.plot(data["step"], data[name], label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="upper right")
        if "lr" in data:
            twin = ax.twinx()
            twin.plot(data["step"], data["lr"], color="grey", linestyle=":", label="lr")
            twin.set_ylabel("lr (dotted)", color="grey")
    save(fig, out)


# --------------------------------------------------------------------------- Table 2


def table2_stages() -> list[str]:
    """The label stages of the paper's Table 2 (CAM, +RW, +dCRF), in pipeline order."""
    return [name for name in stage_order() if name in train_stage_names()]


def table2_figure(summary: pd.DataFrame, out: Path) -> None:
    """Bars of mIoU per weak experiment for CAM / +RW / +dCRF; the paper's beside, hatched.

    `summary`: the summary as `pcam.summary.read_summary_csv` returns it.
    """
    stages = table2_stages()
    rows = headline(summary)  # with seeds: their mean rows
    rows = rows[rows["stage"].isin(stages)]
    experiments = list(dict.fromkeys(rows["experiment"]))
    fig, axes = _figure(MAX_WIDTH_PX, 420)
    ax = axes[0, 0]
    has_paper = (rows["paper_miou"] != "").any()
    width = 0.8 / (len(stages) * (2 if has_paper else 1))
    colours = plt.get_cmap("tab10").colors
    for i, stage in enumerate(stages):
        cells = rows[rows["stage"] == stage].set_index("experiment").reindex(experiments)
        for j, column in enumerate(["miou", "paper_miou"] if has_paper else ["miou"]):
            values = pd.to_numeric(cells[column], errors="coerce").to_numpy(dtype=float)
            k = i * (2 if has_paper else 1) + j
            offsets = np.arange(len(experiments)) - 0.4 + (k + 0.5) * width
            label = stage if column == "miou" else f"{stage} (paper)"
            bars = ax.bar(offsets, values, width, color=colours[i % 10], label=label,
                          alpha=0.45 if j else 1.0, hatch="//" if j else None)  # fmt: skip
            ax.bar_label(bars, fmt="%.1f", fontsize="x-small", padding=1)
    ax.set_xticks(np.arange(len(experiments)), experiments)
    ax.set_ylim(0, 100)
    ax.set_ylabel("mIoU (%)")
    ax.set_title("Pseudo-label quality on the training images (paper Table 2)", fontsize="medium")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncol=len(stages), loc="upper left")
    save(fig, out)

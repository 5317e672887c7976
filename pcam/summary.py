"""The summary table: one row per experiment x stage, with the paper's value beside ours on VOC.

Contract (`results/summary.csv`; extend, never rename): experiment, stage, split, n_images,
threshold, miou, fg_miou, paper_miou, then best_threshold, best_miou, miou_official,
pixel_accuracy. mIoU values are percentages.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from pcam.errors import DataError
from pcam.io import write_text
from pcam.pipeline import stage_order, train_stage_names

COLUMNS = [
    "experiment",
    "stage",
    "split",
    "n_images",
    "threshold",
    "miou",
    "fg_miou",
    "paper_miou",
    "best_threshold",
    "best_miou",
    "miou_official",
    "pixel_accuracy",
]


# Paper values on VOC 2012 (spec 12). Table 2 (train split): CAM, +RW, +dCRF per backbone for the
# full puzzle losses; Table 1 / Table 2 baseline rows for ResNet-50 with other loss subsets.
_TABLE2 = {
    ("resnet50", ("cls",)): (47.82, 58.10, 59.70),
    ("resnet50", ("cls", "pcls", "re")): (51.53, 64.16, 64.70),
    ("resnest50d", ("cls", "pcls", "re")): (57.59, 69.48, 69.91),
    ("resnest101e", ("cls", "pcls", "re")): (61.85, 71.92, 72.46),
    ("resnest269e", ("cls", "pcls", "re")): (62.45, 74.14, 74.67),
}
_TABLE1_CAM = {
    ("resnet50", ("cls", "pcls")): 47.70,
    ("resnet50", ("cls", "re")): 49.21,
}
# Table 3 (val, DeepLabV3+ on the Puzzle-CAM pseudo-labels; later paper version via Papers with
# Code, the repo PDF has 66.8 / 69.5). The paper reports these with dCRF at inference.
_TABLE3_VAL = {"resnest101e": 66.9, "resnest269e": 71.9}


def paper_values(classifier: Mapping, deeplab: Mapping, supervision: str) -> dict[str, float]:
    """The paper's mIoU for each stage of an experiment with these settings (empty if none)."""
    if supervision != "weak":
        return {}
    terms = tuple(t for t in ("cls", "pcls", "re") if t in classifier["loss_terms"])
    backbone = classifier["backbone"]
    out: dict[str, float] = {}
    if (backbone, terms) in _TABLE2:
        out.update(zip(("cam", "rw", "rw_crf"), _TABLE2[(backbone, terms)], strict=True))
    elif (backbone, terms) in _TABLE1_CAM:
        out["cam"] = _TABLE1_CAM[(backbone, terms)]
    full_method = terms == ("cls", "pcls", "re")
    if full_method and deeplab["backbone"] == backbone and backbone in _TABLE3_VAL:
        out["deeplab_crf"] = _TABLE3_VAL[backbone]
    return out


def _stage_of(path: Path) -> tuple[str, str]:
    """(experiment, stage) from results/{experiment}/eval/{stage}.csv."""
    if path.parent.name != "eval":
        raise DataError(f"{path}: expected a path like results/EXPERIMENT/eval/STAGE.csv")
    return path.parent.parent.name, path.stem


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4g}"
    return str(value)


def summary_rows(
    evals: Sequence[Path],
    splits: Mapping[str, str],
    paper: Mapping[str, Mapping[str, float]],
) -> list[dict]:
    """Rows of the summary from evaluation CSVs; `splits` maps "train"/"val" to split names."""
    from pcam.evaluate import read_summary

    rows = []
    on_train = train_stage_names()
    for path in evals:
        experiment, stage = _stage_of(Path(path))
        s = read_summary(path)
        rows.append(
            {
                "experiment": experiment,
                "stage": stage,
                "split": splits["train" if stage in on_train else "val"],
                "n_images": s["n_images"],
                "threshold": s.get("threshold"),
                "miou": s["miou"],
                "fg_miou": s["fg_miou"],
                "paper_miou": paper.get(experiment, {}).get(stage),
                "best_threshold": s.get("best_threshold"),
                "best_miou": s.get("best_miou"),
                "miou_official": s.get("miou_official"),
                "pixel_accuracy": s.get("pixel_accuracy"),
            }
        )
    order = {name: i for i, name in enumerate(stage_order())}
    rows.sort(key=lambda r: (r["experiment"], order.get(r["stage"], len(order))))
    return rows


def render_table(rows: Sequence[Mapping]) -> str:
    """A fixed-width text table of the main columns, for the terminal."""
    cols = [
        "experiment",
        "stage",
        "split",
        "n_images",
        "threshold",
        "miou",
        "fg_miou",
        "best_miou",
        "paper_miou",
    ]
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def summarize(
    evals: Sequence[Path],
    *,
    out: Path,
    splits: Mapping[str, str],
    paper: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """Write `out` (CSV, atomically) from the evaluation CSVs and return the text table."""
    rows = summary_rows(evals, splits, paper or {})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    write_text(out, buf.getvalue())
    return render_table(rows)

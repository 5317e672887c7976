"""The summary table: one row per experiment x stage, with the paper's value beside ours on VOC.

Contract (`results/summary.csv`; extend, never rename): experiment, stage, split, n_images,
threshold, miou, fg_miou, paper_miou, then best_threshold, best_miou, miou_official,
pixel_accuracy, then class_images and confused_images (the evaluation's foreground totals: image x
class pairs of the ground truth, and how many of them the stage labelled mostly as one other
class; `pcam.metrics.class_image_counts`), then weak_full_ratio (a weak experiment's DeepLab mIoU
over the fully supervised one's, with or without dCRF alike) and commit, always last (the
experiment's `provenance.json`: git sha, with "-dirty" when tracked files differed, "unknown"
outside a git checkout). mIoU values are percentages. Nothing in it depends on time or host, so
two runs of one commit write the same bytes.

Seeds: when an experiment runs several seeds (results/{experiment}/seed-K/eval/...), the table
gains `SEED_COLUMNS` after those: each of its stages has one row per seed (`seed` = K) and a
`seed` = "mean" row whose numeric columns are the means over the seeds (so every column keeps its
meaning), `n_seeds` and the sample standard deviation (ddof 1), min and max of `miou`. Rows of
experiments without seeds have these cells empty; with no seeded experiment they are absent, so
the table is what it was before seeds existed, byte for byte.

The table is a pandas frame (`summary_frame`); `display_frame` is the one human-readable view of
it, printed by `pcam show-summary` and rendered as HTML in the report.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from pcam.config import run_folder
from pcam.errors import DataError
from pcam.io import write_text
from pcam.pipeline import (
    segmentation_prefixes,
    segmentation_stages,
    split_roles,
    stage_order,
)

BASE_COLUMNS = [
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
CLASS_COLUMNS = ["class_images", "confused_images"]
COLUMNS = [*BASE_COLUMNS, *CLASS_COLUMNS, "weak_full_ratio", "commit"]
SEED_COLUMNS = ["seed", "n_seeds", "miou_std", "miou_min", "miou_max"]
UNKNOWN_COMMIT = "unknown"
MEAN_SEED = "mean"  # the `seed` of the row aggregating an experiment's seeds
# Columns of the per-seed rows: equal over seeds (the mean row repeats them), or averaged.
_SAME_OVER_SEEDS = ["split", "n_images", "threshold", "paper_miou", "class_images"]
_MEAN_OVER_SEEDS = ["miou", "fg_miou", "best_threshold", "best_miou", "miou_official",
                    "pixel_accuracy", "confused_images"]  # fmt: skip


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


_SEED_FOLDER = re.compile(r"seed-([0-9]+)")


def _stage_of(path: Path) -> tuple[str, int | None, str]:
    """(experiment, seed or None, stage) from results/{experiment}[/seed-K]/eval/{stage}.csv."""
    if path.parent.name != "eval":
        raise DataError(f"{path}: expected a path like results/EXPERIMENT/eval/STAGE.csv")
    run = path.parent.parent
    seed = _SEED_FOLDER.fullmatch(run.name)  # experiments are never named seed-K (schema)
    if seed:
        return run.parent.name, int(seed.group(1)), path.stem
    return run.name, None, path.stem


def _fmt(value) -> str:
    """One cell of the CSV: "" for missing, 2 decimals from 1 up, 4 significant digits below."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4g}"
    return str(value)


def _eval_row(path: Path, splits: Mapping[str, str], paper: Mapping) -> dict:
    """The base columns of one evaluation CSV's row, and its `seed` (None: no seeds)."""
    from pcam.evaluate import read_summary

    experiment, seed, stage = _stage_of(Path(path))
    s = read_summary(path)
    return {
        "experiment": experiment,
        "stage": stage,
        "split": splits[split_roles()[stage]],
        **{k: s[k] for k in ("n_images", "threshold", "miou", "fg_miou")},
        "paper_miou": paper[experiment][stage] if stage in paper.get(experiment, ()) else None,
        **{k: s[k] for k in ("best_threshold", "best_miou", "miou_official", "pixel_accuracy")},
        **{k: s[k] for k in CLASS_COLUMNS},
        "seed": seed,
    }


def _weak_to_full() -> dict[str, str]:
    """Each weak segmentation stage -> the fully supervised stage of the same kind (± dCRF), for
    every segmentation network (`deeplab` -> `deeplab_full`, `segformer_crf` -> ...)."""
    pairs = {}
    for prefix in segmentation_prefixes():
        weak, full = segmentation_stages("weak", prefix), segmentation_stages("full", prefix)
        pairs.update({w.name: f.name for w, f in zip(weak, full, strict=True)})
    return pairs


def headline(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment x stage: the seeds' mean row where there are seeds, else the row."""
    if "seed" not in frame.columns:
        return frame
    single = frame["seed"].map(lambda s: s is None or s == "" or s == MEAN_SEED)
    return frame[single]


def weak_full_ratio(frame: pd.DataFrame) -> pd.Series:
    """Each weak DeepLab row's mIoU over the fully supervised row of the same kind (± dCRF);
    with seeds, over the fully supervised experiment's mean row.

    Defined when the table holds exactly one fully supervised experiment; NaN elsewhere.
    """
    pairs = _weak_to_full()
    full = headline(frame)
    full = full[full["stage"].isin(pairs.values())]
    if full["experiment"].nunique() != 1:
        return pd.Series(math.nan, index=frame.index)
    reference = full.set_index("stage")["miou"].astype(float)
    return frame["miou"].astype(float) / frame["stage"].map(pairs).map(reference)


def seed_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The "mean" row of every experiment x stage with seeds: `_MEAN_OVER_SEEDS` averaged,
    `_SAME_OVER_SEEDS` repeated (DataError when the seeds disagree on one), `n_seeds` and the
    standard deviation (pandas' default, ddof 1), min and max of `miou`."""
    seeded = frame[frame["seed"].notna()]
    rows = []
    for (experiment, stage), group in seeded.groupby(["experiment", "stage"], sort=False):
        for column in _SAME_OVER_SEEDS:
            if group[column].nunique(dropna=False) > 1:
                raise DataError(
                    f"{experiment} {stage}: the seeds' evaluations differ in {column} "
                    f"({sorted(map(str, group[column].unique()))}): re-run the stale ones"
                )
        miou = group["miou"].astype(float)
        rows.append({
            "experiment": experiment, "stage": stage, "seed": MEAN_SEED,
            **{c: group[c].iloc[0] for c in _SAME_OVER_SEEDS},
            **{c: pd.to_numeric(group[c]).mean() for c in _MEAN_OVER_SEEDS},
            "n_seeds": len(group), "miou_std": miou.std(), "miou_min": miou.min(),
            "miou_max": miou.max(),
        })  # fmt: skip
    return pd.DataFrame.from_records(rows)


def _commit_of(frame: pd.DataFrame, commits: Mapping[str, str]) -> pd.Series:
    """Each row's commit: its run's (`NAME`, `NAME/seed-K`); a mean row's when its seeds agree,
    else "mixed"."""
    runs = [run_folder(e, s) for e, s in zip(frame["experiment"], frame["seed"], strict=True)]
    labels = pd.Series([commits.get(r, UNKNOWN_COMMIT) for r in runs], index=frame.index)
    per_seed = frame["seed"].map(lambda s: s is not None and s != MEAN_SEED)
    for index in frame.index[frame["seed"] == MEAN_SEED]:
        seeds = labels[per_seed & (frame["experiment"] == frame.at[index, "experiment"])]
        labels[index] = seeds.iloc[0] if seeds.nunique() == 1 else "mixed"
    return labels


def _seed_rank(seed: int | str | None) -> float:
    """Sort key within an experiment x stage: the seeds in order, then their mean row."""
    return math.inf if seed == MEAN_SEED else -1 if seed is None else seed


def summary_frame(
    evals: Sequence[Path],
    splits: Mapping[str, str],
    paper: Mapping[str, Mapping[str, float]],
    commits: Mapping[str, str],
) -> pd.DataFrame:
    """The summary (columns `COLUMNS`, then `SEED_COLUMNS` when an experiment has seeds), sorted
    by experiment, pipeline stage order, then seed (the mean row after its seeds).

    `splits` maps "train"/"val"/"aug" (pcam.pipeline.SPLIT_ROLES) to split names; `paper`
    experiment -> stage -> mIoU; `commits` run (`NAME` or `NAME/seed-K`, as in
    `provenance.json`) -> commit label (missing: "unknown").
    """
    rows = [_eval_row(Path(p), splits, paper) for p in evals]
    frame = pd.DataFrame.from_records(rows, columns=BASE_COLUMNS)
    for column in [*CLASS_COLUMNS, "seed"]:  # ints or None, not floats
        frame[column] = pd.Series([row[column] for row in rows], index=frame.index, dtype=object)
    with_seeds = frame["seed"].notna().any()
    if with_seeds:
        frame = pd.concat([frame, seed_rows(frame)], ignore_index=True)
        counts = [None if pd.isna(n) else int(n) for n in frame["n_seeds"]]  # ints, not 3.0
        frame["n_seeds"] = pd.Series(counts, index=frame.index, dtype=object)
    order = {name: i for i, name in enumerate(stage_order())}
    frame["_order"] = frame["stage"].map(lambda s: order.get(s, len(order)))
    frame["_seed"] = frame["seed"].map(_seed_rank)
    frame = frame.sort_values(["experiment", "_order", "_seed"], kind="stable")
    frame = frame.drop(columns=["_order", "_seed"]).reset_index(drop=True)
    frame["weak_full_ratio"] = weak_full_ratio(frame)
    frame["commit"] = _commit_of(frame, commits)
    return frame[[*COLUMNS, *SEED_COLUMNS]] if with_seeds else frame[COLUMNS]


def to_csv(frame: pd.DataFrame) -> str:
    """The CSV text of a summary frame, every cell formatted by `_fmt`."""
    buf = io.StringIO()
    frame.astype(object).map(_fmt).to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def read_summary_csv(path: str | Path | io.TextIOBase) -> pd.DataFrame:
    """`results/summary.csv` as written (cells as strings, "" for missing)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot read the summary ({exc})") from exc
    missing = [c for c in BASE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: not a summary table (no column {missing[0]!r})")
    # A summary written before these columns existed: no ratio or counts, commit unknown.
    later = [("weak_full_ratio", ""), ("commit", UNKNOWN_COMMIT), *((c, "") for c in CLASS_COLUMNS)]
    for column, missing_value in later:
        if column not in frame.columns:
            frame[column] = missing_value
    return frame


# --------------------------------------------------------------------------- the readable view

GT_BEST = "GT-chosen best"
DISPLAY_NOTES = (
    f"mIoU in percent. {GT_BEST}: mIoU at the background threshold chosen with ground truth "
    "(a diagnostic, not a weakly supervised result). weak/full: DeepLab on pseudo-labels over "
    "DeepLab on ground truth."
)
SEED_NOTE = (
    "Seeds: one row per seed, then the seeds' mean (mIoU as mean ± sample standard deviation; "
    "min and max in summary.csv)."
)


def display_notes(summary: pd.DataFrame) -> str:
    """The notes under a readable table: `DISPLAY_NOTES`, and `SEED_NOTE` when it has seeds."""
    seeded = "seed" in summary.columns and (summary["seed"] == MEAN_SEED).any()
    return f"{DISPLAY_NOTES} {SEED_NOTE}" if seeded else DISPLAY_NOTES


def _best(summary: pd.DataFrame) -> pd.Series:
    """The GT-chosen best as "miou @threshold" on rows with a sweep, "" elsewhere."""
    joined = summary["best_miou"] + " @" + summary["best_threshold"]
    return joined.where(summary["best_miou"] != "", "")


def _miou_cell(summary: pd.DataFrame) -> pd.Series:
    """mIoU as shown: "mean ± std" on the seeds' mean rows (std to 2 decimals, like the mIoU:
    equal seeds give pandas' float noise, e.g. 2e-15, in the CSV), the value elsewhere."""
    if "seed" not in summary.columns:
        return summary["miou"]
    mean = summary["seed"] == MEAN_SEED
    std = summary["miou_std"].where(~mean, summary["miou_std"].map(_two_decimals))
    return (summary["miou"] + " ± " + std).where(mean, summary["miou"])


def _two_decimals(cell: str) -> str:
    return f"{float(cell):.2f}" if cell else cell


def display_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """The human-readable table of a summary read by `read_summary_csv` (string cells).

    Columns: experiment, stage, split, (seed, when an experiment has seeds), images, threshold,
    mIoU ("mean ± std" on a seeds' mean row), fg mIoU, the GT-chosen best (mIoU @ threshold),
    and, when any row has one, paper mIoU and weak/full.
    """
    view = pd.DataFrame(
        {
            "experiment": summary["experiment"],
            "stage": summary["stage"],
            "split": summary["split"],
            "seed": summary["seed"] if "seed" in summary.columns else "",
            "images": summary["n_images"],
            "threshold": summary["threshold"],
            "mIoU": _miou_cell(summary),
            "fg mIoU": summary["fg_miou"],
            GT_BEST: _best(summary),
            "paper mIoU": summary["paper_miou"],
            "weak/full": summary["weak_full_ratio"],
        }
    )
    optional = ["seed", "paper mIoU", "weak/full"]
    return view.drop(columns=[c for c in optional if (view[c] == "").all()])


def pivot_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Experiments x the weak experiments' stages (mIoU, string cells; "mean ± std" over seeds);
    a fully supervised row's stages sit under their weak counterparts; score-map stages add the
    GT-chosen best."""
    summary = headline(summary)
    full_to_weak = {full: weak for weak, full in _weak_to_full().items()}
    best = _best(summary)
    miou = _miou_cell(summary)
    cell = miou.where(best == "", miou + f" ({GT_BEST} " + best + ")")
    frame = summary.assign(column=summary["stage"].replace(full_to_weak), cell=cell)
    pivot = frame.pivot(index="experiment", columns="column", values="cell")
    columns = [name for name in stage_order() if name in pivot.columns]
    return pivot.reindex(columns=columns).fillna("").reset_index().rename_axis(columns=None)


def commits_line(summary: pd.DataFrame) -> str:
    """Which commit each experiment's numbers came from (per seed: not the mean rows), as one
    line."""
    if "seed" in summary.columns:
        summary = summary[summary["seed"] != MEAN_SEED]
    groups = summary.groupby("commit", sort=True)["experiment"].unique()
    parts = [f"{commit} ({', '.join(sorted(names))})" for commit, names in groups.items()]
    return "commit: " + "; ".join(parts)


def fixed_width(frame: pd.DataFrame, text_columns: int = 3) -> str:
    """A frame of strings as aligned text: the first `text_columns` left, the numbers right."""
    rows = [list(frame.columns), *(list(r) for r in frame.itertuples(index=False))]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(frame.columns))]
    return "\n".join(
        "  ".join(
            str(v).ljust(w) if i < text_columns else str(v).rjust(w)
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )


def render_text(summary: pd.DataFrame) -> str:
    """The fixed-width table `pcam show-summary` prints (and `make demo` at its end)."""
    table = fixed_width(display_frame(summary))
    return f"{table}\n\n{commits_line(summary)}\n{display_notes(summary)}"


def summarize(
    evals: Sequence[Path],
    *,
    out: Path,
    splits: Mapping[str, str],
    paper: Mapping[str, Mapping[str, float]] | None = None,
    commits: Mapping[str, str] | None = None,
) -> str:
    """Write `out` (CSV, atomically) from the evaluation CSVs and return the text table."""
    text = to_csv(summary_frame(evals, splits, paper or {}, commits or {}))
    write_text(out, text)
    return render_text(read_summary_csv(io.StringIO(text)))

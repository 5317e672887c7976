"""The `pcam` sub-commands of the results: summary, provenance, report pages, rendered docs.

Registered on the main parser by `pcam.cli.build_parser`; like every handler, each imports its
module lazily (none of these imports torch).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from pcam.errors import PcamError

Add = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def _summarize(a: argparse.Namespace) -> int:
    from pcam.provenance import commit_label, read_provenance
    from pcam.summary import summarize

    commits = {}
    for path in a.provenance or []:
        provenance = read_provenance(Path(path))
        commits[provenance["experiment"]] = commit_label(provenance)
    table = summarize(
        [Path(p) for p in a.evals], out=Path(a.out), splits=a.splits, paper=a.paper,
        commits=commits,
    )  # fmt: skip
    print(table)
    return 0


def _show_summary(a: argparse.Namespace) -> int:
    from pcam.summary import read_summary_csv, render_text

    print(render_text(read_summary_csv(Path(a.summary))))
    return 0


def _summary_page(a: argparse.Namespace) -> int:
    from pcam.report.summary_page import write_summary_pages

    write_summary_pages(
        Path(a.summary), out_page=Path(a.out), out_fragment=Path(a.fragment),
        out_chart=Path(a.chart),
    )  # fmt: skip
    return 0


def _provenance(a: argparse.Namespace) -> int:
    from pcam.provenance import write_provenance

    write_provenance(a.experiment, a.settings, Path(a.dir), Path(a.out))
    return 0


def _render_docs(a: argparse.Namespace) -> int:
    from pcam import render_docs

    docs = Path(a.docs)
    if a.check:
        stale = render_docs.stale_documents(docs)
        for path in stale:
            print(f"{path}: differs from its rendering (run `pcam render-docs`)", file=sys.stderr)
        return 1 if stale else 0
    if a.snapshot:
        folder = render_docs.take_snapshot(Path(a.results), docs, a.snapshot)
        print(f"snapshot of {a.results} in {folder}")
    for path in render_docs.write_documents(docs):
        print(f"rendered {path}")
    return 0


# Gallery options -> the scored stage whose outputs they hold (pcam.pipeline).
_GALLERY_STAGES = {
    "cams": "cam", "rw": "rw", "pseudo": "rw_crf", "deeplab": "deeplab",
    "deeplab_crf": "deeplab_crf",
}  # fmt: skip


def _gallery(a: argparse.Namespace) -> int:
    from pcam.cli import _dataset
    from pcam.pipeline import scored_stages
    from pcam.report.gallery import Column, write_gallery

    stages = {s.name: s for s in scored_stages("weak")}
    columns = [
        Column(name, tuple(Path(d) for d in dirs), stages[name].score_key)
        for option, name in _GALLERY_STAGES.items()
        if (dirs := getattr(a, option))
    ]
    if not columns:
        raise PcamError("figure gallery: give at least one of --cams --rw --pseudo --deeplab")
    title = a.title or f"{a.split}: {', '.join(c.title for c in columns)}"
    write_gallery(_dataset(a), a.split, columns, min_rows=a.n_images, title=title, out=Path(a.out))
    return 0


def _figure(a: argparse.Namespace) -> int:
    from pcam.report import figures

    out = Path(a.out)
    if a.kind == "per-class":
        figures.per_class_figure([Path(p) for p in a.evals], out)
    elif a.kind == "curves":
        figures.curves_figure([Path(p) for p in a.curves], out)
    else:
        return _gallery(a)
    return 0


def add_commands(add: Add) -> None:
    """Add the results sub-commands through `add(name, handler, help)` (see `build_parser`)."""
    _add_summary_commands(add)
    _add_report_commands(add)


def _add_summary_commands(add: Add) -> None:
    from pcam.cli import _json

    p = add("summarize", _summarize, "collect evaluation CSVs into results/summary.csv")
    p.add_argument(
        "--evals",
        nargs="+",
        required=True,
        help="evaluation CSVs named results/{experiment}/eval/{stage}.csv",
    )
    p.add_argument("--out", required=True, help="summary CSV")
    p.add_argument(
        "--splits",
        type=_json,
        default={"train": "train", "val": "val"},
        help='split names: {"train": EVAL_SPLIT, "val": VAL_SPLIT}',
    )
    p.add_argument(
        "--paper",
        type=_json,
        default={},
        help="paper mIoU per experiment and stage (JSON), filled on VOC",
    )
    p.add_argument(
        "--provenance", nargs="+", help="experiments' provenance.json (the commit column)"
    )

    p = add("show-summary", _show_summary, "print results/summary.csv as a readable table")
    p.add_argument("summary", help="summary CSV (results/summary.csv)")


def _add_report_commands(add: Add) -> None:
    from pcam.cli import _json

    p = add("summary-page", _summary_page, "the report's summary page and Table-2 chart")
    p.add_argument("--summary", required=True, help="summary CSV (results/summary.csv)")
    p.add_argument("--out", required=True, help="summary page (HTML) to write")
    p.add_argument("--fragment", required=True, help="landing-page table (HTML) to write")
    p.add_argument("--chart", required=True, help="Table-2-style chart (PNG) to write")

    p = add("provenance", _provenance, "write an experiment's provenance.json")
    p.add_argument("--experiment", required=True, help="experiment name")
    p.add_argument("--dir", required=True, help="the experiment's results folder")
    p.add_argument("--settings", type=_json, required=True, help="resolved settings (JSON)")
    p.add_argument("--out", required=True, help="provenance JSON to write")

    p = add("render-docs", _render_docs, "render docs/*.md.in from committed result snapshots")
    p.add_argument("--docs", default="docs", help="documentation folder (templates, snapshots)")
    p.add_argument("--snapshot", metavar="NAME", help="first copy --results into docs/results/NAME")
    p.add_argument("--results", default="results", help="results folder of the run to snapshot")
    p.add_argument("--check", action="store_true", help="only check: exit 1 if a doc is stale")

    p = add("figure", _figure, "report figures: per-class IoU, training curves, galleries")
    p.add_argument("kind", choices=["per-class", "curves", "gallery"])
    p.add_argument("--out", required=True, help="PNG to write (gallery: an HTML page)")
    p.add_argument("--evals", nargs="+", help="per-class: evaluation CSVs (one per stage)")
    p.add_argument("--curves", nargs="+", help="curves: training-curve CSVs")
    p.add_argument("--dataset", type=_json, help="gallery: dataset settings (JSON)")
    p.add_argument("--split", help="gallery: split whose images (with masks) are shown")
    p.add_argument(
        "--n-images", type=int, default=6, help="gallery: at least this many rows (more when "
        "needed to show every class)"
    )  # fmt: skip
    p.add_argument("--title", help="gallery: page title")
    for option, stage in _GALLERY_STAGES.items():
        flag = option.replace("_", "-")
        p.add_argument(f"--{flag}", nargs="+", help=f"gallery: {stage} shard directories")

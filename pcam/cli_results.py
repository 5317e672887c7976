"""The `pcam` sub-commands of the results: summary, provenance, report pages, rendered docs.

`COMMANDS` holds one row per sub-command (`pcam.cli_common.Command`), added to the main parser by
`pcam.cli.build_parser`; like every handler, each imports its module lazily (none of these imports
torch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pcam.cli_common import Command, dataset_spec, json_opt, opt
from pcam.errors import PcamError

# `summarize --splits`: the split name of each row kind (pcam.pipeline.SPLIT_ROLES), VOC's
DEFAULT_SPLITS = {"train": "train", "val": "val", "aug": "train_aug"}


def _summarize(a: argparse.Namespace) -> int:
    from pcam.provenance import commit_label, read_provenance
    from pcam.summary import summarize

    commits = {}
    for path in a.provenance or []:
        provenance = read_provenance(Path(path))
        commits[provenance["experiment"]] = commit_label(provenance)
    table = summarize(
        [Path(p) for p in a.evals], out=Path(a.out), splits={**DEFAULT_SPLITS, **a.splits},
        paper=a.paper,
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
    from pcam.pipeline import scored_stages
    from pcam.report.gallery import Column, write_gallery

    # The paper's stage names (the options') -> the same stages under the network's row names.
    stages = dict(
        zip((s.name for s in scored_stages("weak")),
            scored_stages("weak", a.segmentation_prefix), strict=True)
    )  # fmt: skip
    columns = [
        Column(stages[name].name, tuple(Path(d) for d in dirs), stages[name].score_key)
        for option, name in _GALLERY_STAGES.items()
        if (dirs := getattr(a, option))
    ]
    if not columns:
        raise PcamError("figure gallery: give at least one of --cams --rw --pseudo --deeplab")
    title = a.title or f"{a.split}: {', '.join(c.title for c in columns)}"
    write_gallery(
        dataset_spec(a), a.split, columns, min_rows=a.n_images, title=title, out=Path(a.out)
    )
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


COMMANDS: dict[str, Command] = {
    "summarize": Command(_summarize, "collect evaluation CSVs into results/summary.csv", (
        opt("--evals", nargs="+", required=True,
            help="evaluation CSVs named results/{experiment}/eval/{stage}.csv"),
        opt("--out", required=True, help="summary CSV"),
        json_opt("--splits", default={},
                 help='split names: {"train": EVAL_SPLIT, "val": VAL_SPLIT, "aug": TRAIN_SPLIT}'
                      ' (each missing key: train, val, train_aug)'),
        json_opt("--paper", default={},
                 help="paper mIoU per experiment and stage (JSON), filled on VOC"),
        opt("--provenance", nargs="+", help="experiments' provenance.json (the commit column)"),
    )),
    "show-summary": Command(_show_summary, "print results/summary.csv as a readable table", (
        opt("summary", help="summary CSV (results/summary.csv)"),
    )),
    "summary-page": Command(_summary_page, "the report's summary page and Table-2 chart", (
        opt("--summary", required=True, help="summary CSV (results/summary.csv)"),
        opt("--out", required=True, help="summary page (HTML) to write"),
        opt("--fragment", required=True, help="landing-page table (HTML) to write"),
        opt("--chart", required=True, help="Table-2-style chart (PNG) to write"),
    )),
    "provenance": Command(_provenance, "write an experiment's provenance.json", (
        opt("--experiment", required=True, help="experiment name"),
        opt("--dir", required=True, help="the experiment's results folder"),
        json_opt("--settings", required=True, help="resolved settings (JSON)"),
        opt("--out", required=True, help="provenance JSON to write"),
    )),
    "render-docs": Command(
        _render_docs, "render docs/*.md.in from committed result snapshots", (
            opt("--docs", default="docs", help="documentation folder (templates, snapshots)"),
            opt("--snapshot", metavar="NAME", help="first copy --results into docs/results/NAME"),
            opt("--results", default="results", help="results folder of the run to snapshot"),
            opt("--check", action="store_true", help="only check: exit 1 if a doc is stale"),
        ),
    ),
    "figure": Command(_figure, "report figures: per-class IoU, training curves, galleries", (
        opt("kind", choices=["per-class", "curves", "gallery"]),
        opt("--out", required=True, help="PNG to write (gallery: an HTML page)"),
        opt("--evals", nargs="+", help="per-class: evaluation CSVs (one per stage)"),
        opt("--curves", nargs="+", help="curves: training-curve CSVs"),
        json_opt("--dataset", help="gallery: dataset settings (JSON)"),
        opt("--split", help="gallery: split whose images (with masks) are shown"),
        opt("--n-images", type=int, default=6,
            help="gallery: at least this many rows (more when needed to show every class)"),
        opt("--title", help="gallery: page title"),
        opt("--segmentation-prefix", default="deeplab",
            help="gallery: the segmentation network's row prefix (deeplab, segformer, ...): "
                 "titles the --deeplab* columns as the summary names their rows"),
        *(
            opt(f"--{option.replace('_', '-')}", nargs="+",
                help=f"gallery: {stage} shard directories")
            for option, stage in _GALLERY_STAGES.items()
        ),
    )),
}  # fmt: skip

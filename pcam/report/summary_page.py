"""The summary in the report: a full HTML page (a result of the report) and a compact fragment.

The fragment is what the report's landing page (the workflow description,
`workflow/report/workflow.rst`) includes, so the numbers are in the page a researcher opens
first, with the commit they came from; the page adds every column and the Table-2-style chart.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from pcam.io import write_text
from pcam.report import figures
from pcam.report.html import file_img_tag, page, table
from pcam.summary import commits_line, display_frame, display_notes, read_summary_csv

# The landing page's column is narrow (about 500 px): its table keeps the main numbers only.
COMPACT_COLUMNS = ["experiment", "stage", "seed", "mIoU", "fg mIoU", "paper mIoU", "weak/full"]


def compact_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """The landing page's table: `COMPACT_COLUMNS` that the display frame has."""
    view = display_frame(summary)
    return view[[c for c in COMPACT_COLUMNS if c in view.columns]]


def fragment(summary: pd.DataFrame) -> str:
    """HTML (no document shell) of the compact table, its commit line and a pointer."""
    return (
        '<div class="pcam-summary">\n<h2>Summary</h2>\n'
        f"<p>{html.escape(commits_line(summary))}</p>\n"
        f"{table(compact_frame(summary))}\n"
        "<p>mIoU in percent; every column, the GT-chosen thresholds and the Table-2 chart: "
        "<i>Summary</i> in the menu.</p>\n</div>\n"
    )


def summary_page(summary: pd.DataFrame, chart_png: bytes) -> str:
    """The full summary page: the display table, notes, commit and the Table-2 chart."""
    body = (
        "<h1>Summary</h1>\n"
        f"<p><code>{html.escape(commits_line(summary))}</code> "
        "(each experiment's <code>results/{experiment}/provenance.json</code>)</p>\n"
        f"{table(display_frame(summary), text_columns=3)}\n"
        f'<p class="note">{html.escape(display_notes(summary))}</p>\n'
        "<h2>CAM, +RW, +dCRF (paper Table 2)</h2>\n"
        f"{file_img_tag(chart_png, 'Table-2-style chart')}\n"
    )
    return page("pcam summary", body)


def write_summary_pages(
    summary_csv: Path, *, out_page: Path, out_fragment: Path, out_chart: Path
) -> None:
    """Write the Table-2 chart (PNG), the summary page and the landing fragment (HTML)."""
    summary = read_summary_csv(summary_csv)
    figures.table2_figure(summary, out_chart)
    write_text(out_page, summary_page(summary, Path(out_chart).read_bytes()))
    write_text(out_fragment, fragment(summary))

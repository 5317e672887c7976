"""Headless-Chromium screenshots of the report's main views, and whether each fits the window.

Run after `make demo` (or any finished run):
`.venv/bin/python benchmarks/report_screenshots.py --results results --out benchmarks/out/report`.
For each view (the landing page with the summary table, the summary page, the Table-2 chart, and
per experiment the per-class chart, the training curves and the galleries) it writes a
1400 x 1000 screenshot and prints the content pane's width and height, the shown figure's size
and whether anything overflows it (a PNG wider or taller than the pane is cut off: the report
centres it and the cut part cannot be scrolled to). HTML pages (galleries, summary) are shown
by the report in a frame that scrolls; each is also opened alone at the pane's size to check it
has no horizontal overflow. Needs Chromium (Debian: `apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pcam.report import browser

PANE = (1050, 860)  # the result pane of a 1400 x 1000 window, navbar in category mode


def views(results: Path) -> list[tuple[str, str, str, str | None]]:
    """(name, path suffix, category, subcategory) of every main view of the report."""
    found = [
        ("summary_page", "figures/summary.html", "Summary", None),
        ("table2", "figures/table2.png", "Summary", None),
    ]
    categories = {
        "per_class_iou.png": "Per-class IoU",
        "training_curves.png": "Training curves",
        "gallery.html": "Gallery",
        "gallery_val.html": "Gallery",
    }
    for folder in sorted(p for p in (results / "figures").iterdir() if p.is_dir()):
        for filename, category in categories.items():
            if (folder / filename).exists():
                name = f"{folder.name}_{Path(filename).stem}"
                found.append((name, f"figures/{folder.name}/{filename}", category, folder.name))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="folder with report.html, figures/")
    parser.add_argument("--out", default="benchmarks/out/report", help="screenshots folder")
    args = parser.parse_args()
    if browser.find_chromium() is None:
        print("no Chromium on PATH: install Debian's `chromium` package", file=sys.stderr)
        return 1
    results, out = Path(args.results), Path(args.out)
    report = results / "report.html"
    out.mkdir(parents=True, exist_ok=True)
    browser.screenshot(report, out / "landing.png")
    dom = browser.dump_dom(report)
    print(f"landing: summary table in the rendered page: {'pcam-summary' in dom}")
    bad = 0 if "pcam-summary" in dom else 1
    with tempfile.TemporaryDirectory() as tmp:
        for name, suffix, category, sub in views(results):
            page = browser.open_view(report, Path(tmp) / f"{name}.html", suffix=suffix,
                                     category=category, subcategory=sub)  # fmt: skip
            browser.screenshot(page, out / f"{name}.png")
            fit = browser.view_fit(browser.dump_dom(page))
            cut = fit is None or fit["overflow_x"] or fit["overflow_y"]
            if suffix.endswith(".html"):
                alone = browser.measure_page(results / suffix, Path(tmp) / "p.html")
                inner = browser.view_fit(browser.dump_dom(alone, window=PANE))
                cut = cut or inner is None or inner["overflow_x"]
                fit = {**(fit or {}), "page_width_in_pane": inner and inner["width"]}
            bad += int(cut)
            print(f"{name}: {'CUT OFF' if cut else 'fits'} {fit}")
    print(f"screenshots in {out}; {bad} view(s) do not fit")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

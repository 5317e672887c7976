"""End to end: provenance of a finished tiny run, the commit in its summary, and its report as
headless Chromium renders it (skipped where Chromium is absent)."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from pcam.report import browser
from tests.snakemake_runner import Project

pytestmark = pytest.mark.slow

EXPERIMENTS = ("puzzle", "baseline", "full")
needs_chromium = pytest.mark.skipif(
    browser.find_chromium() is None,
    reason="no Chromium on PATH (Debian/Ubuntu: apt-get install -y --no-install-recommends "
    "chromium): the report is checked in a real browser",
)


def _head(project: Project) -> str:
    cmd = ["git", "-C", str(project.root), "rev-parse", "HEAD"]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def _summary(project: Project) -> list[dict]:
    with open(project.results_path("summary.csv"), newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_experiment_has_provenance_with_the_checkout_commit(done):
    head = _head(done)
    for name in EXPERIMENTS:
        data = json.loads(done.results_path(name, "provenance.json").read_text())
        assert data["commit"] == head and data["dirty"] is False, name
        assert data["job_commits"] == [head]
        assert data["devices"] == ["cpu"] and data["precisions"] == ["fp32"]
        assert {"torch", "timm", "snakemake", "pydensecrf2"} <= set(data["packages"])
        assert data["started"] <= data["finished"] and data["host"]
        trained = {Path(j["output"]).parent.name for j in data["jobs"] if "train" in j["command"]}
        expected = {"deeplab"} if name == "full" else {"classifier", "affinitynet", "deeplab"}
        assert trained == expected, name
        assert "deeplab" in data["settings"] and ("classifier" in data["settings"]) == (
            name != "full"
        )


def test_summary_rows_trace_to_the_commit(done):
    head = _head(done)
    rows = _summary(done)
    assert {row["commit"] for row in rows} == {head}
    assert list(rows[0])[-1] == "commit"
    ratios = {r["stage"]: r["weak_full_ratio"] for r in rows if r["experiment"] == "puzzle"}
    assert ratios["deeplab"] != "" and ratios["deeplab_crf"] != "" and ratios["cam"] == ""


def test_deeplab_gallery_uses_the_scored_val_predictions_only(done):
    for name in EXPERIMENTS:
        predictions = done.results_path(name, "deeplab_pred")
        assert sorted(p.name for p in predictions.iterdir()) == ["val"], name
        page = done.results_path("figures", name, "gallery_val.html").read_text()
        assert "<th>deeplab</th><th>deeplab_crf</th>" in page and 'ul class="legend"' in page


@pytest.fixture(scope="module")
def report(done) -> Path:
    path = done.results_path("report_in_browser.html")
    done.run("--cores", "1", "--report", str(path))
    return path


@needs_chromium
def test_the_rendered_report_shows_the_summary_table_and_commit(done, report):
    dom = browser.dump_dom(report)
    assert 'class="pcam-summary"' in dom
    table = dom[dom.index('class="pcam-summary"') :]
    assert f"commit: {_head(done)} (baseline, full, puzzle)" in table
    for row in _summary(done):
        cells = [row["experiment"], row["stage"], row["miou"], row["fg_miou"]]
        pattern = "".join(f'<td style="text-align: {a}">{c}</td>' for a, c in zip(
            ["left", "left", "right", "right"], cells, strict=True))  # fmt: skip
        assert pattern in table, row


@needs_chromium
@pytest.mark.parametrize(
    ("suffix", "category", "subcategory"),
    [
        ("figures/summary.html", "Summary", None),
        ("figures/puzzle/gallery_val.html", "Gallery", "puzzle"),
        ("figures/puzzle/per_class_iou.png", "Per-class IoU", "puzzle"),
        ("figures/baseline/training_curves.png", "Training curves", "baseline"),
    ],
)
def test_each_view_fits_a_1400_by_1000_window(report, tmp_path, suffix, category, subcategory):
    page = browser.open_view(
        report, tmp_path / "view.html", suffix=suffix, category=category, subcategory=subcategory
    )
    fit = browser.view_fit(browser.dump_dom(page))
    assert fit is not None, "the view did not open"
    assert not fit["overflow_x"] and not fit["overflow_y"], fit
    slack = 1  # sub-pixel layout: a frame filling the pane measures e.g. 1038.05 in 1038
    assert fit["width"] <= fit["pane_width"] + slack, fit
    assert fit["height"] <= fit["pane_height"] + slack, fit

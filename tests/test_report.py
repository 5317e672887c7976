"""Report pages and figures: sizes that fit the pane, absent classes, galleries, summary page."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle
from PIL import Image

from pcam import cli
from pcam.data.voc import VOC_CLASSES, DatasetSpec, gt_mask, read_split
from pcam.errors import DataError
from pcam.io import save_label_png, save_scores
from pcam.report import figures, gallery
from pcam.summary import read_summary_csv
from tests.test_summary import FULL, SPLITS, WEAK, _results

PANE = (figures.MAX_WIDTH_PX, figures.MAX_HEIGHT_PX)


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


# --------------------------------------------------------------------------- figures


def test_per_class_chart_marks_absent_classes_and_keeps_zero_apart():
    table = pd.DataFrame(
        {"cam": [50.0, np.nan, 0.0], "rw": [60.0, 10.0, np.nan]}, index=["bg", "cat", "dog"]
    )
    fig = figures.draw_per_class(table)
    ax = fig.axes[0]
    heights = sorted(p.get_height() for p in ax.patches if isinstance(p, Rectangle))
    assert heights == [0.0, 10.0, 50.0, 60.0]  # the two NaN cells draw no bar
    marks = [line for line in ax.lines if line.get_marker() == figures.ABSENT_MARK]
    assert sum(len(line.get_xdata()) for line in marks) == 2
    assert [t.get_text() for t in ax.texts] == ["0"]


@pytest.mark.parametrize("n_classes", [9, 21])
def test_per_class_chart_fits_the_pane_for_demo_and_voc(tmp_path, n_classes):
    table = pd.DataFrame(
        np.random.default_rng(0).uniform(0, 100, (n_classes, len(WEAK))),
        index=VOC_CLASSES[:n_classes], columns=WEAK,
    )  # fmt: skip
    out = tmp_path / "per_class.png"
    figures.save(figures.draw_per_class(table), out)
    width, height = _size(out)
    assert width <= PANE[0] and height <= PANE[1]
    assert len(figures.draw_per_class(table).axes) == -(-n_classes // figures.CLASSES_PER_ROW)


def test_curves_of_three_networks_fit_the_pane(tmp_path):
    curves = []
    for name in ("classifier", "affinitynet", "deeplab"):
        path = tmp_path / name / "curve.csv"
        path.parent.mkdir()
        path.write_text(
            "step,epoch,lr,loss,cls,images_per_s\n1,0,0.1,2.0,1.5,9\n2,0,0.05,1.0,0.7,9\n"
        )
        curves.append(path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "curve.csv").write_text("")
    out = tmp_path / "curves.png"
    figures.curves_figure([*curves, tmp_path / "empty" / "curve.csv"], out)
    width, height = _size(out)
    assert width <= PANE[0] and height <= PANE[1]


@pytest.fixture
def summary_csv(tmp_path) -> Path:
    evals = _results(tmp_path / "results", {"puzzle": WEAK, "baseline": WEAK, "full": FULL})
    out = tmp_path / "results" / "summary.csv"
    from pcam.summary import summarize

    summarize(evals, out=out, splits=SPLITS, paper={"puzzle": {"cam": 51.53, "rw": 64.16}},
              commits={"puzzle": "c0ffee", "baseline": "c0ffee", "full": "c0ffee"})  # fmt: skip
    return out


def test_table2_chart_has_our_bars_and_the_papers_beside(summary_csv, tmp_path):
    summary = read_summary_csv(summary_csv)
    out = tmp_path / "table2.png"
    figures.table2_figure(summary, out)
    width, height = _size(out)
    assert width <= PANE[0] and height <= PANE[1]
    assert figures.table2_stages() == ["cam", "rw", "rw_crf"]


# --------------------------------------------------------------------------- summary page


def test_summary_page_and_landing_fragment(summary_csv, tmp_path):
    page, fragment, chart = tmp_path / "s.html", tmp_path / "f.html", tmp_path / "t2.png"
    assert cli.main(["summary-page", "--summary", str(summary_csv), "--out", str(page),
                     "--fragment", str(fragment), "--chart", str(chart)]) == 0  # fmt: skip
    summary = read_summary_csv(summary_csv)
    text, short = page.read_text(), fragment.read_text()
    cam = summary[(summary["experiment"] == "puzzle") & (summary["stage"] == "cam")].iloc[0]
    for html_text in (text, short):
        assert f'<td style="text-align: right">{cam["miou"]}</td>' in html_text
        assert "commit: c0ffee (baseline, full, puzzle)" in html_text
        assert ">51.53</td>" in html_text  # the paper's value beside ours
    assert "GT-chosen best" in text and f"{cam['best_miou']} @{cam['best_threshold']}" in text
    assert "weak/full" in text and "weak/full" in short
    assert "GT-chosen best" not in short  # the landing table keeps the main numbers only
    assert re.search(r'<img class="figure" src="data:image/png;base64,', text)
    assert "<html" not in short and "<html" in text


# --------------------------------------------------------------------------- gallery


def test_choose_images_covers_every_class_deterministically():
    present = [("a", {1}), ("b", {1, 2}), ("c", {3}), ("d", {2, 3}), ("e", set()), ("f", {4})]
    assert gallery.choose_images(present, min_rows=0) == ["b", "c", "f"]
    assert gallery.choose_images(present, min_rows=5) == ["a", "b", "c", "d", "f"]
    assert gallery.choose_images(present[::-1], 0) == ["f", "d", "b"]  # ties: earliest wins
    assert gallery.choose_images([], 3) == []


@pytest.fixture
def predictions(demo_root: Path, tmp_path: Path):
    """Demo dataset with pseudo-labels (= GT) and CAMs for train, split over two shards."""
    spec = DatasetSpec.from_settings({"root": str(demo_root)})
    shards = [tmp_path / "pseudo" / f"shard-{k}" for k in range(2)]
    cams = [tmp_path / "cams" / f"shard-{k}" for k in range(2)]
    for i, image_id in enumerate(read_split(spec, "train")):
        mask = gt_mask(spec, image_id)
        save_label_png(shards[i % 2] / f"{image_id}.png", mask, spec.palette)
        classes = sorted(gallery.classes_present(mask))
        scores = np.stack([(mask == c).astype(np.float32) for c in classes])
        save_scores(cams[i % 2] / f"{image_id}.npz", np.array([0, *classes]), hr_cam=scores)
    return spec, shards, cams


def test_gallery_page_shows_every_class_with_a_legend_and_ids(predictions, tmp_path):
    spec, shards, cams = predictions
    out = tmp_path / "gallery.html"
    argv = ["figure", "gallery", "--dataset", f'{{"root": "{spec.root}"}}', "--split", "train",
            "--n-images", "2", "--cams", *map(str, cams), "--pseudo", *map(str, shards),
            "--title", "demo gallery", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    text = out.read_text()
    for name, (r, g, b) in zip(spec.class_names, spec.palette, strict=True):
        assert f"rgb({r}, {g}, {b})" in text and name in text
    rows = re.findall(r'<td class="id"><b>([^<]+)</b><br>([^<]*)</td>', text)
    shown = {name for _, names in rows for name in names.split(", ") if name}
    masks = [gt_mask(spec, i) for i in read_split(spec, "train")]
    in_split = set().union(*(gallery.classes_present(m) for m in masks))
    assert shown == {spec.class_names[c] for c in in_split}  # every class of the split shown
    assert len(in_split) >= 5 and len(rows) >= 2
    assert [i for i, _ in rows] == [i for i in read_split(spec, "train") if i in dict(rows)]
    header = re.search(r"<thead>(.*)</thead>", text).group(1)
    assert re.findall(r"<th[^>]*>([^<]+)</th>", header) == [
        "image id, classes",
        "image",
        "cam",
        "rw_crf",
        "ground truth",
    ]
    assert text.count("<img") == 4 * len(rows) and "position: sticky" in text
    assert out.read_text() == _again(argv, out)  # deterministic


@pytest.mark.parametrize("prefix", ["deeplab", "segformer"])
def test_gallery_titles_segmentation_columns_as_the_summary_rows(predictions, tmp_path, prefix):
    spec, shards, _ = predictions
    out = tmp_path / "val.html"
    argv = ["figure", "gallery", "--dataset", f'{{"root": "{spec.root}"}}', "--split", "train",
            "--segmentation-prefix", prefix, "--deeplab", *map(str, shards),
            "--deeplab-crf", *map(str, shards), "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    header = re.search(r"<thead>(.*)</thead>", out.read_text()).group(1)
    columns = re.findall(r"<th[^>]*>([^<]+)</th>", header)[2:-1]
    assert columns == [prefix, f"{prefix}_crf"]


def _again(argv: list[str], out: Path) -> str:
    copy = out.with_name("again.html")
    assert cli.main([*argv[:-1], str(copy)]) == 0
    return copy.read_text()


def test_gallery_errors_name_the_problem(predictions, tmp_path):
    spec, shards, _ = predictions
    with pytest.raises(DataError, match=r"\.png: a gallery is an HTML page"):
        gallery.write_gallery(spec, "train", [gallery.Column("x", tuple(shards))], min_rows=1,
                              title="t", out=tmp_path / "g.png")  # fmt: skip
    missing = gallery.Column("deeplab", (tmp_path / "nothing",))
    with pytest.raises(DataError, match="not found in any of"):
        gallery.gallery_page(spec, "train", [missing], 1, "t")
    no_masks = tmp_path / "nomasks"
    shutil.copytree(spec.root, no_masks)
    shutil.rmtree(no_masks / "SegmentationClass")
    bare = DatasetSpec.from_settings({"root": str(no_masks)})
    with pytest.raises(DataError, match="no image of split 'train' has a mask"):
        gallery.gallery_page(bare, "train", [], 1, "t")

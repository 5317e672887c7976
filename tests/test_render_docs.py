"""Documents rendered from result snapshots: the committed docs agree with their rendering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pcam import cli, render_docs
from pcam.errors import DataError
from pcam.summary import COLUMNS, SEED_COLUMNS
from tests.test_summary import CLASSES, FULL, SPLITS, WEAK, _results

REPO = Path(__file__).resolve().parent.parent


def test_committed_documents_are_the_rendering_of_the_committed_snapshots():
    docs = REPO / "docs"
    templates = sorted(docs.rglob("*.md.in"))
    assert templates, "no template under docs/"
    assert (docs / "results" / "demo" / "summary.csv").exists()
    assert render_docs.stale_documents(docs) == []


def _run(tmp_path: Path) -> Path:
    """A finished run's results folder: evaluation CSVs, summary.csv, provenance.json."""
    from pcam.summary import summarize

    results = tmp_path / "results"
    experiments = {"puzzle": WEAK, "baseline": WEAK, "full": FULL}
    evals = _results(results, experiments)
    summarize(evals, out=results / "summary.csv", splits=SPLITS,
              commits=dict.fromkeys(experiments, "f00d"))  # fmt: skip
    for k, name in enumerate(experiments):
        job = {
            "started": f"2026-01-01T10:0{k}:00+00:00",
            "finished": f"2026-01-01T10:1{k}:05+00:00",
            "device": "cpu",
            "precision": "fp32",
            "cpus": 2,
            "peak_rss_mb": 1000.0 + k,
        }
        provenance = {
            "experiment": name,
            "commit": "f00d",
            "dirty": False,
            "jobs": [job],
            "packages": {"torch": "2.14.1"},
        }
        (results / name / "provenance.json").write_text(json.dumps(provenance))
        if name != "full":  # the weak experiments train a classifier: its curve
            curve = results / name / "classifier" / "curve.csv"
            curve.parent.mkdir(parents=True)
            rows = [f"{step},{0.7 - step / 100 + k / 10:.4f},9.9" for step in (10, 20, 30, 40)]
            curve.write_text("step,cls,images_per_s\n" + "\n".join(rows) + "\n")
    return results


TEMPLATE = """# Demo
{% set r = results.demo.rows %}
{{ results.demo.commit }}; jobs took {{ results.demo.wall }} on {{ results.demo.run.devices[0] }}.

{{ results.demo.pivot }}

puzzle CAM: {{ r.puzzle.cam.miou }}; ratio {{ r.puzzle.deeplab.weak_full_ratio }}.
"""


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "demo.md.in").write_text(TEMPLATE)
    render_docs.take_snapshot(_run(tmp_path), docs, "demo")
    return docs


def test_snapshot_copies_the_summary_and_states_the_run(docs, tmp_path):
    folder = docs / "results" / "demo"
    assert (folder / "summary.csv").read_bytes() == (
        tmp_path / "results" / "summary.csv"
    ).read_bytes()
    run = json.loads((folder / "run.json").read_text())
    assert run["commits"] == ["f00d"] and run["dirty"] is False
    assert (run["started"], run["finished"]) == (
        "2026-01-01T10:00:00+00:00",
        "2026-01-01T10:12:05+00:00",
    )
    assert run["peak_rss_mb"] == 1002.0 and run["experiments"] == ["baseline", "full", "puzzle"]
    assert "host" not in run
    # mean of the last three rows' cls (steps 20-40): 0.7 - 0.3 + k/10 (puzzle k=0, baseline 1)
    assert run["final_cls_loss"] == {"puzzle": 0.4, "baseline": 0.5}


def test_snapshot_keeps_the_per_class_cells_and_ranks_class_gaps(docs, tmp_path):
    results = tmp_path / "results"
    classes = (docs / "results" / "demo" / "classes.csv").read_text().splitlines()
    assert classes[0] == "run,stage,class,iou,class_images,confused_images,confused_as"
    assert len(classes) == 1 + len(CLASSES) * (2 * len(WEAK) + len(FULL))  # every class row
    snapshot = render_docs.read_snapshot(docs / "results" / "demo")
    cat = snapshot.classes["puzzle"]["deeplab"]["cat"]
    eval_rows = (results / "puzzle" / "eval" / "deeplab.csv").read_text().splitlines()
    row = next(line.split(",") for line in eval_rows if ",cat," in line)
    assert cat["iou"] == float(row[5]) and cat["class_images"] == float(row[18])
    gaps = snapshot.class_gaps("deeplab", "puzzle", "baseline")
    assert [name for name, _ in gaps] != [] and "background" not in dict(gaps)
    assert [g for _, g in gaps] == sorted(g for _, g in gaps)
    base = snapshot.classes["baseline"]["deeplab"]
    assert dict(gaps)["dog"] == pytest.approx(
        snapshot.classes["puzzle"]["deeplab"]["dog"]["iou"] - base["dog"]["iou"]
    )


def test_a_job_run_with_uncommitted_changes_makes_the_snapshot_dirty(tmp_path):
    results = _run(tmp_path)
    record = json.loads((results / "puzzle" / "provenance.json").read_text())
    record["job_commits"] = ["f00d", "beef-dirty"]  # the experiment's own commit is clean
    (results / "puzzle" / "provenance.json").write_text(json.dumps(record))
    folder = render_docs.take_snapshot(results, tmp_path / "docs", "demo")
    run = json.loads((folder / "run.json").read_text())
    assert run["commits"] == ["f00d"] and run["job_commits"] == ["beef-dirty", "f00d"]
    assert run["dirty"] is True


def test_final_cls_loss_names_a_curve_without_cls(tmp_path):
    curve = tmp_path / "curve.csv"
    curve.write_text("step,ce\n10,0.5\n")
    with pytest.raises(DataError, match=r"curve\.csv: no classifier curve with a cls column"):
        render_docs.final_cls_loss(curve)


def test_rendering_fills_tables_and_values_from_the_snapshot(docs):
    (path,) = render_docs.write_documents(docs)
    text = path.read_text()
    assert path == docs / "demo.md" and text.startswith("<!-- Generated by `pcam render-docs`")
    summary = (docs / "results" / "demo" / "summary.csv").read_text().splitlines()
    cam = next(line.split(",") for line in summary if line.startswith("puzzle,cam,"))
    assert f"puzzle CAM: {cam[5]};" in text
    assert "commit: f00d (baseline, full, puzzle); jobs took 12 min 05 s on cpu." in text
    assert "| experiment | cam | rw | rw_crf | rw_crf_aug | deeplab | deeplab_crf |" in text
    assert "{{" not in text and "{%" not in text


def test_check_fails_when_a_document_drifts_from_its_results(docs, capsys):
    render_docs.write_documents(docs)
    assert cli.main(["render-docs", "--docs", str(docs), "--check"]) == 0
    path = docs / "demo.md"
    path.write_text(path.read_text().replace("puzzle CAM:", "puzzle CAM (typed):"))
    assert render_docs.stale_documents(docs) == [path]
    assert cli.main(["render-docs", "--docs", str(docs), "--check"]) == 1
    assert "demo.md: differs from its rendering" in capsys.readouterr().err
    assert cli.main(["render-docs", "--docs", str(docs)]) == 0
    assert render_docs.stale_documents(docs) == []


def test_cli_snapshot_then_render(tmp_path, docs):
    results = _run(tmp_path / "second")
    argv = ["render-docs", "--docs", str(docs), "--snapshot", "style2", "--results", str(results)]
    assert cli.main(argv) == 0
    assert sorted(p.name for p in (docs / "results").iterdir()) == ["demo", "style2"]
    (docs / "two.md.in").write_text("{{ results.style2.rows.full.deeplab_full.miou }}\n")
    assert cli.main(["render-docs", "--docs", str(docs)]) == 0
    assert (docs / "two.md").read_text().splitlines()[-1].replace(".", "").isdigit()


def test_a_placeholder_without_a_value_names_the_template(docs):
    (docs / "bad.md.in").write_text("{{ results.demo.rows.puzzle.no_such_stage }}\n")
    with pytest.raises(DataError, match=r"bad\.md\.in: cannot render"):
        render_docs.render_all(docs)


def test_snapshot_of_an_unfinished_run_is_refused(tmp_path, docs):
    with pytest.raises(DataError, match=r"summary\.csv: missing"):
        render_docs.take_snapshot(tmp_path / "nothing", docs, "x")
    results = _run(tmp_path / "third")
    shutil.rmtree(results / "full")
    with pytest.raises(DataError, match=r"full/provenance\.json: unreadable"):
        render_docs.take_snapshot(results, docs, "x")


def test_a_seeded_run_is_snapshotted_per_seed_folder(tmp_path):
    """Seeds (results/{experiment}/seed-K): provenance and curves are read per seed's folder,
    and templates see each seed's mIoU beside the seeds' mean row."""
    results = tmp_path / "results"
    rows = []
    for k, miou in ((1, "40.00"), (2, "44.00")):
        run = results / "puzzle" / f"seed-{k}"
        job = {
            "device": "cpu",
            "precision": "fp32",
            "cpus": 2,
            "peak_rss_mb": 10.0,
            "started": "2026-01-01T10:00:00+00:00",
            "finished": "2026-01-01T10:01:00+00:00",
        }
        record = {"experiment": f"puzzle/seed-{k}", "commit": "f00d", "dirty": False,
                  "jobs": [job], "packages": {}}  # fmt: skip
        run.mkdir(parents=True)
        (run / "provenance.json").write_text(json.dumps(record))
        (run / "classifier").mkdir()
        (run / "classifier" / "curve.csv").write_text(f"step,cls\n10,0.{k}\n")
        rows.append(f"puzzle,cam,train,8,0.15,{miou},,,,,,,,,,f00d,{k},,,,")
    rows.append("puzzle,cam,train,8,0.15,42.00,,,,,,,,,,f00d,mean,2,2.83,40.00,44.00")
    header = ",".join([*COLUMNS, *SEED_COLUMNS])
    (results / "summary.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    docs = tmp_path / "docs"
    folder = render_docs.take_snapshot(results, docs, "seeds")
    run = json.loads((folder / "run.json").read_text())
    assert run["experiments"] == ["puzzle/seed-1", "puzzle/seed-2"]
    assert run["final_cls_loss"] == {"puzzle/seed-1": 0.1, "puzzle/seed-2": 0.2}
    snapshot = render_docs.read_snapshot(folder)
    assert snapshot.seeds == {"puzzle": {"cam": {1: 40.0, 2: 44.0}}}
    assert snapshot.rows["puzzle"]["cam"]["miou"] == 42.0  # the mean row

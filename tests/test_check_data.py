"""`pcam check-data`: one test per kind of bad input, each naming the file at fault."""

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from pcam.cli import main
from pcam.data.check import Problem, check_dataset, write_report
from pcam.data.voc import DatasetSpec
from pcam.io import save_label_png

TRAIN_ONLY = "demo_000001"  # in train_aug only: XML + SegmentationClassAug, no SegmentationClass
TRAIN = "demo_000002"  # in train and train_aug: both masks
VAL = "demo_000025"


@pytest.fixture
def spec(demo_root, tmp_path):
    """A private copy of the demo dataset, free to break."""
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    return DatasetSpec.from_settings({"root": str(root)})


def _only(problems: list[Problem], path, *words: str) -> Problem:
    """The single problem found; it names `path` and says `words`."""
    assert len(problems) == 1, problems
    (problem,) = problems
    assert problem.path == str(path) and str(path) in str(problem)
    for word in words:
        assert word in problem.problem
    return problem


def test_clean_datasets_have_no_problems(demo_root, voc_tree):
    assert check_dataset(DatasetSpec.from_settings({"root": str(demo_root)})) == []
    assert check_dataset(DatasetSpec.from_settings({"root": str(voc_tree)})) == []


def test_the_check_touches_nothing(demo_root):
    before = {
        p: (p.stat().st_mtime_ns, p.read_bytes()) for p in demo_root.rglob("*") if p.is_file()
    }
    check_dataset(DatasetSpec.from_settings({"root": str(demo_root)}))
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in demo_root.rglob("*") if p.is_file()}
    assert before == after


def test_missing_split_list(spec):
    problem = _only(check_dataset(spec, ["train", "test"]), spec.split_path("test"), "missing")
    assert problem.split == "test"


def test_no_split_lists_at_all(spec):
    for path in spec.split_path("x").parent.glob("*.txt"):
        path.unlink()
    _only(check_dataset(spec), spec.root / spec.split_dir, "no split lists")


def test_listed_id_without_image(spec):
    with open(spec.split_path("val"), "a") as fh:
        fh.write("demo_999999\n")
    problem = _only(check_dataset(spec), spec.image_path("demo_999999"), "missing")
    assert (problem.split, problem.image_id) == ("val", "demo_999999")


def test_image_that_does_not_decode(spec):
    path = spec.image_path(TRAIN)
    path.write_bytes(path.read_bytes()[:200])
    problem = _only(check_dataset(spec), path, "does not decode")
    assert problem.split == "train"  # first split listing it (splits are checked sorted)


def test_mask_size_differs_from_image(spec):
    path = spec.mask_path(TRAIN)
    save_label_png(path, np.zeros((64, 63), np.uint8), spec.palette)
    _only(check_dataset(spec), path, "63x64", "64x64")


def test_mask_with_an_unknown_class_index(spec):
    path = spec.mask_path(TRAIN_ONLY, aug=True)
    mask = np.zeros((64, 64), np.uint8)
    mask[:4, :4] = 37
    mask[4:8, :4] = 255  # the ignore label is fine
    save_label_png(path, mask, spec.palette)
    _only(check_dataset(spec), path, "[37]")


def test_mask_that_is_not_a_label_png(spec):
    path = spec.mask_path(VAL)
    Image.new("RGB", (64, 64)).save(path)
    _only(check_dataset(spec), path, "palette or grayscale")


def test_xml_naming_an_unknown_class(spec):
    path = spec.annotation_path(VAL)
    text = path.read_text()
    name = text.split("<name>")[1].split("</name>")[0]
    path.write_text(text.replace(name, "unicorn"))
    _only(check_dataset(spec), path, "unknown class", "unicorn")


def test_malformed_xml(spec):
    path = spec.annotation_path(TRAIN_ONLY)
    path.write_text("<annotation><object>")
    _only(check_dataset(spec), path, "malformed XML")


def _strip_labels(spec, image_id):
    """Leave the image with an XML without objects and an all-background mask."""
    xml = spec.annotation_path(image_id)
    text = xml.read_text()
    xml.write_text(text[: text.index("<object>")] + "</annotation>\n")
    for path in (spec.mask_path(image_id), spec.mask_path(image_id, aug=True)):
        if path.exists():
            save_label_png(path, np.zeros((64, 64), np.uint8), spec.palette)


def test_empty_label_vector_in_a_training_split(spec):
    _strip_labels(spec, TRAIN_ONLY)
    problem = _only(check_dataset(spec), spec.annotation_path(TRAIN_ONLY), "empty label")
    assert problem.split == "train_aug"


def test_empty_label_vector_is_fine_outside_training_splits(spec):
    _strip_labels(spec, VAL)
    assert check_dataset(spec) == []
    problems = check_dataset(spec, ["val"], training_splits=["val"])
    _only(problems, spec.annotation_path(VAL), "empty label", "val")


def test_image_without_annotation_or_mask_in_a_training_split(spec):
    spec.annotation_path(TRAIN_ONLY).unlink()
    spec.mask_path(TRAIN_ONLY, aug=True).unlink()
    _only(check_dataset(spec), spec.annotation_path(TRAIN_ONLY), "no annotation and no mask")


def test_report_has_a_header_even_when_empty(tmp_path):
    path = tmp_path / "r.csv"
    write_report([], path)
    assert path.read_text() == "split,image_id,path,problem\n"
    write_report([Problem("val", "a", "/x/a.jpg", "bad, really")], path)
    rows = list(csv.reader(path.open()))
    assert rows == [
        ["split", "image_id", "path", "problem"],
        ["val", "a", "/x/a.jpg", "bad, really"],
    ]


def test_cli_exit_code_and_report(spec, tmp_path, capsys):
    report = tmp_path / "out" / "check.csv"
    argv = ["check-data", "--root", str(spec.root), "--report", str(report)]
    assert main(argv) == 0
    assert report.read_text() == "split,image_id,path,problem\n"

    broken = spec.image_path(TRAIN)
    broken.write_bytes(b"not a jpeg")
    assert main([*argv, "--split", "train", "--split", "val"]) == 1
    rows = list(csv.DictReader(report.open()))
    assert [(r["split"], r["image_id"], r["path"]) for r in rows] == [("train", TRAIN, str(broken))]
    assert str(broken) in capsys.readouterr().err


def test_an_empty_split_is_refused(spec):
    spec.split_path("val").write_text("\n\n")
    problem = _only(check_dataset(spec, ["val"]), spec.split_path("val"), "empty")
    assert problem.split == "val"


def test_duplicated_ids_are_refused_and_named(spec):
    path = spec.split_path("val")
    ids = path.read_text().split()
    path.write_text("\n".join([*ids, ids[2], ids[0], ids[2]]) + "\n")
    problems = check_dataset(spec, ["val"])
    assert {(p.image_id, p.path) for p in problems} == {(ids[2], str(path)), (ids[0], str(path))}
    by_id = {p.image_id: p.problem for p in problems}
    assert f"id {ids[2]} is listed 3 times" in by_id[ids[2]]
    assert "listed 2 times" in by_id[ids[0]]


def test_kinds_split_the_checks(spec):
    spec.image_path(VAL).write_bytes(b"not a jpeg")
    mask = spec.mask_path(TRAIN)
    save_label_png(mask, np.full((8, 8), 1, dtype=np.uint8), spec.palette)  # wrong size
    images = check_dataset(spec, ["val", "train"], kind="images")
    assert [(p.image_id, p.path) for p in images] == [(VAL, str(spec.image_path(VAL)))]
    labels = check_dataset(spec, ["val", "train"], kind="labels")
    assert [(p.image_id, p.path) for p in labels] == [(TRAIN, str(mask))]
    assert "but the image is" in labels[0].problem  # size read from the header alone
    assert len(check_dataset(spec, ["val", "train"])) == 2


def test_cli_logs_every_problem_and_writes_the_manifest_only_when_clean(spec, tmp_path):
    log, report, manifest = tmp_path / "c.log", tmp_path / "c.csv", tmp_path / "m.tsv"
    argv = ["--log-file", str(log), "check-data", "--root", str(spec.root), "--split", "val"]
    argv += ["--kind", "images", "--report", str(report), "--manifest", str(manifest)]
    assert main(argv) == 0
    assert manifest.read_text().startswith("path\tsize\tmtime_ns\tsha256\n")
    manifest.unlink()
    ids = spec.split_path("val").read_text().split()
    spec.split_path("val").write_text("\n".join([*ids, ids[1]]))
    broken = spec.image_path(ids[0])
    broken.write_bytes(b"not a jpeg")
    assert main(argv) == 1
    assert not manifest.exists()
    text = log.read_text()
    assert f"{broken}: image does not decode" in text
    assert f"id {ids[1]} is listed 2 times" in text
    assert "2 problem(s)" in text and str(report) in text
    assert len(list(csv.DictReader(report.open()))) == 2
    # the history beside the log keeps both attempts (Snakemake deletes the log before a re-run)
    history = (tmp_path / "c.history.log").read_text()
    assert history.count("pcam check-data: attempt started") == 2
    assert main([*argv[:-2], "--manifest", str(manifest), "--split", "train"]) == 2

"""Dataset manifests: which files a split's readers depend on, and a digest that changes when
one of them is edited, not when it is touched, and is cheap to recompute."""

import os
import shutil

import pytest

from pcam.data import manifest
from pcam.data.voc import DatasetSpec, read_split

TRAIN = "demo_000002"  # in train and train_aug: both masks


@pytest.fixture
def spec(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    return DatasetSpec.from_settings({"root": str(root)})


def _rel(spec, paths):
    return [p.relative_to(spec.root).as_posix() for p in paths]


def test_listed_files_by_kind(spec):
    ids = read_split(spec, "train")
    images = _rel(spec, manifest.listed_files(spec, "train", "images"))
    assert images == ["ImageSets/Segmentation/train.txt"] + [f"JPEGImages/{i}.jpg" for i in ids]
    labels = _rel(spec, manifest.listed_files(spec, "train", "labels"))
    assert labels[:3] == ["ImageSets/Segmentation/train.txt", "dataset.json", images[1]]
    assert labels[3:6] == [
        f"SegmentationClass/{ids[0]}.png",
        f"SegmentationClassAug/{ids[0]}.png",
        f"Annotations/{ids[0]}.xml",
    ]
    assert len(labels) == 2 + 4 * len(ids)


def test_a_missing_split_list_is_listed_alone(spec):
    assert _rel(spec, manifest.listed_files(spec, "nope", "labels")) == [
        "ImageSets/Segmentation/nope.txt"
    ]
    with pytest.raises(ValueError, match="kind"):
        manifest.listed_files(spec, "train", "masks")


def _fp(spec, tmp_path, kind="labels"):
    return manifest.fingerprint(spec, "train", kind, tmp_path / "m.tsv")


def test_touching_changes_nothing_editing_changes_the_digest(spec, tmp_path):
    before = _fp(spec, tmp_path)
    mask = spec.mask_path(TRAIN)
    os.utime(mask, ns=(1, 1))
    assert _fp(spec, tmp_path) == before
    mask.write_bytes(mask.read_bytes() + b"\0")
    after = _fp(spec, tmp_path)
    assert after != before
    # a mask only changes what reads labels
    assert _fp(spec, tmp_path, "images") == manifest.digest(manifest.scan(spec, "train", "images"))


def test_adding_or_removing_a_file_changes_the_digest(spec, tmp_path):
    before = _fp(spec, tmp_path)
    spec.annotation_path(TRAIN).unlink()
    removed = _fp(spec, tmp_path)
    assert removed != before
    spec.annotation_path(TRAIN).write_text("<annotation/>")
    assert _fp(spec, tmp_path) not in (before, removed)


def test_unchanged_files_are_not_reread(spec, tmp_path, monkeypatch):
    path = tmp_path / "m.tsv"
    entries = manifest.scan(spec, "train", "labels")
    manifest.write_manifest(entries, path)
    assert manifest.read_manifest(path) == {e.path: e for e in entries}
    read = []
    real = manifest._sha256
    monkeypatch.setattr(manifest, "_sha256", lambda p: read.append(p) or real(p))
    mask = spec.mask_path(TRAIN)
    os.utime(mask, ns=(2, 2))  # stat changed: this one file is hashed again
    again = manifest.scan(spec, "train", "labels", manifest.read_manifest(path))
    assert read == [mask]
    assert manifest.digest(again) == manifest.digest(entries)


def test_fingerprint_follows_a_split_list_written_later(spec, tmp_path):
    """The workflow asks before the demo data exists and again once it does."""
    lst = spec.split_path("train")
    text = lst.read_text()
    lst.unlink()
    absent = _fp(spec, tmp_path)
    lst.write_text(text)
    assert _fp(spec, tmp_path) != absent


def test_a_damaged_manifest_reads_as_empty(tmp_path):
    path = tmp_path / "m.tsv"
    path.write_text("path\tsize\nx\tnot-a-number\n")
    assert manifest.read_manifest(path) == {}
    assert manifest.read_manifest(tmp_path / "missing.tsv") == {}

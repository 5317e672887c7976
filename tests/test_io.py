"""Atomic writes leave no finished-looking file on failure; score and label formats round-trip."""

import numpy as np
import pytest
from PIL import Image

from pcam.errors import DataError
from pcam.io import (
    atomic_path,
    find_in_dirs,
    load_label_png,
    load_scores,
    save_label_png,
    save_scores,
    shard_ids,
)


def test_atomic_path_leaves_nothing_when_the_writer_fails(tmp_path):
    final = tmp_path / "out" / "x.npz"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []


def test_atomic_path_replaces_an_existing_file(tmp_path):
    final = tmp_path / "x.txt"
    final.write_text("old")
    with atomic_path(final) as tmp:
        tmp.write_text("new")
    assert final.read_text() == "new"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_scores_round_trip_without_pickles(tmp_path, dtype):
    rng = np.random.default_rng(0)
    cam = rng.random((2, 5, 7), dtype=np.float32)
    path = tmp_path / "a.npz"
    save_scores(path, np.array([0, 3, 7]), dtype=dtype, cam=cam)
    with np.load(path, allow_pickle=False) as raw:
        assert raw["cam"].dtype == np.dtype(dtype)
        assert raw["keys"].dtype == np.int64
    out = load_scores(path)
    assert out["cam"].dtype == np.float32
    np.testing.assert_allclose(out["cam"], cam, atol=1e-3 if dtype == "float16" else 0)
    np.testing.assert_array_equal(out["keys"], [0, 3, 7])


def test_corrupt_score_archive_names_the_file(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz"):
        load_scores(path)


def test_label_png_is_a_palette_png_that_round_trips(tmp_path):
    labels = np.array([[0, 1, 255], [2, 2, 0]], dtype=np.uint8)
    palette = np.array([[0, 0, 0], [128, 0, 0], [0, 128, 0]], dtype=np.uint8)
    path = tmp_path / "l.png"
    save_label_png(path, labels, palette)
    with Image.open(path) as img:
        assert img.mode == "P"
        assert img.getpalette()[3:6] == [128, 0, 0]
    np.testing.assert_array_equal(load_label_png(path), labels)


def test_label_png_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.png"):
        load_label_png(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="bad.png"):
        load_label_png(bad)
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (2, 2)).save(rgb)
    with pytest.raises(DataError, match="rgb.png"):
        load_label_png(rgb)


def test_shards_partition_the_list_and_lookup_searches_all(tmp_path):
    ids = [f"i{k}" for k in range(7)]
    shards = [shard_ids(ids, k, 3) for k in range(3)]
    assert sorted(sum(shards, [])) == sorted(ids)
    assert shards[1] == ["i1", "i4"]
    with pytest.raises(ValueError):
        shard_ids(ids, 3, 3)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "i4.png").write_bytes(b"")
    assert find_in_dirs([tmp_path / "a", tmp_path / "b"], "i4", ".png") == tmp_path / "b" / "i4.png"
    with pytest.raises(DataError, match="i5.png"):
        find_in_dirs([tmp_path / "a", tmp_path / "b"], "i5", ".png")

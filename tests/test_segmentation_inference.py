"""Stage 8: multi-scale segmentation inference (spec 8.3) of any registered network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pcam.data.voc import DatasetSpec, load_image, read_split
from pcam.errors import DataError
from pcam.inference import ShardRun
from pcam.io import load_label_png, save_label_png
from pcam.models import build_model, save_model, segmentation_kind
from pcam.stages.segmentation import SERVER_LAYOUT, infer_deeplab
from tests.stage_settings import cpu_compute, section

torch.set_num_threads(1)
COMPUTE = cpu_compute()


def _settings(stage: str, **overrides) -> dict:
    """The config's `stage` section; a 16-channel head for the networks."""
    return section(stage, **({"head_channels": 16} if stage == "deeplab" else {}), **overrides)


@pytest.fixture(scope="module")
def spec(demo_root: Path) -> DatasetSpec:
    return DatasetSpec.from_settings({"root": str(demo_root)})


def _model_file(path: Path, num_classes: int, **overrides) -> Path:
    """A randomly initialised segmentation network saved as a model file."""
    torch.manual_seed(0)
    settings = _settings("deeplab", **overrides)
    kind = segmentation_kind(settings["network"])
    save_model(path, kind, build_model(kind, settings, num_classes), settings, num_classes)
    return path


@pytest.fixture(scope="module")
def model(spec, tmp_path_factory) -> Path:
    return _model_file(tmp_path_factory.mktemp("deeplab") / "model.pt", spec.num_classes)


def _infer(spec, model, out: Path, with_crf: bool, shard=0, num_shards=2, **kw) -> None:
    infer_deeplab(
        spec,
        _settings("deeplab_inference", scales=[0.5, 1.0], **kw),
        ShardRun(model, spec.val_split, shard, num_shards, COMPUTE),
        out_dir=out / "pred",
        out_crf_dir=out / "crf" if with_crf else None,
        workers=1,
        server_format=False,
    )


def _read_prediction(path: Path, spec: DatasetSpec) -> np.ndarray:
    """Labels of a prediction PNG, checking it is indexed in the dataset's palette."""
    with Image.open(path) as img:
        assert img.mode == "P"
        palette = np.array(img.getpalette()[: 3 * spec.num_classes]).reshape(-1, 3)
    np.testing.assert_array_equal(palette, spec.palette[: spec.num_classes])
    return load_label_png(path)


def _check_png(path: Path, spec: DatasetSpec, image_id: str) -> np.ndarray:
    labels = _read_prediction(path, spec)
    assert labels.shape == load_image(spec.image_path(image_id)).shape[:2]
    assert labels.max() < spec.num_classes
    return labels


def test_prediction_png_round_trip(spec, tmp_path):
    labels = np.random.default_rng(0).integers(0, spec.num_classes, (7, 9)).astype(np.uint8)
    save_label_png(tmp_path / "x.png", labels, spec.palette)
    np.testing.assert_array_equal(_read_prediction(tmp_path / "x.png", spec), labels)


def test_shards_cover_the_split_once(spec, model, tmp_path):
    ids = read_split(spec, spec.val_split)
    for shard in (0, 1):
        _infer(spec, model, tmp_path, with_crf=False, shard=shard)
    written = sorted(p.stem for p in (tmp_path / "pred").glob("*.png"))
    assert written == sorted(ids) and not (tmp_path / "crf").exists()
    for image_id in ids:
        _check_png(tmp_path / "pred" / f"{image_id}.png", spec, image_id)


def test_predictions_are_the_argmax_of_the_summed_multiscale_logits(spec, model, tmp_path):
    from pcam.models import load_model
    from pcam.segment import multiscale_probs

    _infer(spec, model, tmp_path, with_crf=False, num_shards=1)
    net = load_model(model)
    for image_id in read_split(spec, spec.val_split)[:2]:
        image = load_image(spec.image_path(image_id))
        with torch.inference_mode():
            probs = multiscale_probs(net, image, [0.5, 1.0], True)
        written = load_label_png(tmp_path / "pred" / f"{image_id}.png")
        agree = (written == probs.argmax(0).numpy()).mean()
        assert agree > 0.999  # channels_last changes the rounding, not the labels (but ties)


def test_with_crf(spec, model, tmp_path):
    pytest.importorskip("pcam.crf")
    ids = read_split(spec, spec.val_split)[0::2]
    _infer(spec, model, tmp_path, with_crf=True, shard=0, num_shards=2)
    assert sorted(p.name for p in (tmp_path / "crf").iterdir()) == sorted(f"{i}.png" for i in ids)
    for image_id in ids:
        _check_png(tmp_path / "crf" / f"{image_id}.png", spec, image_id)
    # zero CRF iterations leave the probabilities alone: the CRF labels equal the plain ones,
    # up to ties created by the float16 spill of near-equal probabilities
    crf0 = _settings("deeplab_inference")["crf"] | {"iterations": 0}
    _infer(spec, model, tmp_path / "zero", with_crf=True, crf=crf0)
    plain = [load_label_png(tmp_path / "zero" / "pred" / f"{i}.png") for i in ids]
    refined = [load_label_png(tmp_path / "zero" / "crf" / f"{i}.png") for i in ids]
    agreement = np.mean(
        np.concatenate([(a == b).ravel() for a, b in zip(plain, refined, strict=True)])
    )
    assert agreement > 0.99


def test_resume_skips_finished_images_and_completes_missing_crf(spec, model, tmp_path):
    pytest.importorskip("pcam.crf")
    ids = read_split(spec, spec.val_split)
    _infer(spec, model, tmp_path, with_crf=True, num_shards=1)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*.png")}
    (tmp_path / "crf" / f"{ids[0]}.png").unlink()  # killed before the CRF of ids[0]
    (tmp_path / "pred" / f"{ids[1]}.png").unlink()  # ... and before the network pass of ids[1]
    _infer(spec, model, tmp_path, with_crf=True, num_shards=1)
    redone = {f"pred/{ids[0]}.png", f"crf/{ids[0]}.png", f"pred/{ids[1]}.png"}
    for path, stamp in stamps.items():
        if f"{path.parent.name}/{path.name}" not in redone:
            assert path.stat().st_mtime_ns == stamp, f"{path} was rewritten"
    for sub in ("pred", "crf"):
        assert sorted(p.stem for p in (tmp_path / sub).glob("*.png")) == sorted(ids)
    assert not list((tmp_path / "crf").glob(".probs-*"))  # no spill left behind


def test_server_format_and_empty_shard(spec, model, tmp_path):
    pytest.importorskip("pcam.crf")
    n = len(read_split(spec, spec.val_split))
    kwargs = dict(workers=1)
    settings = _settings("deeplab_inference", scales=[1.0], flip=False)
    infer_deeplab(
        spec, settings, ShardRun(model, spec.val_split, n, n + 1, COMPUTE),  # an empty shard
        out_dir=tmp_path / "pred", out_crf_dir=tmp_path / "crf", server_format=True, **kwargs,
    )  # fmt: skip
    for base in ("pred", "crf"):
        layout = tmp_path / base / SERVER_LAYOUT
        assert layout.is_dir() and not any(layout.iterdir())
    assert [p.name for p in (tmp_path / "crf").iterdir()] == ["results"]  # no spill left behind
    image_id = read_split(spec, spec.val_split)[0]
    infer_deeplab(
        spec, settings, ShardRun(model, spec.val_split, 0, n, COMPUTE),
        out_dir=tmp_path / "pred", out_crf_dir=None, server_format=True, **kwargs,
    )  # fmt: skip
    _check_png(tmp_path / "pred" / SERVER_LAYOUT / f"{image_id}.png", spec, image_id)


def test_refuses_a_model_of_another_dataset(spec, tmp_path):
    wrong = _model_file(tmp_path / "m.pt", 3)
    with pytest.raises(DataError, match=rf"{wrong}: predicts 3 classes"):
        _infer(spec, wrong, tmp_path, with_crf=False)


def test_refuses_a_model_that_is_no_segmentation_network(spec, tmp_path):
    from pcam.models.classifier import Classifier

    settings = {"backbone": "resnet18", "pretrained": False, "output_stride": 16, "norm": "bn"}
    save_model(tmp_path / "c.pt", "classifier", Classifier("resnet18", 8), settings, 8)
    with pytest.raises(DataError, match="not a deeplab or segformer model file"):
        _infer(spec, tmp_path / "c.pt", tmp_path, with_crf=False)


def test_a_segformer_predicts_through_the_same_stage(spec, tmp_path):
    segformer = _model_file(
        tmp_path / "seg.pt", spec.num_classes, network="segformer", backbone="pvt_v2_b0",
        output_stride=None,
    )  # fmt: skip
    _infer(spec, segformer, tmp_path, with_crf=False, num_shards=1)
    for image_id in read_split(spec, spec.val_split):
        _check_png(tmp_path / "pred" / f"{image_id}.png", spec, image_id)

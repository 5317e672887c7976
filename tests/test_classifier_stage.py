"""The classifier stage: dataset, model choice, loss closure, and a tiny end-to-end run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pcam.config import load_config, stage_settings, validate_stage
from pcam.data.labelled import ClassificationDataset
from pcam.data.voc import DatasetSpec, image_labels, read_split
from pcam.errors import ConfigError, DataError
from pcam.models import load_model
from pcam.models.classifier import Classifier, PuzzleClassifier
from pcam.stages.classifier import build_model, make_loss_fn, train_classifier
from pcam.train import TrainingJob

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
COMPUTE = {"device": "cpu", "gpus_per_job": 0, "mixed_precision": "off", "num_workers": 0}


def _settings(**overrides) -> dict:
    """The config's classifier defaults, shrunk to a tiny CPU run."""
    cfg = load_config(ROOT / "config" / "config.yaml")
    settings = stage_settings(cfg, "puzzle", "classifier")
    settings.update(crop_size=64, resize_range=[48, 80], batch_size=12, epochs=1, log_every=1)
    settings.update(overrides)
    return validate_stage("classifier", settings)


def _job(tmp_path: Path) -> TrainingJob:
    return TrainingJob(tmp_path / "model.pt", tmp_path / "curve.csv", tmp_path / "state")


@pytest.fixture(scope="module")
def spec(demo_root: Path) -> DatasetSpec:
    return DatasetSpec.from_settings({"root": str(demo_root)})


def test_dataset_items_are_normalised_crops_with_labels(spec):
    ids = read_split(spec, spec.train_split)
    dataset = ClassificationDataset(spec, ids, _settings(), seed=0)
    assert len(dataset) == len(ids) == 24
    item = dataset[0, 3]  # (epoch, index)
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["labels"].shape == (spec.num_classes - 1,)
    np.testing.assert_array_equal(item["labels"].numpy(), image_labels(spec, ids[3]))
    assert item["image"].abs().max() < 3.0  # normalised values, not 0..255
    # reproducible per (seed, epoch, index); a new epoch gives new draws
    assert torch.equal(dataset[0, 3]["image"], item["image"])
    assert not torch.equal(dataset[1, 3]["image"], item["image"])


class _CountingForward:
    """Records the batch size of every backbone call."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.sizes: list[int] = []
        module.register_forward_hook(lambda m, args, out: self.sizes.append(args[0].shape[0]))


def _batch(n: int = 2, size: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(n, 8)
    labels[:, 0] = 1.0
    return {"image": torch.randn(n, 3, size, size, generator=g), "labels": labels}


def test_cls_only_skips_the_tiled_pass():
    settings = _settings(loss_terms=["cls"])
    model = build_model(settings, 8)
    assert type(model) is Classifier
    calls = _CountingForward(model.backbone)
    loss, terms = make_loss_fn(settings)(model, _batch(), 0.5)
    assert calls.sizes == [2]  # one pass over the full images only
    assert set(terms) == {"cls", "alpha"} and loss.ndim == 0


def test_puzzle_loss_closure_runs_both_passes_and_ramps_alpha():
    settings = _settings(loss_terms=["cls", "pcls", "re"], alpha=4.0, alpha_schedule=0.5)
    model = build_model(settings, 8)
    assert isinstance(model, PuzzleClassifier)
    calls = _CountingForward(model.classifier.backbone)
    loss, terms = make_loss_fn(settings)(model, _batch(), 0.25)
    assert calls.sizes == [2, 8]  # full images, then 4 tiles each
    assert terms["alpha"] == pytest.approx(2.0)  # 4 * 0.25 / 0.5
    expected = terms["cls"] + terms["pcls"] + 2.0 * terms["re"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_crop_size_must_fit_the_puzzle():
    with pytest.raises(ConfigError, match="crop_size"):
        build_model(_settings(crop_size=80), 8)
    assert type(build_model(_settings(crop_size=80, loss_terms=["cls"]), 8)) is Classifier


def test_a_split_smaller_than_a_batch_is_refused(spec, tmp_path):
    with pytest.raises(DataError, match="train_aug.txt"):
        train_classifier(spec, _settings(batch_size=32), compute=COMPUTE, job=_job(tmp_path))
    assert not (tmp_path / "model.pt").exists()


def test_train_classifier_end_to_end(spec, tmp_path):
    job = _job(tmp_path)
    train_classifier(spec, _settings(), compute=COMPUTE, job=job)
    model = load_model(job.out_model)
    assert isinstance(model, Classifier)  # the plain classifier, not the puzzle wrapper
    logits, cams = model(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, spec.num_classes - 1) and cams.shape[2:] == (4, 4)
    assert job.out_curve.read_text().strip()


def _imported(tmp_path: Path, num_classes: int) -> Path:
    """A pcam model file as `pcam import-checkpoint` writes it, from an official-layout state."""
    from pcam.models.official import import_checkpoint, pcam_to_official

    torch.manual_seed(3)
    model = Classifier.from_settings(_settings(), num_classes)
    official = tmp_path / "official.pth"
    torch.save(pcam_to_official("classifier", model.state_dict()), official)
    out = tmp_path / "imported.pt"
    import_checkpoint(official, "classifier", "resnet18", out)
    return out


def test_from_checkpoint_adopts_the_imported_model_instead_of_training(tmp_path, spec):
    imported = _imported(tmp_path, spec.num_classes - 1)
    job = _job(tmp_path / "run")
    # one image per batch would fail training (fewer images than a batch): nothing trains here
    settings = _settings(from_checkpoint=str(imported), batch_size=1000)
    train_classifier(spec, settings, compute=COMPUTE, job=job)
    assert job.out_model.read_bytes() == imported.read_bytes()
    assert job.out_curve.read_text() == "step\n"
    assert not job.state_dir.exists()


def test_from_checkpoint_refuses_a_model_of_another_class_count(tmp_path, spec):
    imported = _imported(tmp_path, spec.num_classes + 1)
    job = _job(tmp_path / "run")
    with pytest.raises(DataError, match=r"imported\.pt predicts .* classes"):
        train_classifier(spec, _settings(from_checkpoint=str(imported)), compute=COMPUTE, job=job)
    assert not job.out_model.exists()

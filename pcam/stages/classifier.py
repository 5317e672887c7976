"""Stage 1: train the Puzzle-CAM classifier (spec 2) on the training split's image-level labels.

Builds the dataset (spec 1.4 augmentation), the model (`PuzzleClassifier`, or the plain
`Classifier` when the loss is L_cls alone, so the baseline never pays for the tiled pass), the
loss closure with the alpha schedule, and hands them to the one training loop
(`pcam.stages.training.train_network`). The saved model is always the plain `Classifier`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pcam.curves import curve_csv
from pcam.data.labelled import ClassificationDataset
from pcam.data.voc import DatasetSpec, read_split
from pcam.errors import ConfigError, DataError
from pcam.io import write_text
from pcam.losses import alpha_at, puzzle_loss
from pcam.models.classifier import Classifier, PuzzleClassifier
from pcam.puzzle import pieces_per_side
from pcam.stages.training import train_network
from pcam.train import TrainingJob

log = logging.getLogger(__name__)


def uses_puzzle(settings: dict[str, Any]) -> bool:
    """True when a loss term needs the tiled pass (anything beyond L_cls)."""
    return set(settings["loss_terms"]) != {"cls"}


def build_model(settings: dict[str, Any], num_classes: int) -> nn.Module:
    """`PuzzleClassifier` around a `Classifier`, or the bare `Classifier` for the cls-only loss.

    With the puzzle, crop_size must be a multiple of sqrt(num_pieces) * output_stride so that
    the merged tile CAMs line up with the full-image CAMs (ConfigError otherwise).
    """
    classifier = Classifier.from_settings(settings, num_classes)
    if not uses_puzzle(settings):
        return classifier
    step = pieces_per_side(settings["num_pieces"]) * classifier.output_stride
    if settings["crop_size"] % step:
        raise ConfigError(
            f"classifier.crop_size: {settings['crop_size']} must be a multiple of "
            f"sqrt(num_pieces) * output_stride = {step} for the puzzle module"
        )
    return PuzzleClassifier(classifier, settings["num_pieces"])


def make_loss_fn(settings: dict[str, Any]):
    """The closure `fit` calls: (model or its DDP wrapper, batch, progress t/T) -> (loss, terms)."""
    terms = list(settings["loss_terms"])

    def loss_fn(model: nn.Module, batch: dict[str, Tensor], progress: float):
        out = model(batch["image"])
        if not isinstance(out, dict):  # plain Classifier: (logits, cams)
            out = {"logits": out[0], "cams": out[1]}
        alpha = alpha_at(progress, 1.0, settings["alpha"], settings["alpha_schedule"])
        return puzzle_loss(
            out,
            batch["labels"],
            terms,
            alpha,
            settings["re_loss"],
            settings["re_loss_option"],
            settings["level"],
        )

    return loss_fn


def _unwrap(model: nn.Module) -> Classifier:
    return model.classifier if isinstance(model, PuzzleClassifier) else model


def train_classifier(
    spec: DatasetSpec, settings: dict[str, Any], *, compute: dict[str, Any], job: TrainingJob
) -> None:
    """Train on `spec.train_split`; write `job.out_model` (a plain Classifier) and the curve.

    With `settings["from_checkpoint"]` (a model file from `pcam import-checkpoint`), adopt that
    model instead of training (`adopt_imported`) and write a curve without rows.
    """
    num_classes = spec.num_classes - 1
    if settings["from_checkpoint"]:
        _adopt(Path(settings["from_checkpoint"]), settings, num_classes, job)
        return
    ids = read_split(spec, spec.train_split)
    if len(ids) < settings["batch_size"]:
        raise DataError(
            f"{spec.split_path(spec.train_split)}: {len(ids)} images, fewer than one batch "
            f"(classifier.batch_size = {settings['batch_size']})"
        )
    dataset = ClassificationDataset(spec, ids, settings, settings["seed"])
    torch.manual_seed(settings["seed"])  # the head's and a random backbone's initial weights
    model = build_model(settings, num_classes)
    log.info(
        "classifier: %s, %d images of %s, loss %s",
        settings["backbone"], len(dataset), spec.train_split, "+".join(settings["loss_terms"]),
    )  # fmt: skip
    train_network(
        "classifier", spec, settings, compute, job,
        model=model, loss_fn=make_loss_fn(settings), dataset=dataset, num_classes=num_classes,
        sync_bn=settings["norm"] == "bn", export=_unwrap,
    )  # fmt: skip


def _adopt(path: Path, settings: dict[str, Any], num_classes: int, job: TrainingJob) -> None:
    """`classifier.from_checkpoint`: the imported model becomes the stage's model, unchanged."""
    from pcam.models import load_model
    from pcam.models.official import adopt_imported

    found = load_model(path, kind="classifier").num_outputs
    if found != num_classes:
        raise DataError(
            f"classifier.from_checkpoint: {path} predicts {found} classes, the dataset has "
            f"{num_classes} foreground classes"
        )
    adopt_imported(path, "classifier", settings, job.out_model)
    write_text(job.out_curve, curve_csv([]))
    log.info("classifier: adopted %s (classifier.from_checkpoint), no training", path)

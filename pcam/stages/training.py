"""What the three training stages share: the state key of a training and the call of the loop.

`train_network` keys the resumable state by everything the result depends on and nothing else:
the stage settings without the execution-only keys, the result-affecting compute
keys, the code fingerprint of the stage (its module and every pcam module it imports), the
dataset's identity, and the content of every input the training reads (the split list, label
directories, an init model, and the job's `state_inputs`, e.g. the dataset manifest).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from pcam.checkpoint import state_key
from pcam.data.voc import DatasetSpec
from pcam.errors import ConfigError
from pcam.fingerprint import RESULT_COMPUTE_KEYS, code_fingerprint
from pcam.models import load_classifier_backbone, save_model
from pcam.train import LossFn, SelectFn, TrainingJob, fit

# Settings that change how a training runs, never what it computes.
EXECUTION_ONLY = frozenset({"checkpoint_every", "log_every"})
# Dataset fields a training does not read (colours; the evaluation and test splits).
_NOT_READ = frozenset({"palette", "eval_split", "test_split"})


def dataset_identity(spec: DatasetSpec) -> dict[str, Any]:
    """The dataset fields a training depends on (root, class names, folders, training splits)."""
    return {f.name: str(getattr(spec, f.name)) for f in fields(spec) if f.name not in _NOT_READ}


def training_key(
    kind: str,
    spec: DatasetSpec,
    settings: dict[str, Any],
    compute: dict[str, Any],
    inputs: Sequence[Path],
) -> str:
    """The state key of the `kind` training ("classifier", "affinitynet", "deeplab")."""
    identity = {
        "stage": kind,
        "settings": {k: v for k, v in settings.items() if k not in EXECUTION_ONLY},
        "compute": {k: compute[k] for k in RESULT_COMPUTE_KEYS["training"]},
        "code": code_fingerprint(f"pcam.stages.{kind}"),
        "dataset": dataset_identity(spec),
    }
    return state_key(identity, [spec.split_path(spec.train_split), *inputs])


def init_backbone(
    model: nn.Module, section: str, settings: dict[str, Any], init_model: Path | None
) -> list[Path]:
    """`init_from_classifier`: start `model.backbone` from the trained classifier `init_model`.
    Returns the files the training's resumable state is keyed on: [init_model], or [] when the
    section does not ask for it (the backbone keeps its `pretrained` weights)."""
    if not settings["init_from_classifier"]:
        return []
    if init_model is None:
        raise ConfigError(f"{section}.init_from_classifier: no classifier model was given")
    load_classifier_backbone(model, init_model)
    return [init_model]


def train_network(
    stage: str,
    spec: DatasetSpec,
    settings: dict[str, Any],
    compute: dict[str, Any],
    job: TrainingJob,
    *,
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Dataset,
    num_classes: int,
    inputs: Sequence[Path] = (),
    sync_bn: bool,
    select_fn: SelectFn | None = None,
    export: Callable[[nn.Module], nn.Module] = lambda m: m,
    kind: str | None = None,
) -> None:
    """Train `model` with the one loop for the stage module `pcam.stages.{stage}` and write a
    model file of `kind` (`pcam.models`; default: the stage's name).

    inputs: the files and directories the stage reads beyond the dataset (labels, init model);
    with `job.state_inputs` they key the resumable state. export: the part of the trained
    model that is saved (e.g. the classifier inside its puzzle wrapper).
    """

    def save_fn(trained: nn.Module, path: Path) -> None:
        save_model(path, kind or stage, export(trained), settings, num_classes)

    key = training_key(stage, spec, settings, compute, [*inputs, *job.state_inputs])
    fit(
        model,
        loss_fn,
        dataset,
        model.parameter_groups(),
        settings,
        compute,
        job=job,
        key=key,
        save_fn=save_fn,
        sync_bn=sync_bn,
        select_fn=select_fn,
    )

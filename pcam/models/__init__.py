"""Model files: one format for every trained network (classifier, AffinityNet, segmentation).

A model file is `torch.save` of a plain dict {kind, settings, num_classes, state_dict}: tensors,
strings and numbers only, so `torch.load(weights_only=True)` reads it. Identical weights and
settings give identical file bytes (`save_torch`). `load_model` rebuilds the
network from `settings` with `pretrained=False` (loading never downloads) and loads the weights.

`MODEL_KINDS` is the registry of networks. A segmentation network names the `deeplab.network`
value that selects it: adding one is a model file (a class with `from_settings`, `forward` ->
logits at the input size, `num_outputs` and `parameter_groups`) and one line here (plus its name
in the schema's `deeplab.network` enum, which a test checks against this registry).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pcam.errors import ConfigError, DataError
from pcam.io import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelKind:
    """Where a kind's class lives (it has `from_settings(settings, num_classes)`), and for a
    segmentation network the `deeplab.network` value that selects it."""

    module: str
    name: str
    network: str | None = None


# kind (stored in the model file) -> its class.
MODEL_KINDS: dict[str, ModelKind] = {
    "classifier": ModelKind("pcam.models.classifier", "Classifier"),
    "affinitynet": ModelKind("pcam.models.affinitynet", "AffinityNet"),
    "deeplab": ModelKind("pcam.models.deeplab", "DeepLabV3Plus", network="deeplabv3plus"),
    "segformer": ModelKind("pcam.models.segformer", "SegFormer", network="segformer"),
}


_REQUIRED_KEYS = frozenset({"kind", "settings", "num_classes", "state_dict"})


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj)` to `path`, atomically, with no incidental bytes.

    Saved through an open file, not a path: given a path, torch names the archive's records
    after the file, and the atomic write's temporary name is random.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def segmentation_kinds() -> tuple[str, ...]:
    """The kinds of every segmentation network (what the segmentation inference accepts)."""
    return tuple(kind for kind, entry in MODEL_KINDS.items() if entry.network is not None)


def segmentation_kind(network: str) -> str:
    """The model kind of the segmentation network named `network` (`deeplab.network`)."""
    for kind, entry in MODEL_KINDS.items():
        if entry.network is not None and entry.network == network:
            return kind
    known = sorted(e.network for e in MODEL_KINDS.values() if e.network is not None)
    raise ConfigError(f"deeplab.network: unknown network {network!r} (known: {known})")


def _model_class(kind: str) -> Any:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r} (known: {sorted(MODEL_KINDS)})")
    entry = MODEL_KINDS[kind]
    return getattr(importlib.import_module(entry.module), entry.name)  # lazy: imports torch/timm


def build_model(kind: str, settings: dict[str, Any], num_classes: int) -> nn.Module:
    """A new network of `kind` from its config section (`from_settings`)."""
    return _model_class(kind).from_settings(settings, num_classes)


def save_model(
    path: str | os.PathLike, kind: str, model: nn.Module, settings: dict, num_classes: int
) -> None:
    """Write `model`'s weights (CPU tensors) with what `load_model` needs to rebuild it."""
    _model_class(kind)  # fail before writing if the kind cannot be read back
    payload = {
        "kind": kind,
        "settings": dict(settings),
        "num_classes": int(num_classes),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    save_torch(payload, path)


def load_model(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    kind: str | Collection[str] | None = None,
) -> nn.Module:
    """Rebuild and return the model saved at `path` (in eval mode, on `map_location`).

    kind: the model kind the caller needs ("classifier", "affinitynet", "deeplab", ...), or a
    collection of acceptable kinds (e.g. `segmentation_kinds()`), or None for any.
    Missing, corrupt, inconsistent or other-kind file -> DataError naming it.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: model file is missing") from exc
    except Exception as exc:  # torch raises many types for a damaged archive
        raise DataError(f"{path}: cannot read model file ({exc})") from exc
    if not isinstance(payload, dict) or not _REQUIRED_KEYS <= set(payload):
        raise DataError(f"{path}: not a pcam model file (expected kind/settings/state_dict)")
    wanted = (kind,) if isinstance(kind, str) else kind
    if wanted is not None and payload["kind"] not in wanted:
        needed = " or ".join(wanted)
        raise DataError(f"{path}: not a {needed} model file (it holds a {payload['kind']})")
    try:
        cls = _model_class(payload["kind"])
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from exc
    settings = {**payload["settings"], "pretrained": False}
    model = cls.from_settings(settings, payload["num_classes"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise DataError(f"{path}: weights do not fit a {payload['kind']} ({exc})") from exc
    return model.to(map_location).eval()


def load_classifier_backbone(model: nn.Module, path: str | os.PathLike) -> None:
    """Copy into `model.backbone` the backbone weights (BN statistics included) of the trained
    classifier at `path` (`init_from_classifier`); a backbone of another shape -> ConfigError."""
    classifier = load_model(path, kind="classifier")
    try:
        model.backbone.load_state_dict(classifier.backbone.state_dict())
    except RuntimeError as exc:
        raise ConfigError(
            f"{path}: its backbone does not fit this network's (same `backbone` needed): {exc}"
        ) from exc
    log.info("backbone initialised from the classifier %s", path)


__all__ = [
    "MODEL_KINDS",
    "ModelKind",
    "build_model",
    "load_classifier_backbone",
    "load_model",
    "save_model",
    "save_torch",
    "segmentation_kind",
    "segmentation_kinds",
]

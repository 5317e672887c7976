"""The official Puzzle-CAM checkpoints <-> pcam model files (`pcam import-checkpoint`).

The official networks wrap a ResNet/ResNeSt as `self.model` and also register its parts again as
`stage1` (conv1, bn1, relu, maxpool) .. `stage5` (layer4), so a saved state dict holds every
backbone tensor twice (`model.layer1.0.conv1.weight` = `stage2.0.0.conv1.weight`); AffinityNet
adds a third copy (`backbone.K`, a ModuleList of the stages) and a second copy of its edge layers
(`edge_layers.K`), plus integer `path_indices_K` buffers (the path index of its training crop).
Inside the backbone the official module names equal timm's (torchvision ResNet; ResNeSt's
`conv2.conv/bn0/fc1/bn1/fc2` split attention), so `model.X` is our `backbone.X`. Heads:

- classifier: `classifier.weight` (C, 2048, 1, 1), no bias -> `head.weight`;
- AffinityNet: `fc_edge1..5` (1x1 conv, GroupNorm) -> `sides.0..4`, `fc_edge6` -> `fuse`;
- DeepLabV3+ (GroupNorm head, the README's `use_gn True`): `aspp.aspp1..4` -> `aspp.branches`,
  `aspp.global_avg_pool` -> `aspp.image_pool`, `aspp.conv1/bn1` -> `aspp.project`,
  `decoder.conv1/bn1` -> `decoder.reduce`, `decoder.classifier.0/1/4/5/8` -> `decoder.fuse`
  and `decoder.classifier`.

Copies of one tensor must agree; the path indices are derived data and are recomputed by pcam.
Any other key, a shape that differs, or a tensor of ours left unfilled stops the import with a
message naming the keys. Where the architectures differ although the weights fit: README,
"Official checkpoints".
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pcam.errors import ConfigError, DataError
from pcam.io import atomic_path

log = logging.getLogger(__name__)

KINDS = ("classifier", "affinitynet", "deeplab")

# Official alias prefix -> the canonical official prefix of the same module.
_BACKBONE_ALIASES = [
    ("stage1.0.", "model.conv1."),
    ("stage1.1.", "model.bn1."),
    *((f"stage{k + 2}.0.", f"model.layer{k + 1}.") for k in range(4)),
]
_AFFINITY_ALIASES = [
    ("backbone.0.0.", "model.conv1."),
    ("backbone.0.1.", "model.bn1."),
    *((f"backbone.{k + 1}.0.", f"model.layer{k + 1}.") for k in range(4)),
    *((f"edge_layers.{k}.", f"fc_edge{k + 1}.") for k in range(6)),
]
_DERIVED = re.compile(r"^path_indices_\d+$")  # AffinityNet's path index (recomputed by pcam)

# Canonical official prefix -> pcam prefix, per kind.
_DEEPLAB_HEAD = [
    *((f"aspp.aspp{k + 1}.atrous_conv.", f"aspp.branches.{k}.0.") for k in range(4)),
    *((f"aspp.aspp{k + 1}.bn.", f"aspp.branches.{k}.1.") for k in range(4)),
    ("aspp.global_avg_pool.1.", "aspp.image_pool.1.0."),
    ("aspp.global_avg_pool.2.", "aspp.image_pool.1.1."),
    ("aspp.conv1.", "aspp.project.0.0."),
    ("aspp.bn1.", "aspp.project.0.1."),
    ("decoder.conv1.", "decoder.reduce.0."),
    ("decoder.bn1.", "decoder.reduce.1."),
    ("decoder.classifier.0.", "decoder.fuse.0.0."),
    ("decoder.classifier.1.", "decoder.fuse.0.1."),
    ("decoder.classifier.4.", "decoder.fuse.2.0."),
    ("decoder.classifier.5.", "decoder.fuse.2.1."),
    ("decoder.classifier.8.", "decoder.classifier."),
]
_RENAMES: dict[str, list[tuple[str, str]]] = {
    "classifier": [("model.", "backbone."), ("classifier.", "head.")],
    "affinitynet": [
        ("model.", "backbone."),
        *((f"fc_edge{k + 1}.", f"sides.{k}.") for k in range(5)),
        ("fc_edge6.", "fuse."),
    ],
    "deeplab": [("model.", "backbone."), *_DEEPLAB_HEAD],
}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"--kind: {kind!r} is not one of {list(KINDS)}")


def _aliases(kind: str) -> list[tuple[str, str]]:
    return _BACKBONE_ALIASES + (_AFFINITY_ALIASES if kind == "affinitynet" else [])


def _swap_prefix(key: str, table: list[tuple[str, str]], reverse: bool = False) -> str | None:
    """`key` with its longest matching prefix replaced through `table` (None: no prefix fits)."""
    pairs = [(b, a) if reverse else (a, b) for a, b in table]
    fits = [(src, dst) for src, dst in pairs if key.startswith(src)]
    if not fits:
        return None
    src, dst = max(fits, key=lambda p: len(p[0]))
    return dst + key[len(src) :]


def official_to_pcam(kind: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an official state dict into pcam's names for model `kind`.

    A leading `module.` (DataParallel) is dropped. Copies (aliases) of one tensor must be equal.
    Keys that no rule places -> DataError listing them.
    """
    _check_kind(kind)
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    unplaced = []
    for key, value in state.items():
        if kind == "affinitynet" and _DERIVED.match(key):
            continue
        canonical = _swap_prefix(key, _aliases(kind)) or key
        target = _swap_prefix(canonical, _RENAMES[kind])
        if target is None:
            unplaced.append(key)
        elif target in out and not torch.equal(out[target], value):
            raise DataError(f"official keys for {target} disagree (one of them is {key})")
        else:
            out[target] = value
    if unplaced:
        raise DataError(
            f"{len(unplaced)} official key(s) have no place in a pcam {kind}: "
            f"{', '.join(unplaced[:10])}" + (" ..." if len(unplaced) > 10 else "")
        )
    return out


def pcam_to_official(kind: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The official layout of a pcam state dict, every alias included (no path indices)."""
    _check_kind(kind)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        canonical = _swap_prefix(key, _RENAMES[kind], reverse=True)
        if canonical is None:
            raise DataError(f"pcam key {key} has no official counterpart in a {kind}")
        out[canonical] = value
        for alias, prefix in _aliases(kind):
            if canonical.startswith(prefix):
                out[alias + canonical[len(prefix) :]] = value
    return out


def check_fit(kind: str, mapped: dict[str, Tensor], ours: dict[str, Tensor]) -> None:
    """Every tensor of ours filled with one of the same shape, nothing left over; else
    DataError naming the keys (missing, unknown to our model, or of another shape)."""
    missing = sorted(set(ours) - set(mapped))
    extra = sorted(set(mapped) - set(ours))
    shapes = [
        f"{k} {tuple(mapped[k].shape)} vs ours {tuple(ours[k].shape)}"
        for k in sorted(set(ours) & set(mapped))
        if tuple(mapped[k].shape) != tuple(ours[k].shape)
    ]
    problems = []
    if extra:
        problems.append(f"not in our {kind} ({len(extra)}): {', '.join(extra[:8])}")
    if missing:
        problems.append(f"ours left unfilled ({len(missing)}): {', '.join(missing[:8])}")
    if shapes:
        problems.append(f"shapes differ ({len(shapes)}): {'; '.join(shapes[:5])}")
    if problems:
        hint = (
            " (an official DeepLab with a BatchNorm head, use_gn False, is not supported)"
            if kind == "deeplab" and any("running_mean" in k for k in extra)
            else ""
        )
        raise DataError(f"the checkpoint does not fit a pcam {kind}{hint}: " + " | ".join(problems))


def model_settings(kind: str, backbone: str, state: dict[str, Tensor]) -> tuple[dict, int]:
    """(settings, num_classes) of the pcam model matching an official state dict (pcam names).

    The settings are those the model classes' `from_settings` read; the official networks all
    run at output stride 16, classifier BN trainable, DeepLab's backbone BN frozen (spec 2.1, 8.1).
    """
    base: dict[str, Any] = {"backbone": backbone, "pretrained": False}
    if kind == "classifier":
        return {**base, "output_stride": 16, "norm": "bn"}, int(state["head.weight"].shape[0])
    if kind == "affinitynet":
        return base, 0  # boundaries know no classes
    head = int(state["aspp.project.0.0.weight"].shape[0])
    settings = {**base, "output_stride": 16, "norm": "frozen", "head_channels": head}
    settings["aspp_rates"] = [6, 12, 18]  # the official ASPP at output stride 16
    return settings, int(state["decoder.classifier.weight"].shape[0])


def read_official(path: Path) -> dict[str, Tensor]:
    """A state dict saved by the official code (`torch.save(model.state_dict())`)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: checkpoint file is missing") from exc
    except Exception as exc:  # torch raises many types for a damaged archive
        raise DataError(f"{path}: cannot read checkpoint ({exc})") from exc
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, Tensor) for v in payload.values()):
        raise DataError(f"{path}: not a state dict (a mapping of names to tensors)")
    return payload


def import_checkpoint(official: Path, kind: str, backbone: str, out: Path) -> int:
    """Write the pcam model file `out` from the official checkpoint `official`.

    Returns the number of our tensors filled. Any key that does not fit -> DataError naming
    the checkpoint; nothing is written then.
    """
    from pcam.models import _model_class, save_model

    official = Path(official)
    try:
        mapped = official_to_pcam(kind, read_official(official))
        settings, num_classes = model_settings(kind, backbone, mapped)
        model = _model_class(kind).from_settings(settings, num_classes)
        check_fit(kind, mapped, model.state_dict())
    except (DataError, KeyError) as exc:
        raise DataError(f"{official}: {exc}") from exc
    model.load_state_dict(mapped)
    save_model(out, kind, model, settings, num_classes)
    log.info("imported %s (%s, %s): %d tensors -> %s", official, kind, backbone, len(mapped), out)
    return len(mapped)


def adopt_imported(path: Path, kind: str, settings: dict[str, Any], out_model: Path) -> None:
    """Use the imported pcam model file `path` as a stage's trained model (`out_model`).

    For `classifier.from_checkpoint`: the file must be a readable pcam model of `kind` whose
    backbone is `settings["backbone"]`; it is copied atomically to `out_model`.
    """
    from pcam.models import load_model

    path = Path(path)
    load_model(path, kind=kind)  # DataError naming the file when missing, corrupt or other kind
    theirs = torch.load(path, map_location="cpu", weights_only=True)["settings"]["backbone"]
    if theirs != settings["backbone"]:
        raise ConfigError(
            f"{kind}.from_checkpoint: {path} holds a {theirs} {kind}, but {kind}.backbone is "
            f"{settings['backbone']}"
        )
    with atomic_path(out_model) as tmp:
        shutil.copyfile(path, tmp)

"""Parameter groups, the SGD optimiser and the poly learning-rate schedule (spec 2.5, 5.5, 15.1).

Pure: nothing here touches files or devices. A group is a plain dict
`{"params": [...], "lr_mult": float, "decay": bool, "name": str}`; `make_optimizer` turns the
multipliers into learning rates, and `apply_lr` rescales them every step from `initial_lr`, so the
schedule needs no state beyond the step number (a checkpoint stores the step, nothing else).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from pcam.errors import ConfigError

log = logging.getLogger(__name__)

NamedParams = Iterable[tuple[str, nn.Parameter]]

# (name, lr multiplier, weight decay on?) of the method's four groups (spec 2.5 table).
_GROUPS = (
    ("backbone_weight", 1.0, True),
    ("backbone_bias", 2.0, False),
    ("head_weight", 10.0, True),
    ("head_bias", 20.0, False),
)


def param_groups(backbone: NamedParams, head: NamedParams) -> list[dict[str, Any]]:
    """The four groups of spec 2.5: pretrained (backbone) vs scratch (head), weights vs the rest.

    A parameter whose name contains "weight" is a weight (BN/GN affine weights included);
    everything else (biases) gets 2x the lr and no weight decay. Frozen parameters
    (`requires_grad=False`) are left out and empty groups dropped.
    """
    buckets: dict[str, list[nn.Parameter]] = {name: [] for name, _, _ in _GROUPS}
    for part, named in (("backbone", backbone), ("head", head)):
        for name, p in named:
            if p.requires_grad:
                kind = "weight" if "weight" in name else "bias"
                buckets[f"{part}_{kind}"].append(p)
    return [
        {"params": buckets[name], "lr_mult": mult, "decay": decay, "name": name}
        for name, mult, decay in _GROUPS
        if buckets[name]
    ]


def single_group(
    params: Iterable[nn.Parameter] | NamedParams,
) -> list[dict[str, Any]]:
    """One group, lr x1 and weight decay on everything (AffinityNet, spec 5.5).

    Takes `model.parameters()` or `model.named_parameters()`; frozen parameters are left out.
    """
    plain = (p[1] if isinstance(p, tuple) else p for p in params)
    trainable = [p for p in plain if p.requires_grad]
    return (
        [{"params": trainable, "lr_mult": 1.0, "decay": True, "name": "all"}] if trainable else []
    )


def resolve_momentum(settings: dict[str, Any]) -> float:
    """SGD momentum: "official" -> the weight decay value (the upstream quirk, spec 2.5 / 15.1)."""
    momentum = settings["momentum"]
    if momentum == "official":
        return float(settings["weight_decay"])
    if isinstance(momentum, bool) or not isinstance(momentum, int | float) or not 0 <= momentum < 1:
        raise ConfigError(f"momentum: expected 'official' or a number in [0, 1), got {momentum!r}")
    return float(momentum)


def make_optimizer(groups: list[dict[str, Any]], settings: dict[str, Any]) -> torch.optim.SGD:
    """SGD over `groups` with lr = settings["lr"] * lr_mult and wd only where `decay` is set.

    Each torch param group keeps `initial_lr` (its lr at factor 1), `lr_mult`, `decay` and `name`.
    Nesterov with zero momentum is plain SGD (torch refuses the combination), so it is dropped then.
    """
    if not groups:
        raise ConfigError("no trainable parameters: every parameter has requires_grad=False")
    momentum = resolve_momentum(settings)
    nesterov = bool(settings["nesterov"]) and momentum > 0
    if bool(settings["nesterov"]) and not nesterov:
        log.debug("momentum is 0: Nesterov has no effect and is turned off")
    torch_groups = []
    for g in groups:
        lr = float(settings["lr"]) * float(g["lr_mult"])
        torch_groups.append(
            {
                "params": list(g["params"]),
                "lr": lr,
                "initial_lr": lr,
                "weight_decay": float(settings["weight_decay"]) if g["decay"] else 0.0,
                "lr_mult": float(g["lr_mult"]),
                "decay": bool(g["decay"]),
                "name": str(g["name"]),
            }
        )
    return torch.optim.SGD(
        torch_groups, lr=float(settings["lr"]), momentum=momentum, nesterov=nesterov
    )


def poly_lr(step: int, total_steps: int, power: float) -> float:
    """The poly factor (1 - step/total)^power for 0-based `step` (spec 2.5: the first step is 1)."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    return max(0.0, 1.0 - step / total_steps) ** power


def apply_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every group's lr to its `initial_lr` times `factor`."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor

"""Parameter groups, the momentum quirk and the poly schedule (spec 2.5, 5.5, 15.1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pcam.errors import ConfigError
from pcam.optim import (
    apply_lr,
    make_optimizer,
    param_groups,
    poly_lr,
    resolve_momentum,
    single_group,
)

SETTINGS = {"lr": 0.1, "weight_decay": 1e-4, "momentum": "official", "nesterov": True}


def _groups():
    backbone, head = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), nn.Conv2d(4, 2, 1)
    backbone[0].bias.requires_grad_(False)  # frozen parameters are left out
    return param_groups(backbone.named_parameters(), head.named_parameters())


def test_four_groups_with_their_lr_multipliers_and_decay():
    opt = make_optimizer(_groups(), SETTINGS)
    got = {g["name"]: (g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups}
    assert got == {
        "backbone_weight": (pytest.approx(0.1), 1e-4, 2),  # conv weight, BN weight
        "backbone_bias": (pytest.approx(0.2), 0.0, 1),  # BN bias (conv bias frozen)
        "head_weight": (pytest.approx(1.0), 1e-4, 1),
        "head_bias": (pytest.approx(2.0), 0.0, 1),
    }


def test_official_momentum_equals_weight_decay_and_nesterov_is_kept():
    opt = make_optimizer(_groups(), SETTINGS)
    assert opt.defaults["momentum"] == pytest.approx(1e-4) and opt.defaults["nesterov"]
    assert resolve_momentum({**SETTINGS, "momentum": 0.9}) == 0.9
    with pytest.raises(ConfigError, match="momentum"):
        resolve_momentum({**SETTINGS, "momentum": 1.5})
    plain = make_optimizer(_groups(), {**SETTINGS, "momentum": 0.0})
    assert plain.defaults["nesterov"] is False  # torch refuses Nesterov without momentum


def test_poly_schedule_rescales_every_group_from_its_initial_lr():
    assert poly_lr(0, 100, 0.9) == 1.0
    assert poly_lr(50, 100, 0.9) == pytest.approx(0.5**0.9)
    assert poly_lr(100, 100, 0.9) == 0.0
    opt = make_optimizer(_groups(), SETTINGS)
    apply_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.1, 0.5, 1.0])


def test_single_group_holds_every_trainable_parameter():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4))
    net[0].weight.requires_grad_(False)
    (group,) = single_group(net.named_parameters())
    assert len(group["params"]) == 3 and group["decay"] and group["lr_mult"] == 1.0
    assert single_group([nn.Parameter(torch.zeros(1), requires_grad=False)]) == []

"""Backbones: every encoder is a timm feature extractor, never a copied network (spec 2.1).

`create_backbone` returns timm's `features_only` module: `forward(x)` gives a list of feature maps
(one per entry of `out_indices`), and `feature_info.channels()` / `feature_info.reduction()`
give their widths and strides. For ResNet-style models index 1..4 are layer1..layer4 (strides
4/8/16/16 at output stride 16, the paper's setting: layer4 dilated instead of strided).
Backbones without dilation support (e.g. the hierarchical transformer `pvt_v2_b0`) take
`output_stride=None`: their own strides (4/8/16/32 there).
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pcam.errors import ConfigError

log = logging.getLogger(__name__)


class FixedBatchNorm2d(nn.Module):
    """BatchNorm that always normalises with its running statistics (the official "fix" mode).

    The running mean/variance are never updated. The affine weight and bias stay trainable
    Parameters, as in the official `FixedBatchNorm` (spec 2.1). It is deliberately not a
    `_BatchNorm` subclass, so `SyncBatchNorm.convert_sync_batchnorm` leaves it alone under DDP.
    State-dict keys match `nn.BatchNorm2d`, so checkpoints of either load into the other.
    """

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.eps = bn.eps
        num = bn.num_features
        self.weight = nn.Parameter(bn.weight.detach().clone() if bn.affine else torch.ones(num))
        self.bias = nn.Parameter(bn.bias.detach().clone() if bn.affine else torch.zeros(num))
        mean = bn.running_mean if bn.running_mean is not None else torch.zeros(num)
        var = bn.running_var if bn.running_var is not None else torch.ones(num)
        self.register_buffer("running_mean", mean.detach().clone())
        self.register_buffer("running_var", var.detach().clone())
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> same shape, normalised with the running statistics."""
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


def fix_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every `nn.BatchNorm2d` inside `module` (in place) by a `FixedBatchNorm2d`."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FixedBatchNorm2d(child))
        else:
            fix_batch_norm(child)
    return module


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin")  # looked for in this order in a folder


def weights_file(pretrained: str, name: str) -> Path:
    """The local weights file of backbone `name`: `pretrained` itself, or, when it is a folder
    (`pretrained_dir`), `{folder}/{name}` + the first of WEIGHT_SUFFIXES present.
    Nothing found -> ConfigError naming what was looked for."""
    path = Path(pretrained).expanduser()
    if path.is_dir():
        candidates = [path / f"{name}{suffix}" for suffix in WEIGHT_SUFFIXES]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(
                f"pretrained_dir: {path} holds none of {', '.join(c.name for c in candidates)}"
            )
        return found
    if not path.is_file():
        raise ConfigError(f"pretrained: weights file {path} does not exist")
    return path


def _pretrained_kwargs(pretrained: bool | str, name: str) -> dict:
    """timm keyword arguments for False / True (hub) / a local weights file or folder."""
    if isinstance(pretrained, bool):
        return {"pretrained": pretrained}
    file = weights_file(pretrained, name)
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(file)}}


def create_backbone(
    name: str,
    *,
    pretrained: bool | str = False,
    output_stride: int | None = None,
    out_indices: int | tuple[int, ...] = (1, 2, 3, 4),
    frozen_bn: bool = False,
) -> nn.Module:
    """A timm feature extractor (`features_only=True`) for `name`.

    pretrained: False = random init, True = ImageNet weights from the timm hub, a path = that
    local weights file (a timm/torchvision state dict), or a folder holding `{name}.safetensors`
    / `.pth` / `.bin` (`pretrained_dir`); missing file -> ConfigError.
    output_stride: the deepest map's stride, reached by dilating the last stages (timm's
    `output_stride`), or None for the model's own strides (models without dilation support).
    frozen_bn: BN layers become `FixedBatchNorm2d` (running statistics, never updated; affine
    weight and bias still trainable, as the official "fix" mode).
    out_indices: feature levels (timm indices), or an int n for the last n levels.
    Input (B, 3, H, W) float32; output: list of (B, C_i, H/s_i, W/s_i) maps.
    """
    kwargs = _pretrained_kwargs(pretrained, name)
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    try:
        model = timm.create_model(name, features_only=True, out_indices=out_indices, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ConfigError(f"backbone: unknown timm model {name!r}") from exc
        raise
    except TypeError as exc:  # timm passes unknown keywords on to the model's constructor
        if output_stride is not None and "output_stride" in str(exc):
            raise ConfigError(
                f"output_stride: {name} does not support dilation (output_stride "
                f"{output_stride}); set output_stride to null for its own strides"
            ) from exc
        raise
    log.debug("backbone %s: channels %s", name, model.feature_info.channels())
    return fix_batch_norm(model) if frozen_bn else model


def backbone_from_settings(settings: dict, out_indices: int | tuple[int, ...]) -> nn.Module:
    """`create_backbone` from a network's config section (backbone, pretrained, output_stride,
    norm: "frozen" fixes BN to its running statistics)."""
    return create_backbone(
        settings["backbone"],
        pretrained=settings["pretrained"],
        output_stride=settings["output_stride"],
        out_indices=out_indices,
        frozen_bn=settings["norm"] == "frozen",
    )

"""Puzzle-CAM training losses (spec 2.4; paper eq. 1-4 of Jo & Yu, ICIP 2021).

Pure functions of tensors. Shapes: logits (B, C), CAMs (B, C, h, w), labels (B, C) multi-hot
float in {0, 1} over the C foreground classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_TERMS = ("cls", "pcls", "re", "conf")


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Multi-label soft margin loss, mean over classes then over the batch (spec 2.4, eq. 1):
    L_cls = mean_b [ -(1/C) sum_c ( y log s(z) + (1 - y) log(1 - s(z)) ) ]."""
    return F.multilabel_soft_margin_loss(logits, labels)


def make_cam(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-map max normalisation (spec 3.2): r = ReLU(x); ReLU(r - eps) / (max_ij r + eps).

    x (B, C, h, w) -> same shape, values in [0, 1).
    """
    r = F.relu(x)
    peak = r.amax(dim=(2, 3), keepdim=True)
    return F.relu(r - eps) / (peak + eps)


def reconstruction_loss(
    cams: Tensor,
    merged_cams: Tensor,
    labels: Tensor,
    kind: str = "l1",
    option: str = "masking",
) -> Tensor:
    """L_re between the full-image CAMs A_s and the merged tile CAMs A_re (spec 2.4, eq. 3).

    kind: "l1" |A_s - A_re| (paper) or "l2" (A_s - A_re)^2, element-wise.
    option: "masking" (paper): y-weighted, mean over ALL B*C*h*w elements (absent classes count
    in the denominator); "selection": per image the mean over the maps of its present classes,
    then the mean over the batch (an image without classes contributes 0); "none": plain mean.
    """
    if kind == "l1":
        dist = (cams - merged_cams).abs()
    elif kind == "l2":
        dist = (cams - merged_cams).square()
    else:
        raise ValueError(f"re_loss must be 'l1' or 'l2', got {kind!r}")
    if option == "none":
        return dist.mean()
    y = labels.to(dist.dtype)
    if option == "masking":
        return (dist * y[:, :, None, None]).mean()
    if option == "selection":
        per_map = dist.mean(dim=(2, 3))  # (B, C)
        per_image = (per_map * y).sum(dim=1) / y.sum(dim=1).clamp(min=1.0)
        return per_image.mean()
    raise ValueError(f"re_loss_option must be masking, selection or none, got {option!r}")


def entropy_loss(logits: Tensor) -> Tensor:
    """The "conf" term of the official code (not in the paper; spec 2.4): Shannon entropy
    -sum_c p log(p + 1e-5) of p = sigmoid(logits), mean over rows. logits (N, C) -> scalar."""
    p = torch.sigmoid(logits)
    return -(p * torch.log(p + 1e-5)).sum(dim=1).mean()


def alpha_at(step: float, total: float, alpha_max: float, schedule: float) -> float:
    """Weight of L_re at step t of T (spec 2.4): min(alpha_max * t / (T * s), alpha_max);
    s = 0 -> alpha_max throughout. t may be fractional (t/T = training progress)."""
    if schedule == 0:
        return float(alpha_max)
    return float(min(alpha_max * step / (total * schedule), alpha_max))


def puzzle_loss(
    outputs: dict[str, Tensor],
    labels: Tensor,
    terms: list[str] | tuple[str, ...],
    alpha: float,
    re_kind: str = "l1",
    re_option: str = "masking",
    level: str = "feature",
) -> tuple[Tensor, dict[str, float]]:
    """L = L_cls + L_pcls + alpha * L_re (+ L_conf), restricted to `terms` (spec 2.4, eq. 4).

    outputs: `logits`, `cams` and, for pcls/re/conf, `merged_cams`/`tiled_logits` (as returned
    by `PuzzleClassifier`); they are cast to float32, so the losses keep full precision under
    autocast. level "cam": A_s and A_re pass through `make_cam` before L_re, and L_pcls uses GAP
    of the normalised A_re (spec 2.4). Returns (total, {term: value, ..., "alpha": alpha}).
    """
    unknown = set(terms) - set(LOSS_TERMS)
    if unknown or not terms:
        raise ValueError(f"loss terms must be a non-empty subset of {LOSS_TERMS}, got {terms}")
    if level not in ("feature", "cam"):
        raise ValueError(f"level must be 'feature' or 'cam', got {level!r}")
    out = {k: v.float() for k, v in outputs.items()}
    labels = labels.float()
    losses: dict[str, Tensor] = {}
    if "cls" in terms:
        losses["cls"] = classification_loss(out["logits"], labels)
    if "pcls" in terms or "re" in terms:
        full, merged = out["cams"], out["merged_cams"]
        if level == "cam":
            full, merged = make_cam(full), make_cam(merged)
        if "pcls" in terms:  # z_re = GAP(A_re), spec 2.4 / eq. 2
            losses["pcls"] = classification_loss(merged.mean(dim=(2, 3)), labels)
        if "re" in terms:
            losses["re"] = reconstruction_loss(full, merged, labels, re_kind, re_option)
    if "conf" in terms:
        losses["conf"] = entropy_loss(out["tiled_logits"])
    total = sum(alpha * v if k == "re" else v for k, v in losses.items())
    logged = {k: float(v.detach()) for k, v in losses.items()}
    logged["alpha"] = float(alpha)
    return total, logged

"""Losses of spec 2.4 against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from pcam.losses import (
    alpha_at,
    classification_loss,
    entropy_loss,
    make_cam,
    puzzle_loss,
    reconstruction_loss,
)

LN2 = math.log(2.0)


def test_classification_loss_mean_over_classes_then_batch():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # image 0: -log s(0) = ln2, -log(1 - s(ln3)) = -log(1/4) = 2 ln2 -> mean 1.5 ln2
    # image 1: ln2 for both classes -> ln2. Batch mean: 1.25 ln2.
    assert classification_loss(logits, labels).item() == pytest.approx(1.25 * LN2, rel=1e-6)


# A_s for B=2, C=2, h=1, w=2; A_re = 0, so |A_s - A_re| = |A_s|.
CAMS = torch.tensor([[[[1.0, 3.0]], [[2.0, 4.0]]], [[[4.0, 0.0]], [[5.0, 7.0]]]])
LABELS = torch.tensor([[1.0, 0.0], [1.0, 1.0]])


@pytest.mark.parametrize(
    ("kind", "option", "expected"),
    [
        # masking: y-weighted sum over all B*C*h*w = 8 elements: (1+3) + (4+0) + (5+7) = 20 -> 2.5
        ("l1", "masking", 20 / 8),
        # selection: image 0 mean of class 0 = 2; image 1 mean of both = 16/4 = 4 -> 3
        ("l1", "selection", 3.0),
        # none: every element: 26/8
        ("l1", "none", 26 / 8),
        # l2 masking: (1+9) + (16+0+25+49) = 100 -> 12.5
        ("l2", "masking", 100 / 8),
    ],
)
def test_reconstruction_loss_options(kind, option, expected):
    zero = torch.zeros_like(CAMS)
    assert reconstruction_loss(CAMS, zero, LABELS, kind, option).item() == pytest.approx(expected)
    # symmetric in its two maps
    assert reconstruction_loss(zero, CAMS, LABELS, kind, option).item() == pytest.approx(expected)


def test_selection_with_an_unlabelled_image_counts_it_as_zero():
    labels = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    loss = reconstruction_loss(CAMS, torch.zeros_like(CAMS), labels, "l2", "selection")
    assert loss.item() == pytest.approx((16 + 0 + 25 + 49) / 4 / 2)


def test_reconstruction_rejects_unknown_options():
    with pytest.raises(ValueError, match="re_loss"):
        reconstruction_loss(CAMS, CAMS, LABELS, "l3")
    with pytest.raises(ValueError, match="re_loss_option"):
        reconstruction_loss(CAMS, CAMS, LABELS, "l1", "mask")


def test_entropy_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [0.0, 100.0]])
    h_half = -0.5 * math.log(0.5 + 1e-5)
    h_one = -1.0 * math.log(1.0 + 1e-5)
    expected = (2 * h_half + (h_half + h_one)) / 2
    assert entropy_loss(logits).item() == pytest.approx(expected, rel=1e-5)


def test_make_cam_by_hand():
    x = torch.tensor([-1.0, 0.0, 2.0, 4.0]).view(1, 1, 2, 2)
    eps = 1e-5
    expected = [0.0, 0.0, (2 - eps) / (4 + eps), (4 - eps) / (4 + eps)]
    assert make_cam(x).flatten().tolist() == pytest.approx(expected)
    # an all-negative map becomes all zeros, not NaN
    assert torch.equal(make_cam(-torch.ones(1, 1, 2, 2)), torch.zeros(1, 1, 2, 2))


def test_alpha_schedule_values():
    assert alpha_at(0, 100, 4.0, 0.5) == 0.0
    assert alpha_at(25, 100, 4.0, 0.5) == pytest.approx(2.0)
    assert alpha_at(50, 100, 4.0, 0.5) == pytest.approx(4.0)
    assert alpha_at(90, 100, 4.0, 0.5) == 4.0
    assert alpha_at(0, 100, 4.0, 0.0) == 4.0  # schedule 0: constant
    # README run: reaches 4 at t = 2,475 of T = 4,950
    assert alpha_at(2475, 4950, 4.0, 0.5) == pytest.approx(4.0)
    assert alpha_at(1000, 4950, 4.0, 0.5) == pytest.approx(4.0 * 1000 / 2475)
    assert alpha_at(0.3, 1.0, 1.0, 0.6) == pytest.approx(0.5)  # progress form


def _outputs(requires_grad: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    cams = torch.randn(2, 3, 4, 4, generator=g)
    merged = torch.randn(2, 3, 4, 4, generator=g)
    tiled_logits = torch.randn(8, 3, generator=g)
    if requires_grad:
        cams.requires_grad_(True)
        merged.requires_grad_(True)
    return {
        "logits": cams.mean(dim=(2, 3)),
        "cams": cams,
        "tiled_logits": tiled_logits,
        "merged_cams": merged,
    }


LAB3 = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def test_puzzle_loss_sums_the_selected_terms():
    out = _outputs()
    total, terms = puzzle_loss(out, LAB3, ["cls", "pcls", "re", "conf"], 2.0, "l1", "masking")
    cls = classification_loss(out["logits"], LAB3)
    pcls = classification_loss(out["merged_cams"].mean(dim=(2, 3)), LAB3)
    re = reconstruction_loss(out["cams"], out["merged_cams"], LAB3, "l1", "masking")
    conf = entropy_loss(out["tiled_logits"])
    assert total.item() == pytest.approx((cls + pcls + 2.0 * re + conf).item(), rel=1e-6)
    assert terms["re"] == pytest.approx(re.item())
    assert terms["alpha"] == 2.0
    assert set(terms) == {"cls", "pcls", "re", "conf", "alpha"}


def test_cls_only_needs_no_tiled_outputs():
    out = _outputs()
    total, terms = puzzle_loss({"logits": out["logits"]}, LAB3, ["cls"], 4.0)
    assert total.item() == pytest.approx(classification_loss(out["logits"], LAB3).item())
    assert set(terms) == {"cls", "alpha"}


def test_level_cam_normalises_both_maps():
    out = _outputs()
    _, terms = puzzle_loss(out, LAB3, ["cls", "pcls", "re"], 1.0, level="cam")
    a_s, a_re = make_cam(out["cams"]), make_cam(out["merged_cams"])
    assert terms["re"] == pytest.approx(reconstruction_loss(a_s, a_re, LAB3).item())
    pcls = classification_loss(a_re.mean(dim=(2, 3)), LAB3)
    assert terms["pcls"] == pytest.approx(pcls.item())
    _, raw = puzzle_loss(out, LAB3, ["cls", "pcls", "re"], 1.0, level="feature")
    assert raw["re"] != pytest.approx(terms["re"])


def test_gradients_reach_both_maps():
    out = _outputs(requires_grad=True)
    total, _ = puzzle_loss(out, LAB3, ["re"], 1.0)
    total.backward()
    assert out["cams"].grad.abs().sum() > 0
    assert out["merged_cams"].grad.abs().sum() > 0
    # masking: absent classes get no gradient
    assert out["cams"].grad[0, 1].abs().sum() == 0


def test_unknown_term_is_rejected():
    with pytest.raises(ValueError, match="subset"):
        puzzle_loss(_outputs(), LAB3, ["cls", "ent"], 1.0)


def test_low_precision_outputs_give_a_float32_loss():
    out = {k: v.to(torch.bfloat16) for k, v in _outputs().items()}
    total, terms = puzzle_loss(out, LAB3, ["cls", "pcls", "re"], 1.0)
    assert total.dtype == torch.float32
    reference, _ = puzzle_loss(
        {k: v.float() for k, v in out.items()}, LAB3, ["cls", "pcls", "re"], 1.0
    )
    assert total.item() == pytest.approx(reference.item())

"""Path index, affinity labels and loss, random walk (sparse vs dense), AffinityNet."""

from __future__ import annotations

import math

import pytest
import torch

from pcam.affinity import (
    affinity_from_boundary,
    affinity_labels_from_map,
    affinity_loss,
    path_index,
    random_walk,
    rw_postprocess,
)
from pcam.models import load_model, save_model
from pcam.models.affinitynet import AffinityNet
from pcam.optim import make_optimizer

torch.set_num_threads(1)

OPTIM = {"lr": 0.1, "weight_decay": 1e-4, "momentum": 0.9, "nesterov": True}


# --- path index (spec 5.2) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("radius", "size", "directions", "groups", "sources"),
    [(10, (128, 128), 152, 20, 119 * 110), (5, (99, 135), 34, 9, 95 * 127)],
)
def test_path_index_counts(radius, size, directions, groups, sources):
    index = path_index(radius, *size)
    assert index.directions.shape == (directions, 2)
    assert len(torch.unique(index.path_lengths)) == groups
    assert index.src_indices.shape == (sources,)
    assert index.dst_indices.shape == (directions, sources)
    assert path_index(radius, *size) is index  # cached
    moved = index.to("cpu")
    assert moved.size == size and torch.equal(moved.dst_indices, index.dst_indices)


def test_paths_run_from_destination_to_source():
    index = path_index(5, 20, 20)
    assert (torch.diff(index.path_lengths) >= 0).all()  # grouped by length
    for d, length in enumerate(index.path_lengths.tolist()):
        path = index.path_offsets[d, :length]
        assert path[0].tolist() == index.directions[d].tolist()
        assert path[-1].tolist() == [0, 0]
        assert len({tuple(p) for p in path.tolist()}) == length
        assert (index.path_offsets[d, length:] == 0).all()  # padding repeats the source
    # (1, 1) crosses the 2x2 square; (0, 3) is a straight run of 4 pixels
    by_dir = {tuple(d): i for i, d in enumerate(index.directions.tolist())}
    assert index.path_lengths[by_dir[(1, 1)]] == 4
    assert sorted(map(tuple, index.path_offsets[by_dir[(0, 3)], :4].tolist())) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
    ]
    assert index.dst_indices[by_dir[(2, -1)], 0] == index.src_indices[0] + 2 * 20 - 1


def test_path_index_rejects_a_too_small_grid():
    with pytest.raises(ValueError, match="too small"):
        path_index(5, 4, 30)


# --- affinities, labels, loss (spec 5.1, 5.3, 5.4) --------------------------------------------


def test_affinity_is_one_minus_the_path_maximum_and_grads_reach_it():
    torch.manual_seed(0)
    boundary = torch.rand(2, 9, 11, requires_grad=True)
    index = path_index(4, 9, 11)
    aff = affinity_from_boundary(boundary, index)
    src, offsets = index.src_indices, index.path_flat_offsets
    flat = boundary.detach().reshape(2, -1)
    expected = 1 - flat[:, src[None, None, :] + offsets[:, :, None]].amax(dim=2)
    torch.testing.assert_close(aff, expected)
    aff.sum().backward()
    assert boundary.grad.sum().item() == pytest.approx(-aff.numel())  # one pixel per pair
    with torch.no_grad():
        torch.testing.assert_close(affinity_from_boundary(boundary, index), expected)


# 4x4 map, radius 2: directions (0,1), (1,0), (1,-1), (1,1); sources (0,1) (0,2) (1,1) (1,2)
# (2,1) (2,2). Class 30 shows the number of classes is not fixed at 21.
LABEL_MAP = [[0, 0, 1, 1], [0, 255, 1, 1], [30, 30, 1, 0], [30, 30, 255, 0]]
BG = [[0] * 6, [0] * 6, [1, 0, 0, 0, 0, 0], [0] * 6]
FG = [[0, 1, 0, 1, 0, 0], [0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, 0]]
NEG = [[1, 0, 0, 0, 1, 1], [0] * 6, [0, 0, 0, 1, 0, 1], [1, 0, 0, 1, 0, 1]]


def test_affinity_labels_on_a_hand_made_map():
    index = path_index(2, 4, 4)
    assert index.directions.tolist() == [[0, 1], [1, 0], [1, -1], [1, 1]]
    label = torch.tensor([LABEL_MAP, LABEL_MAP], dtype=torch.int64)
    bg, fg, neg = affinity_labels_from_map(label, index)
    for got, want in ((bg, BG), (fg, FG), (neg, NEG)):
        assert got.dtype == torch.float32 and got.shape == (2, 4, 6)
        assert got[1].tolist() == want


def test_affinity_loss_matches_a_hand_computed_value():
    aff = torch.tensor([[[0.5, 1.0, 0.25, 0.0, 0.75, 0.3]]])
    bg = torch.tensor([[[1.0, 0, 0, 0, 0, 0]]])
    fg = torch.tensor([[[0, 1.0, 1.0, 0, 0, 0]]])
    neg = torch.tensor([[[0, 0, 0, 1.0, 1.0, 0]]])
    loss, terms = affinity_loss(aff, bg, fg, neg)
    e = 1e-5
    l_bg = -math.log(0.5 + e) / (1 + e)
    l_fg = (-math.log(1 + e) - math.log(0.25 + e)) / (2 + e)
    l_neg = (-math.log(1 + e) - math.log(0.25 + e)) / (2 + e)
    assert terms == pytest.approx({"bg": l_bg, "fg": l_fg, "neg": l_neg}, rel=1e-5)
    assert loss.item() == pytest.approx(((l_bg + l_fg) / 2 + l_neg) / 2, rel=1e-5)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-4)


# --- random walk (spec 6.2, 6.3, 15.6) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "radius", "beta", "exp_times"),
    [((7, 9), 5, 10, 8), ((13, 11), 3, 2.5, 6), ((1, 1), 5, 10, 8), ((3, 20), 5, 10, 4)],
)
def test_sparse_and_dense_walks_agree(size, radius, beta, exp_times):
    g = torch.Generator().manual_seed(1)
    cams = torch.rand(2, *size, generator=g, dtype=torch.float64)
    boundary = 0.6 * torch.rand(*size, generator=g, dtype=torch.float64)
    sparse = random_walk(cams, boundary, radius, beta, exp_times, "sparse")
    dense = random_walk(cams, boundary, radius, beta, exp_times, "dense")
    assert sparse.shape == cams.shape and sparse.dtype == torch.float64
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-12)
    moved = not torch.allclose(sparse, cams * (1 - boundary))
    assert moved == (size != (1, 1))  # a single pixel has nowhere to go


def test_float32_walks_agree():
    g = torch.Generator().manual_seed(2)
    cams, boundary = torch.rand(3, 12, 15, generator=g), 0.5 * torch.rand(12, 15, generator=g)
    sparse = random_walk(cams, boundary, 5, 10, 8, "sparse")
    dense = random_walk(cams, boundary, 5, 10, 8, "dense")
    assert sparse.dtype == torch.float32
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_mass_does_not_cross_a_boundary_wall(method):
    g = torch.Generator().manual_seed(3)
    boundary = 0.2 * torch.rand(10, 14, generator=g, dtype=torch.float64)
    boundary[:, 6] = 1.0
    cams = torch.zeros(2, 10, 14, dtype=torch.float64)
    cams[0, 2:8, 1:4] = 1.0
    cams[1, 3, 2] = 0.5
    rw = random_walk(cams, boundary, 5, 10, 8, method)
    assert (rw[:, :, 6:] == 0).all()
    assert (rw[:, :, :6] > 0).all()


@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_zero_cams_give_zeros(method):
    boundary = torch.ones(6, 8)  # every affinity 0: only the diagonal survives
    rw = random_walk(torch.zeros(2, 6, 8), boundary, 5, 10, 8, method)
    assert not rw.isnan().any() and (rw == 0).all()


def test_random_walk_rejects_bad_input():
    with pytest.raises(ValueError, match="method"):
        random_walk(torch.zeros(1, 4, 4), torch.zeros(4, 4), 5, 10, 8, "power")
    with pytest.raises(ValueError, match="expected"):
        random_walk(torch.zeros(1, 4, 4), torch.zeros(4, 5), 5, 10, 8)


def test_rw_postprocess_upsamples_crops_and_normalises_globally():
    rw = torch.stack([torch.full((3, 4), 2.0), torch.full((3, 4), 1.0)])
    rw[0, 2] = 0.0  # the last row is cropped away (rows 10, 11 of 12) but still blends in
    out = rw_postprocess(rw, 9, 15)
    assert out.shape == (2, 9, 15)
    assert out.max().item() == 1.0
    torch.testing.assert_close(out[1], torch.full((9, 15), 0.5))  # one global maximum
    assert out[0, 0, 0] == 1.0 and 0 < out[0, 8, 0] < 1
    zero = rw_postprocess(torch.zeros(1, 3, 4), 12, 16)
    assert not zero.isnan().any() and (zero == 0).all()
    with pytest.raises(ValueError):
        rw_postprocess(rw, 13, 16)


# --- AffinityNet (spec 5.1, 6.1) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def net() -> AffinityNet:
    torch.manual_seed(0)
    return AffinityNet("resnet18")


@pytest.mark.parametrize(("size", "grid"), [((64, 64), (16, 16)), ((50, 70), (13, 18))])
def test_affinitynet_shapes(net, size, grid):
    x = torch.randn(2, 3, *size)
    assert net(x).shape == (2, 1, *grid)
    edge = net.boundary(x)
    assert edge.shape == (2, *grid)
    assert ((edge > 0) & (edge < 1)).all()
    # flip-averaged: the mirror image has the mirrored boundary
    torch.testing.assert_close(net.boundary(x.flip(-1)), edge.flip(-1), rtol=1e-4, atol=1e-5)


def test_backbone_stays_frozen_through_a_train_step():
    torch.manual_seed(0)
    model = AffinityNet("resnet18").train()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.fuse.weight.detach().clone()
    assert not model.backbone.training and model.sides.training
    groups = model.parameter_groups()
    n_trainable = sum(p.numel() for g in groups for p in g["params"])
    assert n_trainable == sum(
        p.numel() for p in (*model.sides.parameters(), *model.fuse.parameters())
    )
    optimizer = make_optimizer(groups, OPTIM)
    x = torch.randn(2, 3, 48, 48)
    label = torch.randint(0, 3, (2, 12, 12))
    label[:, :3] = 255
    index = path_index(5, 12, 12)
    aff = affinity_from_boundary(torch.sigmoid(model(x))[:, 0], index)
    loss, _ = affinity_loss(aff, *affinity_labels_from_map(label, index))
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in model.backbone.parameters())
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
    assert not torch.equal(model.fuse.weight, head_before)


@pytest.mark.parametrize("side_kernel", [1, 3])
def test_from_settings_and_model_file_round_trip(tmp_path, side_kernel):
    settings = {
        "backbone": "resnet18",
        "pretrained": False,
        "radius": 10,
        "side_kernel": side_kernel,
    }
    model = AffinityNet.from_settings(settings, num_classes=21)
    assert isinstance(model, AffinityNet)
    assert [s[0].in_channels for s in model.sides] == [64, 64, 128, 256, 512]
    save_model(tmp_path / "aff.pt", "affinitynet", model, settings, 21)
    loaded = load_model(tmp_path / "aff.pt")
    assert {s[0].kernel_size for s in loaded.sides} == {(side_kernel, side_kernel)}
    x = torch.randn(1, 3, 32, 40)
    assert loaded(x).shape == (1, 1, 8, 10)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_side_kernel_must_be_odd():
    with pytest.raises(ValueError, match="side_kernel"):
        AffinityNet("resnet18", side_kernel=2)

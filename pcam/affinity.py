"""Pixel affinities from a boundary map: path index, affinity labels and loss, random walk.

Pure torch functions (spec 5.2-5.4, 6.2-6.3). A `PathIndex` lists, for every source pixel of an
h x w grid, its neighbours within a radius (a half disc, so each unordered pair appears once) and
the pixels on the straight path to each. The affinity of a pair is 1 - the largest boundary
probability on its path. The random walk spreads CAM scores along those affinities; `"sparse"`
applies the transition operator step by step (memory linear in pixels, spec 15.6), `"dense"` is
the reference T^(2^n) by repeated squaring (memory quadratic in pixels).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pcam.io import IGNORE_INDEX

RW_METHODS = ("sparse", "dense")
_EPS = 1e-5  # spec 5.4


@dataclasses.dataclass(frozen=True, eq=False)
class PathIndex:
    """Pairs and paths of radius `radius` on a `size` = (h, w) grid (spec 5.2).

    With r_f = radius - 1, the sources are the pixels of rows [0, h - r_f), cols [r_f, w - r_f),
    row-major. Directions come grouped by path length (ascending), half-disc order inside a group.

    directions:   (D, 2) int64 (dy, dx) from source to destination.
    path_offsets: (D, L, 2) int64 (dy, dx) of every path point; [d, 0] is the destination, the
                  source (0, 0) comes last and repeats to fill up to L = the longest path.
    path_lengths: (D,) int64 number of distinct points on each path (ends included).
    src_indices:  (N_src,) int64 flat (row-major) indices of the sources.
    dst_indices:  (D, N_src) int64 flat indices of the destinations.
    """

    radius: int
    size: tuple[int, int]
    directions: Tensor
    path_offsets: Tensor
    path_lengths: Tensor
    src_indices: Tensor
    dst_indices: Tensor

    @property
    def path_flat_offsets(self) -> Tensor:
        """(D, L) int64: flat index of each path point minus that of its source."""
        return self.path_offsets[..., 0] * self.size[1] + self.path_offsets[..., 1]

    def to(self, device: torch.device | str) -> PathIndex:
        """The same index with its tensors on `device`."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **moved)


@functools.lru_cache(maxsize=8)
def _search_paths(radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(directions (D, 2), path points (D, L, 2), lengths (D,)) in length-group order."""
    r = radius
    ys, xs = np.meshgrid(np.arange(1, r), np.arange(1 - r, r), indexing="ij")
    disc = ys**2 + xs**2 < r * r
    dirs = np.concatenate(
        [
            np.stack([np.zeros(r - 1, dtype=np.int64), np.arange(1, r)], axis=1),
            np.stack([ys[disc], xs[disc]], axis=1),
        ]
    ).astype(np.int64)
    # Candidate points: the box y in [0, r), x in (-r, r), row-major like each direction's own box.
    py, px = (g.ravel() for g in np.meshgrid(np.arange(r), np.arange(1 - r, r), indexing="ij"))
    dy, dx = dirs[:, :1], dirs[:, 1:]
    in_box = (py <= dy) & (px >= np.minimum(dx, 0)) & (px <= np.maximum(dx, 0))
    # squared distance to the line through (0, 0) and (dy, dx) below 1, in exact integers
    on_path = in_box & ((dy * px - dx * py) ** 2 < dy**2 + dx**2)
    lengths = on_path.sum(axis=1)
    key = np.where(on_path, np.abs(py) + np.abs(px), -1)
    order = np.argsort(-key, axis=1, kind="stable")[:, : lengths.max()]
    points = np.stack([py[order], px[order]], axis=-1)
    points[np.arange(lengths.max())[None, :] >= lengths[:, None]] = 0  # pad with the source
    group = np.argsort(lengths, kind="stable")
    return dirs[group], points[group], lengths[group]


@functools.lru_cache(maxsize=16)
def path_index(radius: int, height: int, width: int) -> PathIndex:
    """The (cached, CPU) `PathIndex` of `radius` on a `height` x `width` grid.

    radius >= 2; the grid must hold at least one source: height >= radius, width >= 2*radius - 1.
    """
    if radius < 2:
        raise ValueError(f"radius must be at least 2, got {radius}")
    rf = radius - 1
    if height <= rf or width <= 2 * rf:
        raise ValueError(f"grid {height}x{width} is too small for radius {radius}")
    dirs, points, lengths = _search_paths(radius)
    full = np.arange(height * width, dtype=np.int64).reshape(height, width)
    src = full[: height - rf, rf : width - rf].ravel()
    dst = src[None, :] + (points[:, 0, 0] * width + points[:, 0, 1])[:, None]
    return PathIndex(
        radius=radius,
        size=(height, width),
        directions=torch.from_numpy(dirs),
        path_offsets=torch.from_numpy(points),
        path_lengths=torch.from_numpy(lengths.astype(np.int64)),
        src_indices=torch.from_numpy(src),
        dst_indices=torch.from_numpy(dst),
    )


def affinity_from_boundary(boundary: Tensor, index: PathIndex) -> Tensor:
    """(B, h, w) boundary probabilities -> (B, D, N_src) affinities 1 - max along each path.

    The gradient reaches the one pixel holding the path's maximum (as max-pooling gives it).
    """
    b, h, w = boundary.shape
    if (h, w) != index.size:
        raise ValueError(f"boundary grid {h}x{w} does not match the path index {index.size}")
    flat = boundary.reshape(b, h * w)
    src = index.src_indices.to(boundary.device)
    offsets = index.path_flat_offsets.to(boundary.device)
    need_grad = torch.is_grad_enabled() and boundary.requires_grad
    with torch.no_grad():
        best_at = src[None, :] + offsets[:, :1]
        best = flat[:, best_at]
        best_at = best_at.expand_as(best)
        for step in range(1, offsets.shape[1]):
            at = src[None, :] + offsets[:, step : step + 1]
            value = flat[:, at]
            if need_grad:  # where the maximum sits, for the gradient
                best_at = torch.where(value > best, at, best_at)
            best = torch.maximum(best, value)
    if not need_grad:
        return 1 - best
    return 1 - flat.gather(1, best_at.reshape(b, -1)).reshape(best.shape)


def affinity_labels_from_map(label: Tensor, index: PathIndex) -> tuple[Tensor, Tensor, Tensor]:
    """(B, h, w) int64 label map (classes, 255 = ignore) -> (bg_pos, fg_pos, neg) (spec 5.3).

    Each is float32 (B, D, N_src). A pair counts only when neither end is 255: bg_pos = same
    label 0, fg_pos = same label > 0, neg = different labels.
    """
    b = label.shape[0]
    flat = label.reshape(b, -1)
    src = flat[:, index.src_indices.to(label.device)][:, None, :]
    dst = flat[:, index.dst_indices.to(label.device)]
    valid = (src != IGNORE_INDEX) & (dst != IGNORE_INDEX)
    same = valid & (src == dst)
    return (
        (same & (src == 0)).float(),
        (same & (src > 0)).float(),
        (valid & (src != dst)).float(),
    )


def affinity_loss(
    aff: Tensor, bg_pos: Tensor, fg_pos: Tensor, neg: Tensor
) -> tuple[Tensor, dict[str, float]]:
    """L = ((L_bg + L_fg)/2 + L_neg)/2 over the whole batch (spec 5.4).

    aff, bg_pos, fg_pos, neg: (B, D, N_src). Returns (loss, {"bg", "fg", "neg"} as floats).
    """
    pos_term = -torch.log(aff + _EPS)
    neg_term = -torch.log(1 + _EPS - aff)
    bg = (bg_pos * pos_term).sum() / (bg_pos.sum() + _EPS)
    fg = (fg_pos * pos_term).sum() / (fg_pos.sum() + _EPS)
    ng = (neg * neg_term).sum() / (neg.sum() + _EPS)
    loss = ((bg + fg) / 2 + ng) / 2
    return loss, {"bg": float(bg.detach()), "fg": float(fg.detach()), "neg": float(ng.detach())}


def _padded_affinity(boundary: Tensor, radius: int) -> tuple[PathIndex, Tensor]:
    """Pad (h, w) by `radius` left, right and bottom with 1.0 (spec 6.2 step 1) -> the padded
    grid's path index and its affinities (D, N_src); pairs touching the padding get 0."""
    h, w = boundary.shape
    padded = F.pad(boundary[None], (radius, radius, 0, radius), value=1.0)
    index = path_index(radius, h + radius, w + 2 * radius)
    return index, affinity_from_boundary(padded, index)[0]


def _csr(rows: Tensor, cols: Tensor, values: Tensor, n: int) -> Tensor:
    """An n x n CSR matrix from distinct (row, col) entries; int32 indices when they fit (the
    CPU product is ~1.5x faster with them)."""
    order = torch.argsort(rows * n + cols)
    index_dtype = torch.int32 if rows.numel() < 2**31 else torch.int64
    crow = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            crow.to(index_dtype),
            cols[order].to(index_dtype),
            values[order],
            (n, n),
            check_invariants=True,
        )


def _rw_sparse(v: Tensor, boundary: Tensor, radius: int, beta: float, steps: int) -> Tensor:
    """v (K, N) @ T^steps with T applied one step at a time as a sparse CSR operator."""
    h, w = boundary.shape
    index, aff = _padded_affinity(boundary, radius)
    device, padded_w = boundary.device, w + 2 * radius

    def node(flat: Tensor) -> tuple[Tensor, Tensor]:
        y, x = flat // padded_w, flat % padded_w - radius
        return y * w + x, (y < h) & (x >= 0) & (x < w)

    src, src_in = node(index.src_indices.to(device).expand_as(aff))
    dst, dst_in = node(index.dst_indices.to(device))
    keep = src_in & dst_in  # the crop to the un-padded nodes (spec 6.2 step 3)
    n = h * w
    diag = torch.arange(n, device=device)
    rows = torch.cat([src[keep], dst[keep], diag])
    cols = torch.cat([dst[keep], src[keep], diag])
    a = aff[keep].to(v.dtype) ** beta
    values = torch.cat([a, a, torch.ones(n, dtype=v.dtype, device=device)])
    degree = torch.zeros(n, dtype=v.dtype, device=device).index_add_(0, rows, values)
    # v T with T = A D^-1 (A symmetric) is (D^-1 A v^T)^T: one CSR product per step.
    step = _csr(rows, cols, values / degree[rows], n)
    x = v.T.contiguous()
    for _ in range(steps):
        x = step @ x
    return x.T


def _rw_dense(v: Tensor, boundary: Tensor, radius: int, beta: float, exp_times: int) -> Tensor:
    """The reference: dense padded matrix, cropped, A^beta, column-normalised, squared."""
    h, w = boundary.shape
    index, aff = _padded_affinity(boundary, radius)
    device, padded_w = boundary.device, w + 2 * radius
    n_padded = index.size[0] * index.size[1]
    src = index.src_indices.to(device).expand_as(aff)
    dst = index.dst_indices.to(device)
    a = torch.zeros(n_padded, n_padded, dtype=v.dtype, device=device)
    a[src, dst] = aff.to(v.dtype)
    a[dst, src] = aff.to(v.dtype)
    a.fill_diagonal_(1.0)
    inside = (
        torch.arange(h, device=device)[:, None] * padded_w + radius + torch.arange(w, device=device)
    ).ravel()
    a = a[inside[:, None], inside[None, :]] ** beta
    trans = a / a.sum(dim=0, keepdim=True)
    for _ in range(exp_times):
        trans = trans @ trans
    return v @ trans


def random_walk(
    cams: Tensor,
    boundary: Tensor,
    radius: int,
    beta: float,
    exp_times: int,
    method: str = "sparse",
) -> Tensor:
    """Propagate CAMs over boundary-aware affinities (spec 6.2) -> (K, h, w).

    cams: (K, h, w) float (foreground classes only); boundary: (h, w) in [0, 1]. Computes
    (cams * (1 - boundary)) @ T^(2^exp_times), T = column-normalised A^beta where A holds the
    radius-`radius` affinities (symmetric, 1 on the diagonal). Any h, w >= 1. The result's dtype
    is the promotion of both inputs' dtypes.
    """
    if method not in RW_METHODS:
        raise ValueError(f"random walk method must be one of {RW_METHODS}, got {method!r}")
    if cams.dim() != 3 or boundary.shape != cams.shape[1:]:
        raise ValueError(
            f"cams {tuple(cams.shape)} and boundary {tuple(boundary.shape)}: expected (K, h, w)"
            " and (h, w)"
        )
    k, h, w = cams.shape
    dtype = torch.promote_types(cams.dtype, boundary.dtype)
    boundary = boundary.to(dtype)
    v = (cams.to(dtype) * (1 - boundary)).reshape(k, h * w)
    if method == "sparse":
        out = _rw_sparse(v, boundary, radius, beta, 2**exp_times)
    else:
        out = _rw_dense(v, boundary, radius, beta, exp_times)
    return out.reshape(k, h, w)


def rw_postprocess(rw: Tensor, height: int, width: int) -> Tensor:
    """(K, h, w) random-walk scores -> (K, height, width) (spec 6.3).

    x4 bilinear upsampling (align_corners=False), crop, then division by the single global
    maximum over all classes and pixels; an all-zero map stays zero.
    """
    k, h, w = rw.shape
    if height > 4 * h or width > 4 * w:
        raise ValueError(f"{height}x{width} is larger than 4x the {h}x{w} grid")
    up = F.interpolate(rw[None], size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
    up = up[0, :, :height, :width]
    peak = up.max() if up.numel() else up.new_zeros(())
    return up / peak if peak > 0 else up


__all__ = [
    "RW_METHODS",
    "PathIndex",
    "affinity_from_boundary",
    "affinity_labels_from_map",
    "affinity_loss",
    "path_index",
    "random_walk",
    "rw_postprocess",
]

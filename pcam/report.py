"""Report figures (PNG, matplotlib Agg): per-class IoU bars, training curves, an image gallery.

Each figure is the `report()` output of a rule, so `snakemake --report` embeds it offline.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pcam.data.voc import DatasetSpec, gt_mask, load_image, read_split  # noqa: E402
from pcam.io import atomic_path, find_in_dirs, load_label_png, load_scores  # noqa: E402


def _save(fig, out: Path) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def per_class_figure(evals: Sequence[Path], out: Path) -> None:
    """Grouped bars: per-class IoU (percent) for each stage's evaluation CSV."""
    from pcam.evaluate import read_per_class

    stages = [Path(p).stem for p in evals]
    tables = [read_per_class(p) for p in evals]
    classes = list(tables[0])
    width = 0.8 / max(len(stages), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(classes) * max(len(stages), 2)), 3.6))
    x = np.arange(len(classes))
    for i, (stage, table) in enumerate(zip(stages, tables, strict=True)):
        values = [100 * table.get(c, np.nan) for c in classes]
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=stage)
    ax.set_xticks(x, classes, rotation=45, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(ncol=len(stages), fontsize="small", loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out)


def _read_curve(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    columns = {}
    for name in rows[0]:
        try:
            columns[name] = np.array([float(r[name]) if r[name] != "" else np.nan for r in rows])
        except ValueError:
            continue
    return columns


_NOT_PLOTTED = {"step", "epoch", "images_per_s", "elapsed_s", "lr", "alpha"}


def curves_figure(curves: Sequence[Path], out: Path) -> None:
    """One panel per training stage: loss terms (left axis) and learning rate (right axis)."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    for ax, path in zip(axes[0], curves, strict=True):
        data = _read_curve(Path(path))
        ax.set_title(Path(path).parent.name)
        if "step" not in data:
            ax.text(0.5, 0.5, "no rows", ha="center", transform=ax.transAxes)
            continue
        for name, values in data.items():
            if name not in _NOT_PLOTTED:
                ax.plot(data["step"], values, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
        if "lr" in data:
            twin = ax.twinx()
            twin.plot(data["step"], data["lr"], color="grey", linestyle=":", label="lr")
            twin.set_ylabel("lr", color="grey")
    fig.tight_layout()
    _save(fig, out)


def _colour(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = palette
    lut[255] = (224, 224, 192)
    return lut[labels]


def _score_map(dirs: Sequence[Path], image_id: str, key: str) -> np.ndarray:
    scores = load_scores(find_in_dirs(dirs, image_id, ".npz"))
    maps = scores[key]
    return maps.max(axis=0) if len(maps) else np.zeros(maps.shape[1:], np.float32)


def gallery_figure(
    spec: DatasetSpec,
    split: str,
    n_images: int,
    *,
    cams: Sequence[Path],
    rw: Sequence[Path],
    pseudo: Sequence[Path],
    deeplab: Sequence[Path],
    out: Path,
) -> None:
    """Rows of image | CAM | random walk | pseudo-label | DeepLab | ground truth."""
    ids = read_split(spec, split)[:n_images]
    titles = ["image", "CAM", "random walk", "pseudo-label", "DeepLab", "ground truth"]
    fig, axes = plt.subplots(len(ids), 6, figsize=(12, 2.1 * len(ids)), squeeze=False)
    for row, image_id in zip(axes, ids, strict=True):
        gt = gt_mask(spec, image_id)
        panels = [
            load_image(spec.image_path(image_id)),
            _score_map(cams, image_id, "hr_cam"),
            _score_map(rw, image_id, "rw"),
            _colour(load_label_png(find_in_dirs(pseudo, image_id, ".png")), spec.palette),
            _colour(load_label_png(find_in_dirs(deeplab, image_id, ".png")), spec.palette),
            _colour(gt, spec.palette) if gt is not None else None,
        ]
        for ax, panel in zip(row, panels, strict=True):
            ax.axis("off")
            if panel is None:
                continue
            if panel.ndim == 2:
                ax.imshow(panel, cmap="jet", vmin=0, vmax=1)
            else:
                ax.imshow(panel)
        row[0].set_ylabel(image_id)
    for ax, title in zip(axes[0], titles, strict=True):
        ax.set_title(title, fontsize="small")
    fig.tight_layout()
    _save(fig, out)

"""Stage 8: multi-scale segmentation inference (spec 8.3), the `pcam infer-deeplab` command.

Any segmentation network of the registry (`pcam.models.segmentation_kinds`: DeepLabV3+, the
paper's, or another `deeplab.network`) writes palette PNG predictions for one shard of a split,
and optionally their dense-CRF refinement, which runs in CPU processes after the network pass so
a GPU slot is not held while the CRF works. Images whose outputs all exist are skipped (resume).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pcam.data.loading import ImageItem
from pcam.data.voc import DatasetSpec
from pcam.inference import InferenceJob, ShardRun, images_to_do, run_images
from pcam.io import atomic_path, save_label_png
from pcam.segment import scaled_inputs, summed_logits

# The VOC evaluation server's layout for a test-set submission (indexed palette PNGs).
SERVER_LAYOUT = Path("results/VOC2012/Segmentation/comp6_test_cls")


def prediction_dir(base: Path, server_format: bool) -> Path:
    """Where the PNGs go: `base`, or the evaluation server's layout under it."""
    return base / SERVER_LAYOUT if server_format else base


def predict_step(
    net: nn.Module,
    item: ImageItem,
    device: torch.device,
    *,
    spec: DatasetSpec,
    flip: bool,
    pred_dir: Path,
    spill: dict[str, Path],
) -> None:
    """Write `pred_dir/{id}.png` and, for ids in `spill`, the probabilities (C, H, W) as
    float16 `.npy` at `spill[id]` for the CRF pass."""
    logits = summed_logits(net, item.inputs, item.image.shape[:2], flip)
    probs = torch.softmax(logits, dim=0)  # spec 8.3: softmax of the summed logits
    labels = probs.argmax(0).to(torch.uint8).cpu().numpy()
    save_label_png(pred_dir / f"{item.image_id}.png", labels, spec.palette)
    if item.image_id in spill:
        with atomic_path(spill[item.image_id]) as tmp, open(tmp, "wb") as fh:
            np.save(fh, probs.cpu().numpy().astype(np.float16))


def _crf_pass(
    spec: DatasetSpec, settings: dict[str, Any], spill: dict[str, Path], crf_dir: Path, workers: int
) -> None:
    """Refine every spilled probability map into `crf_dir/{id}.png` in `workers` processes."""
    from pcam.crf import map_images
    from pcam.labels import crf_refine_file

    items = [
        (i, spec.image_path(i), path, crf_dir / f"{i}.png", spec.palette, settings["crf"])
        for i, path in spill.items()
    ]
    for _ in map_images(crf_refine_file, items, workers):
        pass


def infer_deeplab(
    spec: DatasetSpec,
    settings: dict[str, Any],
    run: ShardRun,
    *,
    out_dir: Path,
    out_crf_dir: Path | None,
    workers: int,
    server_format: bool,
) -> None:
    """Multi-scale + flip predictions (spec 8.3) of `run`'s shard with the network at `run.model`.

    Writes `out_dir/{id}.png` (palette PNG, class indices) and, when `out_crf_dir` is given, the
    dense-CRF refinement `out_crf_dir/{id}.png` (settings["crf"], `workers` processes).
    server_format: the same files in the evaluation server's layout (`SERVER_LAYOUT`) under each
    output directory. Directories are created even for an empty shard.
    """
    from pcam.models import segmentation_kinds

    pred_dir = prediction_dir(out_dir, server_format)
    crf_dir = None if out_crf_dir is None else prediction_dir(out_crf_dir, server_format)
    outputs = [(pred_dir, ".png")] + ([] if crf_dir is None else [(crf_dir, ".png")])
    todo = images_to_do(spec, run, outputs)
    job = InferenceJob(
        name="deeplab",
        kinds=segmentation_kinds(),
        prepare=functools.partial(scaled_inputs, scales=settings["scales"], flip=settings["flip"]),
        num_outputs=spec.num_classes,
        what="classes (background included)",
    )
    step = functools.partial(predict_step, spec=spec, flip=settings["flip"], pred_dir=pred_dir)
    if crf_dir is None:
        run_images(spec, run, job, todo, functools.partial(step, spill={}))
        return
    # Probabilities wait on disk (float16), not in memory: 21 x 375 x 500 maps add up fast.
    with tempfile.TemporaryDirectory(prefix=".probs-", dir=out_crf_dir) as tmp:
        spill = {i: Path(tmp) / f"{i}.npy" for i in todo if not (crf_dir / f"{i}.png").exists()}
        run_images(spec, run, job, todo, functools.partial(step, spill=spill))
        _crf_pass(spec, settings, spill, crf_dir, workers)

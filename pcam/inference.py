"""The per-image inference driver of the CAM, random-walk and segmentation stages.

It owns what those stages share: which images of a shard are still to do (every output is written
atomically, so a file that exists is finished and is skipped on a re-run), the device and its GPU
slot, the model load with its kind and class-count checks, the network's inference layout, the
image loader (decoding and input preparation in worker processes, pinned memory on a GPU), the
precision (`compute.mixed_precision` autocast), the progress bar and the timing log line. A stage
gives only what differs: its `InferenceJob` and a per-image step.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from pcam.data.loading import ImageItem
from pcam.data.voc import DatasetSpec, read_split
from pcam.errors import DataError
from pcam.io import shard_ids

log = logging.getLogger(__name__)

# A per-image step: (network, the item with its inputs on the device, the device) -> None; it
# writes the image's outputs (atomically) itself.
Step = Callable[[nn.Module, ImageItem, torch.device], None]


@dataclass(frozen=True)
class ShardRun:
    """One per-image job as the command line gives it: the model file, which images (shard
    `shard` of `num_shards` of `split`) and the `compute` settings."""

    model: Path
    split: str
    shard: int
    num_shards: int
    compute: dict[str, Any]

    def ids(self, spec: DatasetSpec) -> list[str]:
        """The shard's image ids, in list order."""
        return shard_ids(read_split(spec, self.split), self.shard, self.num_shards)


@dataclass(frozen=True)
class InferenceJob:
    """What a per-image stage tells the driver.

    name: progress-bar and log label. kinds: the model kinds accepted.
    prepare: builds an image's network inputs (CPU tensors) from its HxWx3 uint8 pixels, in the
    loader's worker processes; picklable (module-level function or `functools.partial`).
    num_outputs: the classes the network must predict (`net.num_outputs`), None for no check.
    what: how the error message calls those classes (e.g. "foreground classes").
    """

    name: str
    kinds: tuple[str, ...]
    prepare: Callable[[np.ndarray], Any]
    num_outputs: int | None = None
    what: str = "classes"


def images_to_do(
    spec: DatasetSpec, run: ShardRun, outputs: Sequence[tuple[Path, str]]
) -> list[str]:
    """The ids of `run`'s shard (list order) that miss at least one of their outputs
    `out_dir/{id}{suffix}`. Creates every `out_dir`, so even an empty shard leaves its
    declared directories."""
    ids = run.ids(spec)
    for out_dir, _ in outputs:
        out_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i in ids if not all((d / f"{i}{suffix}").exists() for d, suffix in outputs)]
    log.info(
        "%d of %d images to do (outputs in %s)", len(todo), len(ids), [str(d) for d, _ in outputs]
    )
    return todo


def check_num_outputs(net: nn.Module, job: InferenceJob, model: Path) -> None:
    """DataError naming the model file when the network predicts another number of classes."""
    if job.num_outputs is not None and net.num_outputs != job.num_outputs:
        raise DataError(
            f"{model}: predicts {net.num_outputs} classes, the dataset has "
            f"{job.num_outputs} {job.what}"
        )


def for_inference(net: nn.Module, compile_net: bool) -> nn.Module:
    """The network in channels_last layout, in eval mode, optionally compiled.

    channels_last: oneDNN and cuDNN then run the convolutions in NHWC without converting every
    activation to and from NCHW. compile_net (`compute.compile_inference`): `torch.compile` with
    dynamic shapes, so one compilation serves every image size and scale; it compiles on the
    first call, which must run inside `compiled_context(True)`. Both change results only by
    float rounding (summation order, batch norm folded into the convolutions), ~1e-6.
    """
    net = net.to(memory_format=torch.channels_last).eval()
    if compile_net:
        net.compile(dynamic=True)  # in place: methods calling `self(...)` use it too
    return net


def compiled_context(compile_net: bool) -> contextlib.AbstractContextManager:
    """Inductor's freezing for what compiles in the block (weights become constants: batch norm
    folded into the convolutions, weights pre-packed for oneDNN, element-wise ops fused); a
    compiled resnet18 ran 1.5x faster with it than without it on a 2-core Xeon.
    Scoped to the block rather than set for the process; a no-op without compilation."""
    if not compile_net:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)


def to_device(inputs: Any, device: torch.device) -> Any:
    """`inputs` (a tensor, or a list / tuple of them, or None) on `device`; 4-D tensors in
    channels_last, to match `for_inference`. Non-blocking: the loader pins them on a GPU."""
    if isinstance(inputs, Tensor):
        moved = inputs.to(device, non_blocking=True)
        return moved.contiguous(memory_format=torch.channels_last) if moved.ndim == 4 else moved
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(to_device(x, device) for x in inputs)
    return inputs


def run_images(
    spec: DatasetSpec, run: ShardRun, job: InferenceJob, ids: list[str], step: Step
) -> None:
    """Run `step` on every image of `ids` with the network of `run.model`, on this job's device
    (one GPU slot when the machine has GPUs), under `compute["mixed_precision"]` autocast and
    `torch.inference_mode()`. Nothing is loaded when `ids` is empty."""
    from pcam.data.loading import image_loader
    from pcam.devices import autocast_context, inference_device
    from pcam.models import load_model

    if not ids:
        return
    compute = run.compute
    with inference_device(compute) as device:
        net = load_model(run.model, map_location=device, kind=job.kinds)
        check_num_outputs(net, job, run.model)
        net = for_inference(net, compute["compile_inference"])
        pin = device.type == "cuda"
        loader = image_loader(spec, ids, compute["num_workers"], job.prepare, pin_memory=pin)
        start = time.perf_counter()
        with (
            torch.inference_mode(),
            compiled_context(compute["compile_inference"]),
            autocast_context(device, compute["mixed_precision"]),
        ):
            for item in tqdm(loader, total=len(ids), desc=job.name, disable=None):
                step(net, item._replace(inputs=to_device(item.inputs, device)), device)
        seconds = time.perf_counter() - start
    log.info("%s: %d images on %s in %.1f s", job.name, len(ids), device, seconds)

"""CAM stage throughput: today's per-scale loop (the reference) vs the inference driver's path.

Run: `.venv/bin/python benchmarks/bench_cams.py [--images 3] [--threads 2] [--bf16] [--eager]`.
One resnet50 classifier (timm, random init, output stride 16, 20 classes), a 375x500 image,
scales 0.5, 1.0, 1.5, 2.0 + flip, two classes present (VOC averages 1.5). Variants:
- old: the loop of the CAM stage before the driver (reproduced below): NCHW network, every
  class rectified, resized and summed, then the present ones kept and normalised.
- eager: the driver's path without compiling (`for_inference(net, False)`: channels_last), only
  the present classes resized and summed (`pcam.cams.multiscale_cams`).
- compiled: the same with `compute.compile_inference: true` (torch.compile, dynamic shapes,
  freezing); its one-off compilation is timed and printed apart.
- compiled+bf16 (`--bf16`, the labelled opt-in `compute.mixed_precision: bf16`): bfloat16
  autocast; fast only where the CPU has native bf16 (avx512_bf16 / amx), which is printed.
Images are timed one at a time after a warm-up image, the variants interleaved, so a machine
shared with other jobs slows them alike; wall-clock and CPU-time images/s are both printed
(median per image), with the largest CAM difference to the old path (maps normalised to max 1).

The ceiling: the network's floating-point operations per image (`torch.utils.flop_counter`, two
per multiply-add) and this CPU's best fp32 and bf16 dense throughput (`peak_flops_per_s`, same
threads) give the images/s a path would reach if every operation ran at that speed; a speed-up
over the old path beyond `ceiling / old` needs fewer operations, not faster ones.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from pcam.cams import NORM_EPS, max_normalise, multiscale_cams, strided_size
from pcam.devices import autocast_context
from pcam.inference import compiled_context, for_inference
from pcam.models.classifier import Classifier
from pcam.segment import scaled_batch, scaled_inputs

SCALES = (0.5, 1.0, 1.5, 2.0)
PRESENT = [6, 14]  # two foreground classes (car, person)

Cams = tuple[np.ndarray, np.ndarray]


def old_cams(net: Classifier, image: np.ndarray, present: list[int]) -> Cams:
    """The CAM stage's per-image work before the driver: one CPU resize per scale inside the
    loop, all classes resized and summed, then the present ones kept and normalised."""
    height, width = image.shape[:2]
    small = strided_size(height, width)
    big = tuple(16 * s for s in strided_size(height, width, 16))
    strided = high = None
    for scale in SCALES:
        cams = F.relu(net(scaled_batch(image, scale, True))[1].float())
        cams = (cams[0] + cams[1].flip(-1))[None]
        s = F.interpolate(cams, size=small, mode="bilinear", align_corners=False)[0]
        h = F.interpolate(cams, size=big, mode="bilinear", align_corners=False)[0]
        strided = s if strided is None else strided + s
        high = h if high is None else high + h
    high = high[:, :height, :width]

    def normalise(maps: torch.Tensor) -> np.ndarray:
        picked = maps[present]
        return (picked / (picked.flatten(1).amax(dim=1)[:, None, None] + NORM_EPS)).numpy()

    return normalise(strided), normalise(high)


def new_cams(
    net: torch.nn.Module, image: np.ndarray, present: list[int], mode: str, compiled: bool
) -> Cams:
    """The driver's per-image work (`pcam.stages.cams.cam_step`); inputs are built up front as
    the loader's workers do."""
    inputs = [
        x.contiguous(memory_format=torch.channels_last) for x in scaled_inputs(image, SCALES, True)
    ]
    with compiled_context(compiled), autocast_context(torch.device("cpu"), mode):
        strided, high = multiscale_cams(lambda x: net(x)[1], inputs, image.shape[:2], True, present)
    return max_normalise(strided).contiguous().numpy(), max_normalise(high).contiguous().numpy()


def native_bf16() -> bool:
    """True when the CPU advertises bf16 arithmetic (Linux /proc/cpuinfo flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def network_flops(net: Classifier, image: np.ndarray) -> float:
    """Floating-point operations of the network's forward passes over one image's scales + flip."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        for x in scaled_inputs(image, SCALES, True):
            net(x)
    return float(counter.get_total_flops())


def _best_rate(fn: Callable[[], object], flops: float, repeats: int = 4) -> float:
    fn()  # warm-up: kernel selection
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return flops / min(seconds)


def peak_flops_per_s(dtype: torch.dtype) -> float:
    """This CPU's best dense throughput in `dtype` (FLOP/s): the faster of a 4096^3 matmul and a
    channels_last 3x3 convolution (256 channels, 96x128), the network's densest kernels."""
    a, b = torch.randn(4096, 4096).to(dtype), torch.randn(4096, 4096).to(dtype)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(dtype)
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(1, 256, 96, 128).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return max(
            _best_rate(lambda: a @ b, 2 * 4096**3),
            _best_rate(lambda: conv(x), 2 * 256 * 256 * 9 * 96 * 128),
        )


def _timed(fn: Callable[[], Cams]) -> tuple[Cams, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="timed images per variant")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--bf16", action="store_true", help="add the bf16 autocast opt-in")
    parser.add_argument("--eager", action="store_true", help="skip the compiled variants")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reference = Classifier("resnet50", 20, output_stride=16).eval()
    eager = for_inference(copy.deepcopy(reference), False)
    variants: dict[str, Callable[[np.ndarray], Cams]] = {
        "old": lambda im: old_cams(reference, im, PRESENT),
        "eager": lambda im: new_cams(eager, im, PRESENT, "off", False),
    }
    if not args.eager:
        compiled = for_inference(copy.deepcopy(reference), True)
        variants["compiled"] = lambda im: new_cams(compiled, im, PRESENT, "off", True)
        if args.bf16:
            variants["compiled+bf16"] = lambda im: new_cams(compiled, im, PRESENT, "bf16", True)
    elif args.bf16:
        variants["eager+bf16"] = lambda im: new_cams(eager, im, PRESENT, "bf16", False)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*args.size, 3), dtype=np.uint8) for _ in range(args.images)]
    print(
        f"resnet50 random init, {args.size[0]}x{args.size[1]}, scales {list(SCALES)} + flip, "
        f"{torch.get_num_threads()} threads, native bf16: {'yes' if native_bf16() else 'no'}"
    )
    walls: dict[str, list[float]] = {k: [] for k in variants}
    cpus: dict[str, list[float]] = {k: [] for k in variants}
    diffs: dict[str, float] = {k: 0.0 for k in variants}
    with torch.inference_mode():
        for name, fn in variants.items():  # warm-up: oneDNN primitives, compilation
            _, wall, cpu = _timed(lambda fn=fn: fn(images[0]))
            print(f"warm-up {name:14s} wall {wall:7.1f} s  cpu {cpu:7.1f} s", flush=True)
        for image in images:
            expected = None
            for name, fn in variants.items():
                out, wall, cpu = _timed(lambda fn=fn, image=image: fn(image))
                walls[name].append(wall)
                cpus[name].append(cpu)
                expected = out if expected is None else expected
                diff = max(float(np.abs(a - b).max()) for a, b in zip(out, expected, strict=True))
                diffs[name] = max(diffs[name], diff)
            print("  " + "  ".join(f"{k} {v[-1]:.1f}s" for k, v in walls.items()), flush=True)
    old_wall, old_cpu = statistics.median(walls["old"]), statistics.median(cpus["old"])
    flops = network_flops(reference, images[0])
    print(f"network: {flops / 1e9:.1f} GFLOP per image (forward passes, 2 per multiply-add)")
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rate = peak_flops_per_s(dtype)
        print(
            f"{label} peak {rate / 1e9:6.1f} GFLOP/s -> ceiling {rate / flops:.4f} img/s "
            f"= {old_wall * rate / flops:.2f}x old (old: {flops / old_wall / 1e9:.1f} GFLOP/s)"
        )
    header = ("variant", "img/s wall", "x old", "img/CPU-s", "x old")
    print("{:14s} {:>11s} {:>6s} {:>10s} {:>6s}  max |CAM - old|".format(*header))
    for name in variants:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        print(
            f"{name:14s} {1 / wall:11.4f} {old_wall / wall:6.2f} {1 / cpu:10.4f} "
            f"{old_cpu / cpu:6.2f}  {diffs[name]:.2e}"
        )


if __name__ == "__main__":
    main()

"""Random walk on one VOC-size map: sparse (CSR, step by step) vs the dense T^(2^n) reference.

Run: `.venv/bin/python benchmarks/bench_rw.py [--skip-dense] [--image 375 500] [--threads N]`.
Each method runs in its own subprocess, so its peak resident memory (getrusage maxrss) is its own;
the figure printed is the peak minus the process's memory just before the walk (torch, inputs).
The dense reference takes minutes and ~1.7 GB at the VOC size. When both run, the largest
difference between their outputs is printed too.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _worker(method: str, grid: tuple[int, int], args: argparse.Namespace) -> None:
    """Run one walk on a seeded synthetic map and print {seconds, peak_mb, base_mb} as JSON."""
    import torch

    from pcam.affinity import random_walk

    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    h, w = grid
    cams = torch.rand(args.classes, h, w, generator=g)
    boundary = 0.3 * torch.rand(h, w, generator=g)
    boundary[h // 3, :] = 0.9  # a few object contours
    boundary[:, w // 2] = 0.9
    base = _maxrss_mb()
    start = time.perf_counter()
    rw = random_walk(cams, boundary, radius=5, beta=10, exp_times=args.exp_times, method=method)
    seconds = time.perf_counter() - start
    np.save(args.out, rw.numpy())
    print(json.dumps({"seconds": seconds, "peak_mb": _maxrss_mb(), "base_mb": base}))


def _run(method: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--image", *map(str, args.image)]
    cmd += ["--classes", str(args.classes), "--exp-times", str(args.exp_times), "--out", str(out)]
    cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-dense", action="store_true", help="run the sparse method only")
    parser.add_argument("--image", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--classes", type=int, default=2, help="K, CAM channels walked at once")
    parser.add_argument("--exp-times", type=int, default=8, help="2^n walk steps (paper: 8)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--worker", choices=("sparse", "dense"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    grid = (math.ceil(args.image[0] / 4), math.ceil(args.image[1] / 4))
    if args.worker:
        _worker(args.worker, grid, args)
        return
    methods = ["sparse"] if args.skip_dense else ["sparse", "dense"]
    print(
        f"image {args.image[0]}x{args.image[1]} -> grid {grid[0]}x{grid[1]} "
        f"({grid[0] * grid[1]} nodes), K={args.classes}, radius 5, beta 10, "
        f"{2**args.exp_times} steps, threads {args.threads or 'default'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            r = _run(method, args, Path(tmp) / f"{method}.npy")
            print(
                f"{method:>6}: {r['seconds']:8.2f} s, peak RSS {r['peak_mb']:7.0f} MB "
                f"({r['peak_mb'] - r['base_mb']:+.0f} MB over the {r['base_mb']:.0f} MB before)"
            )
        if len(methods) == 2:
            sparse, dense = (np.load(Path(tmp) / f"{m}.npy") for m in methods)
            diff = np.abs(sparse - dense).max()
            print(f"max |sparse - dense| = {diff:.2e} (max value {dense.max():.3f})")


if __name__ == "__main__":
    main()

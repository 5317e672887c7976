"""Peak memory and speed of `pcam convert-coco` on a generated COCO-format file.

Run: `.venv/bin/python benchmarks/bench_coco.py [--images N] [--anns-per-image K]
[--points P] [--workers W]`. Writes, in a temporary folder, N small JPEG files (hard links of
one picture) and an instances JSON whose annotations are P-point polygons (plus one crowd RLE
per 10 images), so its size grows like a real file's. It then measures, each in a fresh
process: the peak resident memory of `json.load` of that file (what a loader holding it whole
needs) and of `convert_coco` (the main process, and the largest worker). Prints the file size,
both peaks in MiB, and the conversion's images per second.

Peaks are the kernel's high-water mark of the measured process itself (`VmHWM`): Linux carries
a parent's `ru_maxrss` into a child across fork + exec, so the data are generated in a process
of their own and the driver stays small.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 64


def _polygon(rng: np.random.Generator, points: int) -> list[float]:
    centre = rng.uniform(16, SIDE - 16, size=2)
    radius = rng.uniform(4, 14) * (1 + 0.2 * rng.random(points))
    angle = np.linspace(0, 2 * math.pi, points, endpoint=False)
    xy = np.stack([centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle)], 1)
    return np.round(np.clip(xy, 0, SIDE - 1), 2).reshape(-1).tolist()


def generate(folder: Path, n_images: int, per_image: int, points: int) -> Path:
    """Write the images and `instances.json`; returns the JSON's path."""
    rng = np.random.default_rng(0)
    images_dir = folder / "images"
    images_dir.mkdir()
    picture = folder / "picture.jpg"
    Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(picture)
    images, anns = [], []
    for k in range(1, n_images + 1):
        name = f"COCO_bench_{k:012d}.jpg"
        os.link(picture, images_dir / name)
        images.append({"id": k, "file_name": name, "width": SIDE, "height": SIDE})
        for _ in range(per_image):
            anns.append(
                {"id": len(anns) + 1, "image_id": k, "category_id": int(rng.integers(1, 4)),
                 "segmentation": [_polygon(rng, points)], "bbox": [8, 8, 40, 40],
                 "area": 100.0, "iscrowd": 0}
            )  # fmt: skip
        if k % 10 == 0:
            crowd = {"size": [SIDE, SIDE], "counts": [SIDE * 8, SIDE * 4, SIDE * 52]}
            anns.append(
                {"id": len(anns) + 1, "image_id": k, "category_id": 1, "segmentation": crowd,
                 "bbox": [8, 0, 4, 64], "area": 256.0, "iscrowd": 1}
            )  # fmt: skip
    categories = [{"id": i, "name": n} for i, n in ((1, "person"), (2, "bicycle"), (3, "car"))]
    path = folder / "instances.json"
    with open(path, "w") as fh:
        json.dump({"images": images, "annotations": anns, "categories": categories}, fh)
    return path


def _child(mode: str, path: str, images: str, out: str, workers: int) -> None:
    """Run one measured case in this (fresh) process and print its figures as JSON."""
    start = time.perf_counter()
    if mode == "json.load":
        with open(path) as fh:
            json.load(fh)
    else:
        from pcam.data.coco import CocoPart, convert_coco

        convert_coco(Path(out), [CocoPart("train", Path(path), Path(images))], workers=workers)
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text().splitlines()
    kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # spawned from this one
    print(json.dumps({"seconds": seconds, "self_mib": kib / 1024, "child_mib": children / 1024}))


def measure(mode: str, path: Path, images: Path, out: Path, workers: int) -> dict:
    args = [sys.executable, __file__, "--child", mode, str(path), str(images), str(out)]
    proc = subprocess.run(
        [*args, "--workers", str(workers)], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--anns-per-image", type=int, default=8)
    parser.add_argument("--points", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--generate", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child, workers=args.workers)
        return
    if args.generate:
        generate(Path(args.generate), args.images, args.anns_per_image, args.points)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sizes = ["--images", str(args.images), "--anns-per-image", str(args.anns_per_image)]
        subprocess.run(
            [sys.executable, __file__, "--generate", tmp, *sizes, "--points", str(args.points)],
            check=True,
        )
        path = folder / "instances.json"
        size = path.stat().st_size / 2**20
        print(f"instances.json: {size:.1f} MiB, {args.images} images, "
              f"{args.images * args.anns_per_image} polygons of {args.points} points")  # fmt: skip
        loaded = measure("json.load", path, folder / "images", folder / "unused", 1)
        print(f"json.load (whole file held): peak {loaded['self_mib']:.0f} MiB, "
              f"{loaded['seconds']:.1f} s")  # fmt: skip
        run = measure("convert", path, folder / "images", folder / "out", args.workers)
        print(f"convert_coco, {args.workers} workers: main process peak {run['self_mib']:.0f} MiB, "
              f"largest worker {run['child_mib']:.0f} MiB, {run['seconds']:.1f} s, "
              f"{args.images / run['seconds']:.0f} images/s")  # fmt: skip


if __name__ == "__main__":
    main()

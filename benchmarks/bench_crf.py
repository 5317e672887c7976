"""Dense-CRF throughput at VOC size (375x500), 10 mean-field iterations, 1 and 2 processes.

Run: `.venv/bin/python benchmarks/bench_crf.py [--images N]`. Cases: the label CRF of the
affinity-label stage (spec 4) with 21 and 3 labels, and the probability CRF of DeepLab inference
(spec 8.3) with 21 classes. Each case maps N synthetic images through `pcam.crf.map_images`; the
2-process figure includes starting the pool. CRF parameters come from config/config.yaml.
Prints images per second per case, and CPU seconds per image for the in-process case (a
figure that other load on the machine disturbs less).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pcam.config import load_config
from pcam.crf import crf_from_labels, crf_from_probs, map_images

HEIGHT, WIDTH = 375, 500
CONFIG = load_config(Path(__file__).resolve().parent.parent / "config" / "config.yaml")
LABEL_CRF = CONFIG["affinity_labels"]["crf"]
PROB_CRF = CONFIG["deeplab_inference"]["crf"]


def _scene(seed: int, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """A blocky image of coloured regions with pixel noise, and noisy region labels."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, n_labels, size=(HEIGHT // 25 + 1, WIDTH // 25 + 1))
    regions = np.kron(coarse, np.ones((25, 25), dtype=np.int64))[:HEIGHT, :WIDTH]
    colours = rng.integers(0, 256, size=(n_labels, 3))
    image = np.clip(colours[regions] + rng.normal(0, 6, (HEIGHT, WIDTH, 3)), 0, 255)
    flips = rng.random(regions.shape) < 0.2
    labels = np.where(flips, rng.integers(0, n_labels, size=regions.shape), regions)
    return image.astype(np.uint8), labels


def _labels_task(item: tuple[np.ndarray, np.ndarray, int]) -> int:
    image, labels, n_labels = item
    return int(crf_from_labels(image, labels, n_labels, LABEL_CRF).sum())


def _probs_task(item: tuple[np.ndarray, np.ndarray, int]) -> int:
    image, labels, n_labels = item
    probs = np.full((n_labels, HEIGHT, WIDTH), 0.3 / (n_labels - 1), dtype=np.float32)
    np.put_along_axis(probs, labels[None], 0.7, axis=0)
    return int(crf_from_probs(image, probs, PROB_CRF).argmax(0).sum())


def main() -> None:
    """Time each (case, workers) pair once and print one line per pair."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images per case")
    args = parser.parse_args()
    cases = [("labels", _labels_task, 21), ("labels", _labels_task, 3), ("probs", _probs_task, 21)]
    for name, task, n_labels in cases:
        items = [(*_scene(seed, n_labels), n_labels) for seed in range(args.images)]
        for workers in (1, 2):
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in map_images(task, items, workers):
                pass
            seconds = time.perf_counter() - start
            # CPU time of this process: the per-image cost when in-process, whatever else runs.
            cpu = f", CPU {(time.process_time() - cpu_start) / args.images:.3f} s/image"
            print(
                f"crf_from_{name}, {n_labels:2d} labels, {workers} worker(s): "
                f"{args.images / seconds:5.2f} images/s ({seconds / args.images:.3f} s/image"
                f"{cpu if workers == 1 else ''})"
            )


if __name__ == "__main__":
    main()

"""Evaluation speed: label PNGs and score maps (with a 15-threshold sweep), 1 and 2 workers.

Run: `.venv/bin/python benchmarks/bench_evaluate.py [--size 384] [--n-train 200]`. Generates a demo
dataset in a temporary directory (its `train` split, every other image, is scored), writes
predictions from the SegmentationClassAug masks (PNGs) and noisy score maps derived from them
(float16 `.npz`, as CAM dumps are), then prints images per second for each case. The first
timing after generation also warms the file cache, so it is discarded.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from pcam.data.demo import generate
from pcam.data.voc import DatasetSpec, read_split, training_mask
from pcam.evaluate import evaluate_predictions
from pcam.io import save_label_png, save_scores

SWEEP = [round(0.05 * i, 2) for i in range(1, 16)]  # 0.05..0.75, as config/config.yaml


def write_predictions(spec: DatasetSpec, ids: list[str], png_dir: Path, npz_dir: Path) -> None:
    """One label PNG and one score archive (`hr_cam`) per id, derived from the training mask."""
    rng = np.random.default_rng(0)
    for image_id in ids:
        mask = training_mask(spec, image_id)
        save_label_png(png_dir / f"{image_id}.png", mask, spec.palette)
        present = [c for c in np.unique(mask).tolist() if 0 < c < spec.num_classes]
        noise = rng.random((len(present), *mask.shape), dtype=np.float32)
        scores = np.stack([(mask == c) * 0.7 for c in present]) + 0.3 * noise if present else noise
        save_scores(npz_dir / f"{image_id}.npz", np.array([0, *present]), "float16", hr_cam=scores)


def run(spec: DatasetSpec, pred: Path, score_key: str | None, workers: int) -> float:
    """Seconds for one evaluation of the `train` split."""
    start = time.perf_counter()
    evaluate_predictions(
        spec,
        "train",
        [pred],
        score_key=score_key,
        threshold=0.15 if score_key else None,
        thresholds=SWEEP if score_key else None,
        every=1,
        workers=workers,
    )
    return time.perf_counter() - start


def main() -> None:
    """Generate the data once, then time each (prediction kind, workers) case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384, help="image side in pixels")
    parser.add_argument("--n-train", type=int, default=200, help="train_aug images (half scored)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        generate(root, n_train=args.n_train, n_val=2, size=args.size, seed=0, style="parts")
        spec = DatasetSpec.from_settings({"root": str(root)})
        ids = read_split(spec, "train")
        write_predictions(spec, ids, Path(tmp) / "png", Path(tmp) / "npz")
        run(spec, Path(tmp) / "npz", "hr_cam", 1)  # warm-up
        for kind, pred, key in (("label PNG", "png", None), ("score map + sweep", "npz", "hr_cam")):
            for workers in (1, 2):
                seconds = run(spec, Path(tmp) / pred, key, workers)
                print(
                    f"{kind}, {workers} worker(s): {len(ids)} images at {args.size} px "
                    f"in {seconds:.2f} s ({len(ids) / seconds:.0f} images/s)"
                )


if __name__ == "__main__":
    main()

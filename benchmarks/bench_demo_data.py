"""Demo-dataset generation speed: the default size (160 + 48 images, 128 px) and 500 images.

Run: `.venv/bin/python benchmarks/bench_demo_data.py`. Prints wall time and images per second; the
output is written to a temporary directory and removed afterwards.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from pcam.data.demo import generate

CASES = [
    ("default (config/config.yaml)", 160, 48, 128),
    ("500 images", 400, 100, 128),
]


def main() -> None:
    """Time each case once after a small warm-up and print one line per case."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "warmup", n_train=4, n_val=2, size=64, seed=0)
        for name, n_train, n_val, size in CASES:
            start = time.perf_counter()
            generate(Path(tmp) / name.split()[0], n_train=n_train, n_val=n_val, size=size, seed=0)
            seconds = time.perf_counter() - start
            n = n_train + n_val
            print(
                f"{name}: {n} images at {size} px in {seconds:.2f} s ({n / seconds:.0f} images/s)"
            )


if __name__ == "__main__":
    main()

"""GPU check: the whole DAG on generated VOC-size data, pre-empted mid-training; per-stage figures.

Run through `benchmarks/gpu_check.sh` (which picks the interpreter), from the repository root:

    benchmarks/gpu_check.sh                 # one GPU: 375x500 images, 21 classes, paper crop/batch
    benchmarks/gpu_check.sh --ci            # CPU, tiny: the same logic in about two minutes

What it does, in a scratch folder (`--work`, default a temporary one):

1. writes a VOC-layout dataset of VOC size (375x500, the 20 VOC classes + background, ellipses
   with class-coloured stripes; 255 borders, XML tags, split lists) with the demo writer;
2. runs the `puzzle` experiment's whole chain with Snakemake and the workstation profile on top of
   `config/config.yaml` + `config/voc.yaml` (GPU mode: the paper's crops and batches, random
   backbone weights, a few steps per training), `--resources gpu=1`;
3. sends SIGTERM to the classifier training once it has written a checkpoint: the job saves,
   exits, and Snakemake's retry must resume it ("resuming from step N" in the job's log);
4. prints per rule: jobs, job-seconds, images/s (training: the curve's mean; per-image stages:
   the split's images over the job-seconds), peak GPU memory, precision (AMP) and DDP world size,
   from Snakemake's benchmark files and the run records the jobs leave (`.runs/*.json`).

Exit status 0 only when the DAG finished, the training resumed after the signal, and (GPU mode)
every torch job ran on CUDA. The GPU mode is sized to finish in under 8 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml
from bench_demo import read_jobs, rule_patterns

from pcam.data.demo.draw import DemoObject, DemoSample, hsv
from pcam.data.demo.write import write_dataset
from pcam.data.voc import VOC_CLASSES

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = "puzzle"

# Per mode: data size and the overlay on config/config.yaml (+ config/voc.yaml in GPU mode).
MODES = {
    "gpu": {
        "height": 375, "width": 500, "n_train": 128, "n_val": 32, "voc": True,
        "overlay": {
            "compute": {"device": "cuda", "gpus_per_job": 1, "mixed_precision": "auto",
                        "num_workers": 4, "cam_shards": 2, "crf_threads": 4, "torch_threads": 4},
            "classifier": {"pretrained": False, "epochs": 2, "checkpoint_every": 1,
                           "log_every": 1},
            "affinitynet": {"pretrained": False, "epochs": 2, "checkpoint_every": 2,
                            "log_every": 1},
            "deeplab": {"pretrained": False, "epochs": 2, "checkpoint_every": 2, "log_every": 1},
        },
    },
    "ci": {
        "height": 48, "width": 64, "n_train": 16, "n_val": 4, "voc": False,
        "overlay": {
            "compute": {"device": "cpu", "gpus_per_job": 0, "mixed_precision": "off",
                        "num_workers": 0, "cam_shards": 2, "crf_threads": 1, "torch_threads": 1},
            "classifier": {"batch_size": 4, "epochs": 2, "crop_size": 64,
                           "resize_range": [48, 80], "checkpoint_every": 1, "log_every": 1},
            "cams": {"scales": [0.5, 1.0]},
            "affinitynet": {"radius": 5, "batch_size": 8, "epochs": 1, "crop_size": 64,
                            "resize_range": [48, 80], "checkpoint_every": 1, "log_every": 1},
            "deeplab": {"batch_size": 8, "epochs": 1, "crop_size": 64, "resize_range": [48, 80],
                        "head_channels": 32, "checkpoint_every": 1, "log_every": 1},
            "deeplab_inference": {"scales": [1.0], "crf": {"iterations": 1}},
            "evaluation": {"workers": 1},
        },
    },
}  # fmt: skip


# --------------------------------------------------------------------------- data


def voc_size_sample(k: int, seed: int, height: int, width: int) -> DemoSample:
    """Scene k: a noisy background and 1-3 ellipses of VOC classes, each class its own hue and
    stripe period (deterministic in (seed, k))."""
    rng = np.random.default_rng([seed, k])
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = 0.35 + 0.15 * rng.random((height, width, 3), dtype=np.float32)
    instances = np.zeros((height, width), dtype=np.int32)
    objects = []
    for n in range(int(rng.integers(1, 4))):
        label = int(rng.integers(1, len(VOC_CLASSES)))
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.12, 0.3, size=2) * min(height, width)
        mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
        period = 4.0 + 2.0 * (label % 5)
        stripes = 0.75 + 0.25 * np.sign(np.sin(2 * math.pi * (x + y * (label % 3)) / period))
        colour = hsv((label - 1) / (len(VOC_CLASSES) - 1), 0.8, 0.9)
        image[mask] = colour * stripes[mask][:, None]
        instances[mask] = n + 1
        objects.append(DemoObject(label, mask, mask))
    return DemoSample((np.clip(image, 0, 1) * 255).astype(np.uint8), instances, objects)


def write_data(root: Path, mode: dict, seed: int = 0) -> None:
    """The mode's VOC-layout dataset under `root` (train_aug, train = every other one, val)."""
    h, w = mode["height"], mode["width"]
    write_dataset(
        root, VOC_CLASSES, lambda k: voc_size_sample(k, seed, h, w), mode["n_train"], mode["n_val"]
    )


# --------------------------------------------------------------------------- the run


def _processes(needle: str, cwd: Path) -> list[int]:
    """PIDs of the processes running in `cwd` whose command line holds `needle` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or Path(os.readlink(entry / "cwd")) != cwd:
                continue
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if cmdline and needle.encode() in cmdline and b"snakemake" not in cmdline[0]:
            found.append(int(entry.name))
    return found


def preempt_classifier(work: Path, stop: threading.Event, report: dict) -> None:
    """Once the classifier's first checkpoint exists, SIGTERM its training process (once)."""
    state = work / "results" / EXPERIMENT / ".state"
    while not stop.is_set():
        if list(state.glob("classifier-*/checkpoint.pt")):
            pids = _processes("train-classifier", work.resolve())
            if pids:
                for pid in pids:
                    os.kill(pid, signal.SIGTERM)
                report["sigterm_at"] = time.time()
                return
        time.sleep(0.1)


def run_dag(work: Path, mode_name: str, cores: int) -> tuple[int, dict, float]:
    """Snakemake on the mode's overlay; returns (exit code, pre-emption report, wall seconds)."""
    mode = MODES[mode_name]
    overlay = {
        "results_dir": "results",
        "run_experiments": [EXPERIMENT],
        "demo": {"enabled": False},
        "dataset": {"root": "data", "class_names": None, "palette": None,
                    "train_split": "train_aug", "eval_split": "train", "val_split": "val"},
        **mode["overlay"],
    }  # fmt: skip
    (work / "overlay.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    configs = [REPO / "config" / "config.yaml"]
    if mode["voc"]:
        configs.append(REPO / "config" / "voc.yaml")
    gpus = "1" if mode_name == "gpu" else "0"
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"),
        "--profile", str(REPO / "workflow" / "profiles" / "workstation"),
        "--directory", str(work), "--cores", str(cores), "--resources", f"gpu={gpus}",
        "--configfile", *map(str, configs), str(work / "overlay.yaml"),
    ]  # fmt: skip
    env = {**os.environ, "PCAM_GPU_LOCK_DIR": str(work / "gpu-slots")}
    report: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=preempt_classifier, args=(work, stop, report), daemon=True)
    watcher.start()
    started = time.time()
    with open(work / "snakemake.log", "w") as log:
        code = subprocess.call(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    stop.set()
    logs = "\n".join(p.read_text() for p in (work / "logs").rglob("train_classifier*.log"))
    report["resumed"] = "resuming from step" in logs
    return code, report, time.time() - started


# --------------------------------------------------------------------------- figures


def _split_sizes(root: Path) -> dict[str, int]:
    split_dir = root / "ImageSets" / "Segmentation"
    return {p.stem: len(p.read_text().split()) for p in split_dir.glob("*.txt")}


def _curve_images_per_s(curve: Path) -> float | None:
    if not curve.exists():
        return None
    with open(curve, newline="") as fh:
        values = [float(r["images_per_s"]) for r in csv.DictReader(fh) if r.get("images_per_s")]
    return sum(values[1:]) / len(values[1:]) if len(values) > 1 else None


def stage_figures(work: Path) -> list[dict]:
    """One row per rule: jobs, job-seconds, images/s, peak GPU MiB, precisions, world sizes."""
    sizes = _split_sizes(work / "data")
    rows: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "seconds": 0.0, "images": 0})
    patterns = rule_patterns(REPO / "workflow" / "rules")
    for job in read_jobs(work / "logs" / "benchmarks", patterns):
        row = rows[job.rule]
        row["jobs"] += 1
        row["seconds"] += job.seconds
        *_, split, shard = ["", *Path(job.path).stem.split("-")]
        if split in sizes and shard.isdigit():  # a per-image shard: ...-{split}-{shard}
            row["images"] = sizes[split]
    for rule, stage in (("train_classifier", "classifier"), ("train_affinitynet", "affinitynet"),
                        ("train_deeplab", "deeplab")):  # fmt: skip
        if rule in rows:
            rows[rule]["train_images_per_s"] = _curve_images_per_s(
                work / "results" / EXPERIMENT / stage / "curve.csv"
            )
    commands = defaultdict(list)
    for record in (work / "results").rglob(".runs/*.json"):
        data = json.loads(record.read_text())
        commands[data["command"].replace("-", "_")].append(data)
    out = []
    for rule, row in sorted(rows.items()):
        records = commands.get(rule, [])
        if row.get("train_images_per_s") is not None:
            rate = row["train_images_per_s"]
        elif row["images"] and row["seconds"]:
            rate = row["images"] / row["seconds"]
        else:
            rate = None
        peaks = [r["peak_gpu_mb"] for r in records if r.get("peak_gpu_mb") is not None]
        out.append({
            "rule": rule, "jobs": row["jobs"], "job_s": round(row["seconds"], 1),
            "images_per_s": None if rate is None else round(rate, 2),
            "peak_gpu_mib": max(peaks) if peaks else None,
            "device": ",".join(sorted({r["device"] for r in records})) or "-",
            "precision": ",".join(sorted({r["precision"] for r in records})) or "-",
            "world_size": ",".join(sorted({str(r["world_size"]) for r in records})) or "-",
        })  # fmt: skip
    return out


def print_table(rows: list[dict]) -> None:
    """The figures as an aligned text table."""
    columns = list(rows[0]) if rows else []
    cells = [[("-" if r[c] is None else str(r[c])) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ci", action="store_true", help="CPU, tiny data (the logic only)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    mode_name = "ci" if args.ci else "gpu"
    if mode_name == "gpu":
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no usable CUDA device (use --ci for the CPU check)", file=sys.stderr)
            return 2
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    work = args.work or Path(tempfile.mkdtemp(prefix="pcam-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    mode = MODES[mode_name]
    t0 = time.time()
    write_data(work / "data", mode)
    print(f"data: {mode['n_train']} train_aug + {mode['n_val']} val images, "
          f"{mode['height']}x{mode['width']}, {len(VOC_CLASSES)} classes "
          f"({time.time() - t0:.1f} s) in {work}")  # fmt: skip
    code, preempt, wall = run_dag(work, mode_name, args.cores)
    rows = stage_figures(work)
    print_table(rows)
    torch_rows = [r for r in rows if r["device"] != "-"]
    on_device = all(r["device"] == ("cuda" if mode_name == "gpu" else "cpu") for r in torch_rows)
    amp = sorted({r["precision"] for r in torch_rows})
    ddp = sorted({r["world_size"] for r in torch_rows})
    print(f"snakemake exit {code}; wall {wall:.0f} s; SIGTERM sent: {'sigterm_at' in preempt}; "
          f"resumed after it: {preempt['resumed']}; torch jobs on the expected device: "
          f"{on_device}; precisions (AMP when fp16/bf16): {amp}; "
          f"DDP world sizes: {ddp}")  # fmt: skip
    if code != 0:
        print(f"see {work / 'snakemake.log'}", file=sys.stderr)
    ok = code == 0 and "sigterm_at" in preempt and preempt["resumed"] and on_device
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

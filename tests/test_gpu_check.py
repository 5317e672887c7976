"""benchmarks/gpu_check.sh in its CPU mode: the whole chain, a SIGTERM mid-training that the retry
resumes, and the per-stage figures (the GPU mode runs the same code on a GPU machine)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def test_ci_mode_runs_every_stage_and_resumes_the_preempted_training(tmp_path):
    script = REPO / "benchmarks" / "gpu_check.sh"
    proc = subprocess.run(
        [str(script), "--ci", "--work", str(tmp_path), "--cores", "2"],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    table = {line.split()[0]: line.split() for line in lines if line.split()}
    header = table["rule"]
    for rule in ("train_classifier", "make_cams", "make_affinity_labels", "train_affinitynet",
                 "make_rw", "make_pseudo_labels", "train_deeplab", "infer_deeplab"):  # fmt: skip
        row = dict(zip(header, table[rule], strict=True))
        assert float(row["images_per_s"]) > 0, rule
    assert dict(zip(header, table["make_cams"], strict=True))["device"] == "cpu"
    assert "SIGTERM sent: True; resumed after it: True" in proc.stdout
    logs = "".join(p.read_text() for p in (tmp_path / "logs").rglob("train_classifier*.log"))
    assert "resuming from step" in logs

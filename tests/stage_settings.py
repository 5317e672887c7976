"""Settings for the stage tests: sections of config/config.yaml, shrunk to tiny CPU runs."""

from __future__ import annotations

from pathlib import Path

from pcam.config import load_config, stage_settings, validate_stage

ROOT = Path(__file__).resolve().parent.parent


def section(stage: str, **overrides) -> dict:
    """The config's (validated) `stage` section of the "puzzle" experiment, with `overrides`."""
    settings = stage_settings(load_config(ROOT / "config" / "config.yaml"), "puzzle", stage)
    return validate_stage(stage, {**settings, **overrides})


def cpu_compute(**overrides) -> dict:
    """The config's `compute` section for an in-process CPU run: no GPU slot, no DataLoader
    workers, fp32, nothing compiled."""
    compute = load_config(ROOT / "config" / "config.yaml")["compute"]
    tiny = {"gpus_per_job": 0, "num_workers": 0, "mixed_precision": "off"}
    return {**compute, **tiny, "compile_inference": False, **overrides}

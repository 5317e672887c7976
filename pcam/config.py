"""Configuration: load, validate against the JSON schema, and resolve per-experiment settings.

The only module that knows the YAML's shape. `workflow/rules/common.smk` and every `pcam`
sub-command validate through here, so a wrong type, unknown key or out-of-range value stops
the run before any job starts, with the key named in the message.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from pcam.errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"

# Stage sections an experiment may override, in pipeline order.
STAGES = (
    "classifier",
    "cams",
    "affinity_labels",
    "affinitynet",
    "rw",
    "pseudo_labels",
    "deeplab",
    "deeplab_inference",
)


@functools.cache
def load_schema(path: Path = SCHEMA_PATH) -> dict:
    """The config schema as a dict (JSON Schema 2020-12).

    A definition with `x-extends: NAME` gets the properties of `$defs/NAME` merged into its own,
    so the three training sections share one list of keys and still reject unknown ones.
    """
    with open(path) as fh:
        schema = yaml.safe_load(fh)
    defs = schema["$defs"]
    for definition in defs.values():
        parent = definition.pop("x-extends", None)
        if parent:
            definition["properties"] = {**defs[parent]["properties"], **definition["properties"]}
    return schema


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _validate(instance: Any, schema: dict, where: str) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{where}: {_key_path(e)}: {e.message}" for e in errors[:10]]
        raise ConfigError("invalid configuration\n  " + "\n  ".join(lines))


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """Return `base` updated recursively with `override` (neither is modified)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate_config(cfg: dict, where: str = "config") -> dict:
    """Validate a whole config, including every experiment's merged stage settings."""
    schema = load_schema()
    _validate(cfg, schema, where)
    unknown = set(cfg.get("run_experiments") or []) - set(cfg["experiments"])
    if unknown:
        raise ConfigError(f"{where}: run_experiments: no such experiment(s) {sorted(unknown)}")
    for name in cfg["experiments"]:
        for stage in STAGES:
            _validate(
                stage_settings(cfg, name, stage),
                _stage_schema(stage),
                f"{where}: experiments.{name}.{stage}",
            )
    return cfg


def load_config(path: str | Path, overrides: Mapping | None = None) -> dict:
    """Read a YAML config, apply `overrides` (deep merge) and validate it."""
    path = Path(path)
    try:
        with open(path) as fh:
            cfg = yaml.safe_load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if overrides:
        cfg = deep_merge(cfg, overrides)
    return validate_config(cfg, str(path))


def _stage_schema(stage: str) -> dict:
    schema = load_schema()
    if stage not in schema["$defs"]:
        raise ConfigError(f"unknown stage section {stage!r}")
    # Keep $defs reachable so the section's $refs resolve.
    return {"$defs": schema["$defs"], "$ref": f"#/$defs/{stage}"}


def validate_stage(stage: str, settings: dict) -> dict:
    """Validate one stage's merged settings (what a rule passes to `pcam ... --settings`)."""
    _validate(settings, _stage_schema(stage), f"--settings ({stage})")
    return settings


def stage_settings(cfg: dict, experiment: str, stage: str) -> dict:
    """Defaults of section `stage` deep-merged with the experiment's overrides of it.

    `pretrained: true` becomes the `pretrained_dir` folder when that top-level key is set.
    """
    try:
        exp = cfg["experiments"][experiment]
    except KeyError as exc:
        raise ConfigError(f"experiments.{experiment}: no such experiment") from exc
    merged = deep_merge(cfg[stage], exp.get(stage, {}))
    if "pretrained" in merged and merged["pretrained"] is True and cfg["pretrained_dir"]:
        merged["pretrained"] = cfg["pretrained_dir"]  # one folder of offline weights for all
    return merged


def experiments(cfg: dict, supervision: str | None = None) -> list[str]:
    """The experiments to run (`run_experiments`, default all), optionally of one supervision."""
    selected = cfg.get("run_experiments") or list(cfg["experiments"])
    return [
        name
        for name in selected
        if supervision is None or cfg["experiments"][name]["supervision"] == supervision
    ]

"""Configuration: load, validate against the JSON schema, and resolve per-experiment settings.

The only module that knows the YAML's shape. `workflow/rules/common.smk` and every `pcam`
sub-command validate through here, so a missing key, wrong type, unknown key or out-of-range
value stops the run before any job starts, with the key named in the message. The schema
(`pcam/schemas/config.schema.yaml`, package data) requires every key the pipeline reads and holds
no defaults: those live in `config/config.yaml` only, so code reads `settings["key"]`.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from pcam.errors import ConfigError
from pcam.pipeline import SECTIONS

# Package data (pcam/schemas/), so an installed pcam validates without the repository;
# workflow/schemas/config.schema.yaml is a link to it, where the workflow layout expects it.
SCHEMA_FILE = resources.files("pcam") / "schemas" / "config.schema.yaml"


@functools.cache
def load_schema() -> dict:
    """The config schema as a dict (JSON Schema 2020-12, standard keywords only)."""
    schema = yaml.safe_load(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _declared(schema: dict) -> set[str]:
    """Keys a section declares: its `properties` and those of the `$defs` it takes in (`allOf`)."""
    names = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        ref = part.get("$ref", "")
        names |= _declared(load_schema()["$defs"][ref.rpartition("/")[2]] if ref else part)
    return names


def _messages(error: jsonschema.ValidationError, prefix: tuple[str, ...]) -> list[str]:
    """`key.path: problem` lines of one error; a missing or unknown key is named by its path."""
    parts = [*prefix, *(str(p) for p in error.absolute_path)]
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [f"{'.'.join([*parts, k])}: required key is missing" for k in missing]
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        # A failing `allOf` part marks none of its keys evaluated: report only the keys that no
        # part declares (the failure itself is reported by its own error).
        unknown = sorted(set(error.instance) - _declared(error.schema))
        return [f"{'.'.join([*parts, k])}: unknown key" for k in unknown]
    return [f"{'.'.join(parts) or '(top level)'}: {error.message}"]


def _validate(instance: Any, schema: dict, where: str, prefix: tuple[str, ...] = ()) -> None:
    """ConfigError listing (up to 10) problems of `instance`, each `where: key.path: problem`."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    lines = list(dict.fromkeys(line for e in errors for line in _messages(e, prefix)))
    if lines:
        raise ConfigError(
            "invalid configuration\n  " + "\n  ".join(f"{where}: {x}" for x in lines[:10])
        )


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
    unknown = set(cfg["run_experiments"] or []) - set(cfg["experiments"])
    if unknown:
        raise ConfigError(f"{where}: run_experiments: no such experiment(s) {sorted(unknown)}")
    for name in cfg["experiments"]:
        for stage in SECTIONS:
            merged = stage_settings(cfg, name, stage)
            _validate(merged, _section_schema(stage), where, ("experiments", name, stage))
        weak = cfg["experiments"][name]["supervision"] == "weak"
        for section in CLASSIFIER_INIT_SECTIONS if weak else ("deeplab",):
            try:
                backbone_run(cfg, name, section)
            except ConfigError as exc:
                raise ConfigError(f"{where}: experiments.{name}: {exc}") from None
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


def _section_schema(section: str) -> dict:
    schema = load_schema()
    if section not in schema["$defs"]:
        raise ConfigError(f"unknown config section {section!r}")
    # Keep $defs reachable so the section's $refs resolve.
    return {"$defs": schema["$defs"], "$ref": f"#/$defs/{section}"}


def validate_stage(stage: str, settings: dict) -> dict:
    """Validate one stage's merged settings (what a rule passes to `pcam ... --settings`)."""
    _validate(settings, _section_schema(stage), "--settings", (stage,))
    return settings


def validate_compute(compute: dict) -> dict:
    """Validate the `compute` section (what a rule passes to `pcam ... --compute`)."""
    _validate(compute, _section_schema("compute"), "--compute", ("compute",))
    return compute


def stage_settings(cfg: dict, run: str, stage: str) -> dict:
    """Defaults of section `stage` deep-merged with the experiment's overrides of it.

    `run`: an experiment's name, or one seed's run of it (`NAME/seed-K`, see `runs`); the
    section's `seed` (if it has one) is offset by the run's seed (`run_seed`). `pretrained:
    true` becomes the `pretrained_dir` folder when that top-level key is set.
    """
    experiment, _ = parse_run(run)
    try:
        exp = cfg["experiments"][experiment]
    except KeyError as exc:
        raise ConfigError(f"experiments.{experiment}: no such experiment") from exc
    # An experiment overrides only the sections it names (schema: `experiment`).
    merged = deep_merge(cfg[stage], exp.get(stage, {}))
    if "seed" in merged:
        merged["seed"] += run_seed(cfg, run)
    if "pretrained" in merged and merged["pretrained"] is True and cfg["pretrained_dir"]:
        merged["pretrained"] = cfg["pretrained_dir"]  # one folder of offline weights for all
    return merged


def experiments(cfg: dict, supervision: str | None = None) -> list[str]:
    """The experiments to run (`run_experiments`, default all), optionally of one supervision."""
    selected = cfg["run_experiments"] or list(cfg["experiments"])
    return [
        name
        for name in selected
        if supervision is None or cfg["experiments"][name]["supervision"] == supervision
    ]


# --------------------------------------------------------------------------- seeds

_RUN = re.compile(r"(?P<experiment>[A-Za-z0-9][A-Za-z0-9_-]*)(?:/seed-(?P<seed>[0-9]+))?")


def run_folder(experiment: str, seed: int | None) -> str:
    """The results folder of a run, relative to results_dir: `NAME`, or `NAME/seed-K`."""
    return experiment if seed is None else f"{experiment}/seed-{seed}"


def parse_run(run: str) -> tuple[str, int | None]:
    """(experiment, seed) of a run folder (`run_folder`); seed None for a run without one."""
    match = _RUN.fullmatch(run)
    if not match:
        raise ConfigError(f"{run!r}: not an experiment run (NAME or NAME/seed-K)")
    seed = match["seed"]
    return match["experiment"], None if seed is None else int(seed)


def runs(cfg: dict, supervision: str | None = None) -> list[str]:
    """The run folders of the experiments to run (`experiments`): one `NAME/seed-K` per seed
    of an experiment listing several `seeds`, else `NAME` (one seed or none: today's layout)."""
    return [run for name in experiments(cfg, supervision) for run in experiment_runs(cfg, name)]


def experiment_runs(cfg: dict, name: str) -> list[str]:
    """The run folders of one experiment: `NAME/seed-K` per seed when it lists several, else
    `NAME` (one seed or none: today's layout)."""
    seeds = cfg["experiments"][name].get("seeds", [])  # optional key: absent = no seeds
    return [run_folder(name, k) for k in seeds] if len(seeds) > 1 else [name]


# The sections whose backbone may start from a trained classifier (`init_from_classifier`).
CLASSIFIER_INIT_SECTIONS = ("affinitynet", "deeplab")


def backbone_run(cfg: dict, run: str, section: str) -> str | None:
    """The run whose trained classifier starts the backbone of `section` (affinitynet or deeplab,
    `init_from_classifier`): `run` itself (true); the named experiment's first run (a name: one
    backbone for every experiment and seed, as the ImageNet weights are in the paper); None
    (false: the section's `pretrained` weights)."""
    value = stage_settings(cfg, run, section)["init_from_classifier"]
    if value is False:
        return None
    name = parse_run(run)[0] if value is True else value
    other = cfg["experiments"].get(name)
    if other is None or other["supervision"] != "weak":
        raise ConfigError(
            f"{section}.init_from_classifier: {name!r} is not a weakly supervised experiment"
            " (only those train a classifier)"
        )
    return run if value is True else experiment_runs(cfg, name)[0]


def run_seed(cfg: dict, run: str) -> int:
    """The seed of a run, which offsets every stage's `seed` (classifier, affinitynet,
    deeplab): K of `NAME/seed-K`, the one seed of an experiment listing one, else 0."""
    experiment, seed = parse_run(run)
    if seed is not None:
        return seed
    seeds = cfg["experiments"][experiment].get("seeds", [])  # optional key: absent = no seeds
    return seeds[0] if len(seeds) == 1 else 0


def run_supervision(cfg: dict, run: str) -> str:
    """The supervision (weak / full) of a run's experiment."""
    return cfg["experiments"][parse_run(run)[0]]["supervision"]

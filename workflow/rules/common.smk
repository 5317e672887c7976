"""Config validation and the small input functions every rule uses. Logic lives in `pcam`.

Shell commands quote every path (`:q`); split and experiment names are restricted by the schema
to [A-Za-z0-9_-]; argument lists built here are joined with shlex.
"""

import json
import shlex
from pathlib import Path

from pcam.config import (
    backbone_run,
    run_supervision,
    runs,
    stage_settings,
    validate_config,
)
from pcam.data import manifest as data_manifest
from pcam.data.voc import DatasetSpec
from pcam.fingerprint import code_fingerprint, result_compute
from pcam.pipeline import all_scored_stages, scored_stages, segmentation_prefix
from pcam.summary import paper_values

validate_config(config, "config")

RESULTS = config["results_dir"]
DATA = config["dataset"]
ROOT = DATA["root"]
SPEC = DatasetSpec.from_settings(DATA)
SPLIT_DIR = f"{ROOT}/{DATA['split_dir']}"
N_SHARDS = config["compute"]["cam_shards"]
CRF_THREADS = config["compute"]["crf_threads"]
TORCH_THREADS = config["compute"]["torch_threads"]
GPUS = config["compute"]["gpus_per_job"]
EVAL = config["evaluation"]
# Runs: an experiment's name, or NAME/seed-K per seed of one listing several `seeds`. The
# `experiment` wildcard is a run's folder (results/{experiment}/...), so every rule serves both.
RUN = runs(config)
WEAK = runs(config, "weak")
LOGS = config["logs_dir"]
SCORED = {s.name: s for s in all_scored_stages()}


wildcard_constraints:
    # a name, optionally /seed-K: nothing else with a slash, so no stage path matches it
    experiment="[A-Za-z0-9][A-Za-z0-9_-]*(?:/seed-[0-9]+)?",
    split="[A-Za-z0-9_-]+",
    shard=r"\d+",
    kind="|".join(data_manifest.KINDS),


def split_list(name):
    """The split list file of a split (the demo_data rule makes it for the demo dataset)."""
    return f"{SPLIT_DIR}/{name}.txt"


def shard_dirs(experiment, stage, split):
    """Every shard directory of a per-image stage."""
    return [
        f"{RESULTS}/{experiment}/{stage}/{split}/shard-{k}-of-{N_SHARDS}"
        for k in range(N_SHARDS)
    ]


# ---------------------------------------------------------------- the dataset as an input


def manifest(split, kind):
    """Content manifest of a split written by check_data (pcam.data.manifest): what a rule
    reading that split's images (`images`) or ground truth and tags (`labels`) depends on.
    """
    return f"{RESULTS}/manifest/{split}/{kind}.tsv"


def data_fingerprint(w):
    """params of check_data: the split's content digest now (size + mtime first, hashes of
    changed files only), so an edited file re-runs the check and a touched one does not.
    """
    return data_manifest.fingerprint(
        SPEC, w.split, w.kind, Path(manifest(w.split, w.kind))
    )


def _all_checks():
    """Every check of the configured splits: both kinds, images only for the test split."""
    checks = {
        manifest(DATA[key], kind)
        for key in ("train_split", "eval_split", "val_split")
        for kind in data_manifest.KINDS
    }
    if DATA["test_split"]:
        checks.add(manifest(DATA["test_split"], "images"))
    return checks


def checked_first(*reads):
    """The checks a first training waits for beyond what it reads (`reads`), as ancient():
    every split is checked before compute is spent, and re-checking a split the training does
    not read does not re-run it."""
    return [ancient(path) for path in sorted(_all_checks() - set(reads))]


# ---------------------------------------------------------------- params


def settings(stage):
    """A params function: the experiment's merged settings of `stage`, as JSON."""
    return lambda w: json.dumps(
        stage_settings(config, w.experiment, stage), sort_keys=True
    )


def code(*modules):
    """A params value: fingerprint of the pcam modules a rule runs (Snakemake cannot see them)."""
    return code_fingerprint(*modules)


def compute_json(w, threads):
    """The whole `compute` section for the command's --compute. Taking `threads` makes this a
    derived param, which Snakemake leaves out of the params rerun trigger: worker and thread
    counts never make results stale. What does change results is in `result_keys`."""
    return COMPUTE_JSON


def result_keys(role):
    """A params value: the compute keys that change the result of a `role` rule."""
    return json.dumps(result_compute(config["compute"], role), sort_keys=True)


def state_dir(experiment, stage, settings_json):
    """Resumable training state, outside declared outputs, keyed by the stage's settings."""
    import hashlib

    key = hashlib.sha256(settings_json.encode()).hexdigest()[:12]
    return f"{RESULTS}/{experiment}/.state/{stage}-{key}"


def flag_with_files(flag, files):
    """`--flag f1 f2 ...` shell-quoted, or nothing when there are no files (one file: a str)."""
    files = [files] if isinstance(files, str) else list(files)
    return shlex.join([flag, *files]) if files else ""


DATASET_JSON = json.dumps(DATA, sort_keys=True)
COMPUTE_JSON = json.dumps(config["compute"], sort_keys=True)


def _paper_table():
    """The paper's mIoU per experiment and stage, when the dataset is VOC 2012 (not the demo)."""
    if config["demo"]["enabled"] or not SPEC.is_voc:
        return {}
    return {
        name: paper_values(
            stage_settings(config, name, "classifier"),
            stage_settings(config, name, "deeplab"),
            exp["supervision"],
        )
        for name, exp in config["experiments"].items()
    }


PAPER = _paper_table()


def classifier_init(section):
    """Input function: the classifier the backbone of `section` starts from (`backbone_run`)."""

    def init(w):
        run = backbone_run(config, w.experiment, section)
        return f"{RESULTS}/{run}/classifier/model.pt" if run else []

    return init


def classifier_import(w):
    """`classifier.from_checkpoint`: the imported model train_classifier adopts, an input so
    that a changed file re-runs it and its descendants; none when the classifier is trained.
    """
    return stage_settings(config, w.experiment, "classifier")["from_checkpoint"] or []


def is_full(run):
    return run_supervision(config, run) == "full"


def required_masks(w):
    """check-data's --require-masks: a full-supervision experiment trains on every train mask."""
    needed = w.kind == "labels" and w.split == DATA["train_split"]
    if needed and any(is_full(name) for name in RUN):
        return flag_with_files("--require-masks", w.split)
    return ""


def deeplab_labels(w):
    """Pseudo-label shards for weak experiments; none (ground truth) for full supervision."""
    if is_full(w.experiment):
        return []
    return shard_dirs(w.experiment, "pseudo_labels", DATA["train_split"])


def deeplab_data(w):
    """DeepLab reads the training images, and the ground-truth masks under full supervision."""
    kinds = ("images", "labels") if is_full(w.experiment) else ("images",)
    return [manifest(DATA["train_split"], kind) for kind in kinds]


def deeplab_checks(w):
    """`checked_first` for DeepLab: the full experiment's DeepLab trains before any classifier."""
    return checked_first(*deeplab_data(w))


# ---------------------------------------------------------------- evaluation (pcam.pipeline)


def scored(w, name):
    """The stage-table entry an evaluation scores: `name`, or the `stage` wildcard."""
    return SCORED[name or w.stage]


def eval_pred(name=None):
    """Input function: the shards an evaluation scores (the table's source folder and split)."""

    def pred(w):
        stage = scored(w, name)
        return shard_dirs(w.experiment, stage.source, DATA[stage.source_split])

    return pred


def eval_truth(name=None):
    """Input function: the labels manifest of the split an evaluation scores."""
    return lambda w: manifest(DATA[scored(w, name).split], "labels")


def eval_args(name=None):
    """A params function: `--split`, `--every` and, for score maps, the score key, the
    `evaluation` threshold the table names and the sweep, as one shell-quoted string."""

    def args(w):
        stage = scored(w, name)
        argv = ["--split", DATA[stage.split], "--every", str(EVAL["every"])]
        if stage.aug_masks:
            argv.append("--aug-masks")
        if stage.score_key:
            argv += ["--score-key", stage.score_key]
            argv += ["--threshold", str(EVAL[stage.threshold])]
            argv += ["--sweep", *(str(v) for v in EVAL["thresholds"])]
        return shlex.join(argv)

    return args


# eval_deeplab's stages: every segmentation network's rows (the val-scored ones, pcam.pipeline);
# eval_pseudo_labels': the pseudo-labels' rows (on the evaluation split and on all training images).
SEGMENTATION_STAGES = "|".join(s.name for s in all_scored_stages() if s.on_val)
PSEUDO_LABEL_STAGES = "|".join(
    s.name for s in all_scored_stages() if s.source == "pseudo_labels"
)


def eval_csvs(experiment):
    """Evaluation CSVs of one experiment, named after the summary's stages (pcam.pipeline):
    its segmentation rows carry its network's prefix (`deeplab*` for DeepLabV3+)."""
    supervision = run_supervision(config, experiment)
    prefix = segmentation_prefix(stage_settings(config, experiment, "deeplab"))
    return [
        f"{RESULTS}/{experiment}/eval/{stage.name}.csv"
        for stage in scored_stages(supervision, prefix)
    ]


ALL_EVALS = [csv for name in RUN for csv in eval_csvs(name)]

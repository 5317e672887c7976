"""Config validation and the small input functions every rule uses. Logic lives in `pcam`."""

import json
import os
from pathlib import Path

from pcam.config import experiments, stage_settings, validate_config
from pcam.data.voc import DatasetSpec
from pcam.fingerprint import code_fingerprint
from pcam.pipeline import scored_stages
from pcam.summary import paper_values

validate_config(config, "config")

RESULTS = config.get("results_dir", "results")
DATA = config["dataset"]
ROOT = DATA["root"]
SPLIT_DIR = f"{ROOT}/{DATA['split_dir']}"
N_SHARDS = config["compute"]["cam_shards"]
CRF_THREADS = config["compute"]["crf_threads"]
GPUS = config["compute"]["gpus_per_job"]
RUN = experiments(config)
WEAK = experiments(config, "weak")
LOGS = "logs"


wildcard_constraints:
    experiment="[A-Za-z0-9][A-Za-z0-9_-]*",
    split="[A-Za-z0-9_-]+",
    shard=r"\d+",


def split_list(name):
    """The split list file of a split (the demo_data rule makes it for the demo dataset)."""
    return f"{SPLIT_DIR}/{name}.txt"


def shard_dirs(experiment, stage, split):
    """Every shard directory of a per-image stage."""
    return [
        f"{RESULTS}/{experiment}/{stage}/{split}/shard-{k}-of-{N_SHARDS}"
        for k in range(N_SHARDS)
    ]


def settings(stage):
    """A params function: the experiment's merged settings of `stage`, as JSON."""
    return lambda w: json.dumps(
        stage_settings(config, w.experiment, stage), sort_keys=True
    )


def affinitynet_init(w):
    """The experiment's classifier, when AffinityNet's frozen backbone starts from it."""
    if stage_settings(config, w.experiment, "affinitynet").get("init_from_classifier"):
        return f"{RESULTS}/{w.experiment}/classifier/model.pt"
    return []


def code(*modules):
    """A params value: fingerprint of the pcam modules a rule runs (Snakemake cannot see them)."""
    return code_fingerprint(*modules)


def state_dir(experiment, stage, settings_json):
    """Resumable training state, outside declared outputs, keyed by the stage's settings."""
    import hashlib

    key = hashlib.sha256(settings_json.encode()).hexdigest()[:12]
    return f"{RESULTS}/{experiment}/.state/{stage}-{key}"


DATASET_JSON = json.dumps(DATA, sort_keys=True)
COMPUTE_JSON = json.dumps(config["compute"], sort_keys=True)


def _paper_table():
    """The paper's mIoU per experiment and stage, when the dataset is VOC 2012 (not the demo)."""
    if config["demo"]["enabled"] or not DatasetSpec.from_settings(DATA).is_voc:
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


def deeplab_labels(w):
    """Pseudo-label shards for weak experiments; none (ground truth) for full supervision."""
    if config["experiments"][w.experiment]["supervision"] == "full":
        return []
    return shard_dirs(w.experiment, "pseudo_labels", DATA["train_split"])


def eval_deeplab_inputs(w):
    """Prediction shards of the val split, with or without dCRF as the stage name says."""
    kind = "deeplab_pred_crf" if w.dl_stage.endswith("_crf") else "deeplab_pred"
    return shard_dirs(w.experiment, kind, DATA["val_split"])


def eval_csvs(experiment):
    """Evaluation CSVs of one experiment, named after the summary's stages (pcam.pipeline)."""
    supervision = config["experiments"][experiment]["supervision"]
    return [
        f"{RESULTS}/{experiment}/eval/{stage.name}.csv"
        for stage in scored_stages(supervision)
    ]


ALL_EVALS = [csv for name in RUN for csv in eval_csvs(name)]

"""The stage table: the one list of the pipeline's config sections and scored stages.

The config (which sections an experiment may override), the summary (row order, split of each
row), the workflow's input functions (which shards an evaluation reads) and the report read it
from here, so adding a stage is one entry in this module.
"""

from __future__ import annotations

from dataclasses import dataclass

# Config sections an experiment may override, in pipeline order.
SECTIONS = (
    "classifier",
    "cams",
    "affinity_labels",
    "affinitynet",
    "rw",
    "pseudo_labels",
    "deeplab",
    "deeplab_inference",
)

SUPERVISIONS = ("weak", "full")

# The sections a fully supervised experiment uses (it trains the segmentation network on
# ground-truth masks, so no CAM, affinity or random-walk stage runs), and the trained networks.
SEGMENTATION_SECTIONS = ("deeplab", "deeplab_inference")
TRAINED_SECTIONS = ("classifier", "affinitynet", "deeplab")


def stage_sections(supervision: str) -> list[str]:
    """The config sections an experiment of `supervision` runs, in pipeline order."""
    if supervision not in SUPERVISIONS:
        raise ValueError(f"unknown supervision {supervision!r} (known: {SUPERVISIONS})")
    return [s for s in SECTIONS if supervision == "weak" or s in SEGMENTATION_SECTIONS]


def trained_sections(supervision: str) -> list[str]:
    """The networks an experiment of `supervision` trains (each writes `{section}/curve.csv`)."""
    return [s for s in stage_sections(supervision) if s in TRAINED_SECTIONS]


@dataclass(frozen=True)
class ScoredStage:
    """A stage whose per-image outputs are scored into `results/{experiment}/eval/{name}.csv`.

    source: the output folder scored (`results/{experiment}/{source}/{split}/shard-*`).
    source_split / split: dataset keys of the split the shards cover and the split scored.
    score_key: array of the `.npz` score maps scored with a background threshold (None: the
    outputs are label PNGs). threshold: the `evaluation` key holding that threshold.
    aug_masks: score against the training masks (SegmentationClassAug, else SegmentationClass;
    VOC: SBD's masks of train_aug) instead of the evaluation masks (SegmentationClass).
    """

    name: str
    supervision: str
    source: str
    source_split: str
    split: str
    score_key: str | None = None
    threshold: str | None = None
    aug_masks: bool = False

    @property
    def on_train(self) -> bool:
        """True for the stages scored on the training images (eval_split), Table 2 style."""
        return self.split == "eval_split"

    @property
    def on_val(self) -> bool:
        """True for the segmentation network's stages, scored on val."""
        return self.split == "val_split"


def segmentation_stages(supervision: str, prefix: str = "deeplab") -> list[ScoredStage]:
    """The segmentation network's rows: `{prefix}` and `{prefix}_crf` (weak) or
    `{prefix}_full` and `{prefix}_full_crf` (full supervision), scored on val."""
    base = prefix if supervision == "weak" else f"{prefix}_full"
    return [
        ScoredStage(base, supervision, "deeplab_pred", "val_split", "val_split"),
        ScoredStage(f"{base}_crf", supervision, "deeplab_pred_crf", "val_split", "val_split"),
    ]


WEAK_LABEL_STAGES = [
    ScoredStage("cam", "weak", "cams", "train_split", "eval_split", "hr_cam", "cam_threshold"),
    ScoredStage("rw", "weak", "rw", "train_split", "eval_split", "rw", "rw_threshold"),
    ScoredStage("rw_crf", "weak", "pseudo_labels", "train_split", "eval_split"),
    # NOT in the paper: the pseudo-labels on every image the segmentation network trains on
    # (Table 2 scores the `train` subset only; VOC: 1,464 of train_aug's 10,582 images)
    ScoredStage(
        "rw_crf_aug", "weak", "pseudo_labels", "train_split", "train_split", aug_masks=True
    ),
]

# The summary's `split` column: the `summarize --splits` key of each stage's split.
SPLIT_ROLES = {"eval_split": "train", "val_split": "val", "train_split": "aug"}


def scored_stages(supervision: str, prefix: str = "deeplab") -> list[ScoredStage]:
    """Every scored stage of an experiment of `supervision`, in pipeline order."""
    if supervision not in SUPERVISIONS:
        raise ValueError(f"unknown supervision {supervision!r} (known: {SUPERVISIONS})")
    labels = WEAK_LABEL_STAGES if supervision == "weak" else []
    return [*labels, *segmentation_stages(supervision, prefix)]


def all_scored_stages() -> list[ScoredStage]:
    """Every scored stage of every supervision and segmentation network, each name once, in
    summary row order: per supervision, the label stages, then each network's rows (the
    paper's `deeplab*` first)."""
    stages: dict[str, ScoredStage] = {}
    for supervision in SUPERVISIONS:
        for prefix in segmentation_prefixes():
            for stage in scored_stages(supervision, prefix):
                stages.setdefault(stage.name, stage)
    return list(stages.values())


def stage_order() -> list[str]:
    """Row order of the summary: every stage name of every supervision, pipeline order."""
    return [s.name for s in all_scored_stages()]


def split_roles() -> dict[str, str]:
    """Each scored stage's name -> its `summarize --splits` key ("train", "val" or "aug")."""
    return {s.name: SPLIT_ROLES[s.split] for s in all_scored_stages()}


def train_stage_names() -> set[str]:
    """Names of the stages scored on the training images (the rest are scored on val)."""
    return {s.name for s in all_scored_stages() if s.on_train}


def segmentation_prefix(settings: dict) -> str:
    """The stage-name prefix of an experiment's segmentation rows from its `deeplab` section:
    "deeplab" for DeepLabV3+ (the paper's network, the names users script against), else the
    network's own name, so another network adds rows (`segformer`, `segformer_crf`, ...)
    instead of renaming them. For `scored_stages(supervision, prefix)`."""
    network = settings["network"]
    return "deeplab" if network == "deeplabv3plus" else network


def segmentation_prefixes() -> list[str]:
    """The row prefix of every segmentation network the config accepts (the schema's
    `deeplab.network` names, the paper's first): `deeplab`, then e.g. `segformer`."""
    from pcam.config import load_schema  # pcam.config imports this module

    networks = load_schema()["$defs"]["deeplab"]["properties"]["network"]["enum"]
    return [segmentation_prefix({"network": name}) for name in networks]

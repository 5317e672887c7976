"""The `pcam` command: one sub-command per pipeline stage.

This module maps arguments onto stage functions and nothing else: `COMMANDS` holds one row per
sub-command (handler, help, options; `pcam.cli_common`), and the stage commands share one handler
(`_stage`) that differs only in the stage function and the arguments it takes. Stage modules are
imported lazily, so CPU-only stages (CRF, evaluation, data checks) never pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcam import cli_results
from pcam.cli_common import Command, Handler, Option, add_commands, dataset_spec, json_opt, opt
from pcam.errors import PcamError
from pcam.logs import setup_logging

if TYPE_CHECKING:  # imported lazily where used: building the parser imports no torch
    from pcam.inference import ShardRun
    from pcam.train import TrainingJob

log = logging.getLogger("pcam")

Input = Callable[[argparse.Namespace], Any]  # one keyword argument of a stage function


def _arg(dest: str) -> Input:
    """The option's value as parsed."""
    return lambda a: getattr(a, dest)


def _path(dest: str) -> Input:
    """The option's value as a Path, or None when it is not given."""
    return lambda a: Path(getattr(a, dest)) if getattr(a, dest) else None


def _paths(dest: str) -> Input:
    """The option's values as Paths, or None when it is not given."""
    return lambda a: [Path(p) for p in getattr(a, dest)] if getattr(a, dest) else None


def _job(a: argparse.Namespace) -> TrainingJob:
    """Where a training writes (--out-model, --out-curve, --state-dir, --state-inputs)."""
    from pcam.train import TrainingJob

    paths = (a.out_model, a.out_curve, a.state_dir)
    return TrainingJob(*(Path(p) for p in paths), tuple(Path(p) for p in a.state_inputs))


def _compute(a: argparse.Namespace) -> dict:
    """Validate the --compute JSON against the schema's `compute` section before anything runs."""
    from pcam.config import validate_compute

    return validate_compute(a.compute)


def _shard_run(a: argparse.Namespace) -> ShardRun:
    """A per-image inference job: --model, --split, --shard, --num-shards and --compute."""
    from pcam.inference import ShardRun

    return ShardRun(Path(a.model), a.split, a.shard, a.num_shards, _compute(a))


def _stage(target: str, section: str, **inputs: Input) -> Handler:
    """The handler of a stage command: `target(dataset, settings, **{name: input(args)})`.

    target: "module:function", imported when the command runs. section: the schema section that
    validates --settings before anything runs.
    """

    def handler(a: argparse.Namespace) -> int:
        from pcam.config import validate_stage

        module, _, function = target.partition(":")
        run = getattr(importlib.import_module(module), function)
        run(
            dataset_spec(a),
            validate_stage(section, a.settings),
            **{k: f(a) for k, f in inputs.items()},
        )
        return 0

    return handler


def _demo_data(a: argparse.Namespace) -> int:
    from pcam.data.demo import generate, render_preview

    generate(Path(a.out), n_train=a.n_train, n_val=a.n_val, size=a.size, seed=a.seed, style=a.style)
    if a.preview:
        render_preview(Path(a.out), Path(a.preview))
    return 0


def _check_data(a: argparse.Namespace) -> int:
    from pcam.data.check import check_dataset, missing_training_masks, write_report

    if a.manifest and (len(a.split or []) != 1 or not a.kind):
        raise PcamError("--manifest needs exactly one --split and a --kind")
    spec = dataset_spec(a)
    problems = check_dataset(spec, a.split or None, training_splits=a.training_split, kind=a.kind)
    problems += missing_training_masks(spec, a.require_masks or [])
    if a.report:
        write_report(problems, Path(a.report))
    for p in problems:
        log.error("%s", p)
    if problems:
        where = f"; report: {a.report}" if a.report else ""
        log.error("check-data: %d problem(s) in %s%s", len(problems), spec.root, where)
        return 1
    if a.manifest:
        from pcam.data.manifest import scan, write_manifest

        write_manifest(scan(spec, a.split[0], a.kind), Path(a.manifest))
    print(f"check-data: {spec.root} is consistent")
    return 0


def _convert_coco(a: argparse.Namespace) -> int:
    from pcam.data.coco import CocoPart, convert_coco

    parts = [CocoPart(a.split, Path(a.annotations), Path(a.images))]
    if bool(a.val_annotations) != bool(a.val_images):
        raise PcamError("give both --val-annotations and --val-images, or neither")
    if a.val_annotations:
        parts.append(CocoPart(a.val_split, Path(a.val_annotations), Path(a.val_images)))
    for report in convert_coco(Path(a.out), parts, workers=a.workers):
        print(f"convert-coco: {report}")
    return 0


def _import_checkpoint(a: argparse.Namespace) -> int:
    from pcam.models.official import import_checkpoint

    n = import_checkpoint(Path(a.official), a.kind, a.backbone, Path(a.out))
    print(f"import-checkpoint: {n} tensors placed; pcam {a.kind} model written to {a.out}")
    return 0


def _prepare_voc(a: argparse.Namespace) -> int:
    from pcam.data.prepare_voc import SUPERVISIONS, prepare_voc, supervisions_of

    chosen = supervisions_of([Path(p) for p in a.configfile]) if a.configfile else SUPERVISIONS
    report = prepare_voc(Path(a.root), Path(a.sbd) if a.sbd else None, chosen, a.workers)
    for line in report.lines():
        print(f"prepare-voc: {line}")
    return 0 if report.complete else 1


def _evaluate(a: argparse.Namespace) -> int:
    from pcam.evaluate import evaluate_predictions, write_csv

    spec = dataset_spec(a)
    thresholds = None
    if a.sweep:
        start, stop, step = a.sweep
        n = int(round((stop - start) / step)) + 1
        thresholds = [round(start + i * step, 6) for i in range(n)]
    result = evaluate_predictions(
        spec,
        a.split,
        [Path(p) for p in a.pred],
        score_key=a.score_key,
        threshold=a.threshold,
        thresholds=thresholds,
        every=a.every,
        workers=a.workers,
        aug_masks=a.aug_masks,
    )
    write_csv(result, Path(a.out))
    print(result.describe())
    return 0


# --------------------------------------------------------------------------- option groups

STAGE = (
    json_opt("--dataset", required=True, help="dataset settings (JSON)"),
    json_opt("--settings", required=True, help="stage settings (JSON)"),
)
COMPUTE = (json_opt("--compute", required=True, help="compute settings (JSON)"),)
SHARD = (
    opt("--split", required=True, help="split list name, e.g. train_aug"),
    opt("--shard", type=int, default=0, help="this job's shard index (0-based)"),
    opt("--num-shards", type=int, default=1, help="number of shards of the list"),
    opt("--out", required=True, help="output directory of this shard"),
)
INIT_FROM = opt("--init-from", help="trained classifier whose backbone starts the backbone")
TRAINING = (
    opt("--out-model", required=True, help="final model file (declared output)"),
    opt("--out-curve", required=True, help="training-curve CSV (declared output)"),
    opt("--state-dir", required=True, help="resumable checkpoints (not an output)"),
    opt(
        "--state-inputs",
        nargs="+",
        default=[],
        metavar="PATH",
        help="files or directories whose content also keys the resumable state "
        "(e.g. the dataset manifest): a change starts the training from step 0",
    ),
)
ROOT_OR_DATASET = (
    opt("--root", help="dataset root"),
    json_opt("--dataset", help="dataset settings (JSON) instead of --root"),
)
CRF_WORKERS = opt("--workers", type=int, default=1, help="CRF processes")


def _model(what: str) -> Option:
    """--model: the trained network a per-image stage runs."""
    return opt("--model", required=True, help=what)


def _dirs(flag: str, what: str, required: bool = True) -> Option:
    """An option naming one or more shard directories."""
    return opt(flag, nargs="+", required=required, help=what)


def _crf_labels(stage: str, inputs: str, option: str, what: str, help_: str) -> Command:
    """A CRF label stage (`pcam.stages.{stage}.make_{stage}`): score-map shard directories
    (--{option}, the function's `inputs` argument) in, one shard of label PNGs out."""
    return Command(
        _stage(
            f"pcam.stages.{stage}:make_{stage}", stage, **{inputs: _paths(option)},
            split=_arg("split"), shard=_arg("shard"), num_shards=_arg("num_shards"),
            out_dir=_path("out"), workers=_arg("workers"),
        ),
        help_,
        (*STAGE, _dirs(f"--{option}", what), CRF_WORKERS, *SHARD),
    )  # fmt: skip


def _label_training(module: str, help_: str, labels: Option) -> Command:
    """A training on label shard directories (`pcam.stages.{module}.train_{module}`, section
    `module`): --labels, and --init-from, the classifier its backbone may start from."""
    return Command(
        _stage(
            f"pcam.stages.{module}:train_{module}", module, compute=_compute,
            label_dirs=_paths("labels"), init_model=_path("init_from"), job=_job,
        ),
        help_,
        (*STAGE, *COMPUTE, labels, INIT_FROM, *TRAINING),
    )  # fmt: skip


# --------------------------------------------------------------------------- the table

COMMANDS: dict[str, Command] = {
    "demo-data": Command(_demo_data, "generate the procedural demo dataset in VOC layout", (
        opt("--out", required=True, help="dataset root to write"),
        opt("--n-train", type=int, required=True, help="images in train_aug"),
        opt("--n-val", type=int, required=True, help="images in val"),
        opt("--size", type=int, required=True, help="image side in pixels"),
        opt("--seed", type=int, required=True, help="generator seed"),
        opt("--style", required=True, help="visual grammar: parts or tools"),
        opt("--preview", help="also render a preview grid PNG here"),
    )),
    "check-data": Command(_check_data, "validate a VOC-layout dataset before compute is spent", (
        *ROOT_OR_DATASET,
        opt("--split", action="append", help="split to check (repeatable; default all)"),
        opt("--training-split", action="append", default=None,
            help="splits that must not hold images without labels (default: train, train_aug)"),
        opt("--require-masks", action="append", metavar="SPLIT",
            help="every image of SPLIT needs a training mask (full supervision; repeatable)"),
        opt("--report", help="CSV report of every problem found"),
        opt("--kind", choices=["images", "labels"],
            help="check only what readers of images or of labels need (default: both)"),
        opt("--manifest", help="write the content manifest of the split (needs --kind)"),
    )),
    "convert-coco": Command(_convert_coco, "convert MS-COCO instance annotations to VOC layout", (
        opt("--annotations", required=True, help="instances_*.json of --split"),
        opt("--images", required=True, help="image folder of --split (e.g. train2014/)"),
        opt("--out", required=True, help="VOC-layout root to write"),
        opt("--split", default="train", help="split list name for --annotations"),
        opt("--val-annotations", help="instances_*.json of the validation split"),
        opt("--val-images", help="image folder of the validation split"),
        opt("--val-split", default="val", help="split list name for --val-annotations"),
        opt("--workers", type=int, default=1, help="processes rasterising masks"),
    )),
    "prepare-voc": Command(_prepare_voc, "add train_aug and SBD masks to a VOC 2012 tree", (
        opt("--root", required=True, help="VOCdevkit/VOC2012 folder"),
        opt("--sbd", help="SBD's dataset folder (cls/*.mat): SegmentationClassAug PNGs"),
        opt("--configfile", action="append",
            help="config files of the run (as for snakemake): report what its experiments lack"),
        opt("--workers", type=int, default=1, help="processes converting SBD masks"),
    )),
    "import-checkpoint": Command(
        _import_checkpoint, "official Puzzle-CAM weights -> a pcam model", (
            opt("--official", required=True, help="state dict saved by the official code"),
            opt("--kind", required=True, choices=["classifier", "affinitynet", "deeplab"],
                help="network"),
            opt("--backbone", required=True, help="our timm name, e.g. resnet50, resnest101e"),
            opt("--out", required=True, help="pcam model file to write"),
        ),
    ),
    "evaluate": Command(_evaluate, "score label PNGs or score maps against ground truth", (
        *ROOT_OR_DATASET,
        opt("--split", required=True, help="split list to score"),
        _dirs("--pred", "prediction directories (shards)"),
        opt("--out", required=True, help="CSV to write"),
        opt("--score-key", help="score maps: array name in the .npz (hr_cam, rw)"),
        opt("--threshold", type=float, help="score maps: background threshold"),
        opt("--sweep", type=float, nargs=3, metavar=("START", "STOP", "STEP"),
            help="score maps: background-threshold sweep"),
        opt("--every", type=int, default=1, help="score every N-th image (official: 8)"),
        opt("--workers", type=int, default=1, help="worker processes"),
        opt("--aug-masks", action="store_true",
            help="score against the training masks (SegmentationClassAug, else SegmentationClass)"),
    )),
    "train-classifier": Command(
        _stage("pcam.stages.classifier:train_classifier", "classifier",
               compute=_compute, job=_job),
        "train the Puzzle-CAM classifier",
        (*STAGE, *COMPUTE, *TRAINING),
    ),
    "make-cams": Command(
        _stage("pcam.stages.cams:make_cams", "cams", run=_shard_run, out_dir=_path("out")),
        "dump multi-scale CAMs for one shard of a split",
        (*STAGE, *COMPUTE, _model("trained classifier"), *SHARD),
    ),
    "make-affinity-labels": _crf_labels(
        "affinity_labels", "cam_dirs", "cams", "CAM shard directories",
        "affinity labels from CAMs + dCRF",
    ),
    "train-affinitynet": _label_training(
        "affinitynet", "train AffinityNet on affinity labels",
        _dirs("--labels", "affinity-label shard directories"),
    ),
    "make-rw": Command(
        _stage("pcam.stages.rw:make_rw", "rw", run=_shard_run, cam_dirs=_paths("cams"),
               out_dir=_path("out")),
        "random-walk refinement of CAMs for one shard",
        (*STAGE, *COMPUTE, _model("trained AffinityNet"),
         _dirs("--cams", "CAM shard directories"), *SHARD),
    ),
    "make-pseudo-labels": _crf_labels(
        "pseudo_labels", "rw_dirs", "rw", "random-walk shard directories",
        "pseudo-labels from RW maps + dCRF",
    ),
    "train-deeplab": _label_training(
        "deeplab", "train DeepLabV3+ on pseudo-labels or ground truth",
        _dirs("--labels", "label shard directories (omit: ground truth)", required=False),
    ),
    "infer-deeplab": Command(
        _stage("pcam.stages.segmentation:infer_deeplab", "deeplab_inference", run=_shard_run,
               out_dir=_path("out"), out_crf_dir=_path("out_crf"), workers=_arg("workers"),
               server_format=_arg("server_format")),
        "multi-scale DeepLab inference for one shard",
        (*STAGE, *COMPUTE, _model("trained DeepLab"),
         opt("--out-crf", help="also write dCRF-refined predictions here"), CRF_WORKERS,
         opt("--server-format", action="store_true",
             help="write the VOC evaluation server's layout (test split)"),
         *SHARD),
    ),
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The full `pcam` parser: top-level options, then one sub-parser per row of `COMMANDS` and
    of `pcam.cli_results.COMMANDS`."""
    parser = argparse.ArgumentParser(prog="pcam", description=__doc__.splitlines()[0])
    parser.add_argument("--log-file", help="also write log records to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(sub, {**COMMANDS, **cli_results.COMMANDS})
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pcam` console script.

    A job given `--compute` (the pipeline's torch jobs) leaves a run record when it succeeds
    (`pcam.provenance.record_path` of its output): device, precision, times, host, commit.
    """
    from pcam.provenance import now, write_run_record

    args = build_parser().parse_args(argv)
    setup_logging(args.log_file, args.verbose, args.command)
    started = now()
    try:
        code = args.handler(args)
    except PcamError as exc:
        log.error("%s", exc)
        print(f"pcam {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception:
        log.exception("pcam %s: unexpected error", args.command)  # the traceback, in the log too
        return 1
    if code == 0 and getattr(args, "compute", None):
        output = getattr(args, "out_model", None) or args.out
        write_run_record(args.command, output, args.compute, started)
    return code

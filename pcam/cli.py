"""The `pcam` command: one sub-command per pipeline stage.

This module maps arguments onto stage functions and nothing else. Stage modules are imported
lazily inside each handler, so CPU-only stages (CRF, evaluation, data checks) never pay for
importing torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from pcam.errors import PcamError
from pcam.logs import setup_logging

log = logging.getLogger("pcam")


def _json(text: str) -> dict:
    """Parse a JSON object given on the command line (settings passed by a rule's params)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _dataset(args: argparse.Namespace):
    """The DatasetSpec from --dataset JSON, or from --root alone (dataset.json or VOC)."""
    from pcam.data.voc import DatasetSpec

    settings = dict(getattr(args, "dataset", None) or {})
    if getattr(args, "root", None):
        settings["root"] = args.root
    if "root" not in settings:
        raise PcamError("give --root DIR or --dataset JSON with a 'root' key")
    return DatasetSpec.from_settings(settings)


def _job(args: argparse.Namespace):
    """Where a training writes (--out-model, --out-curve, --state-dir, --state-inputs)."""
    from pcam.train import TrainingJob

    return TrainingJob(
        Path(args.out_model),
        Path(args.out_curve),
        Path(args.state_dir),
        tuple(Path(p) for p in args.state_inputs),
    )


def _settings(args: argparse.Namespace, stage: str) -> dict:
    """Validate a stage's --settings JSON against its schema section before anything runs."""
    from pcam.config import validate_stage

    return validate_stage(stage, args.settings)


def _compute(args: argparse.Namespace) -> dict:
    """Validate the --compute JSON against the schema's `compute` section before anything runs."""
    from pcam.config import validate_compute

    return validate_compute(args.compute)


def _shard_run(args: argparse.Namespace):
    """A per-image inference job: --model, --split, --shard, --num-shards and --compute."""
    from pcam.inference import ShardRun

    return ShardRun(Path(args.model), args.split, args.shard, args.num_shards, _compute(args))


# --------------------------------------------------------------------------- handlers


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
    spec = _dataset(a)
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

    spec = _dataset(a)
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
    )
    write_csv(result, Path(a.out))
    print(result.describe())
    return 0


def _train_classifier(a: argparse.Namespace) -> int:
    from pcam.stages.classifier import train_classifier

    train_classifier(_dataset(a), _settings(a, "classifier"), compute=_compute(a), job=_job(a))
    return 0


def _make_cams(a: argparse.Namespace) -> int:
    from pcam.stages.cams import make_cams

    make_cams(_dataset(a), _settings(a, "cams"), _shard_run(a), Path(a.out))
    return 0


def _make_affinity_labels(a: argparse.Namespace) -> int:
    from pcam.stages.affinity_labels import make_affinity_labels

    make_affinity_labels(
        _dataset(a),
        _settings(a, "affinity_labels"),
        cam_dirs=[Path(p) for p in a.cams],
        split=a.split,
        shard=a.shard,
        num_shards=a.num_shards,
        out_dir=Path(a.out),
        workers=a.workers,
    )
    return 0


def _train_affinitynet(a: argparse.Namespace) -> int:
    from pcam.stages.affinitynet import train_affinitynet

    train_affinitynet(
        _dataset(a),
        _settings(a, "affinitynet"),
        compute=_compute(a),
        label_dirs=[Path(p) for p in a.labels],
        init_model=Path(a.init_from) if a.init_from else None,
        job=_job(a),
    )
    return 0


def _make_rw(a: argparse.Namespace) -> int:
    from pcam.stages.rw import make_rw

    make_rw(_dataset(a), _settings(a, "rw"), _shard_run(a), [Path(p) for p in a.cams], Path(a.out))
    return 0


def _make_pseudo_labels(a: argparse.Namespace) -> int:
    from pcam.stages.pseudo_labels import make_pseudo_labels

    make_pseudo_labels(
        _dataset(a),
        _settings(a, "pseudo_labels"),
        rw_dirs=[Path(p) for p in a.rw],
        split=a.split,
        shard=a.shard,
        num_shards=a.num_shards,
        out_dir=Path(a.out),
        workers=a.workers,
    )
    return 0


def _train_deeplab(a: argparse.Namespace) -> int:
    from pcam.stages.deeplab import train_deeplab

    train_deeplab(
        _dataset(a),
        _settings(a, "deeplab"),
        compute=_compute(a),
        label_dirs=[Path(p) for p in a.labels] if a.labels else None,
        job=_job(a),
    )
    return 0


def _infer_deeplab(a: argparse.Namespace) -> int:
    from pcam.stages.segmentation import infer_deeplab

    infer_deeplab(
        _dataset(a),
        _settings(a, "deeplab_inference"),
        _shard_run(a),
        out_dir=Path(a.out),
        out_crf_dir=Path(a.out_crf) if a.out_crf else None,
        workers=a.workers,
        server_format=a.server_format,
    )
    return 0


# --------------------------------------------------------------------------- parser


def _shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", required=True, help="split list name, e.g. train_aug")
    p.add_argument("--shard", type=int, default=0, help="this job's shard index (0-based)")
    p.add_argument("--num-shards", type=int, default=1, help="number of shards of the list")
    p.add_argument("--out", required=True, help="output directory of this shard")


def _stage_args(p: argparse.ArgumentParser, *, compute: bool = True) -> None:
    p.add_argument("--dataset", type=_json, required=True, help="dataset settings (JSON)")
    p.add_argument("--settings", type=_json, required=True, help="stage settings (JSON)")
    if compute:
        p.add_argument("--compute", type=_json, required=True, help="compute settings (JSON)")


def _training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-model", required=True, help="final model file (declared output)")
    p.add_argument("--out-curve", required=True, help="training-curve CSV (declared output)")
    p.add_argument("--state-dir", required=True, help="resumable checkpoints (not an output)")
    p.add_argument(
        "--state-inputs",
        nargs="+",
        default=[],
        metavar="PATH",
        help="files or directories whose content also keys the resumable state "
        "(e.g. the dataset manifest): a change starts the training from step 0",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full `pcam` argument parser."""
    parser = argparse.ArgumentParser(prog="pcam", description=__doc__.splitlines()[0])
    parser.add_argument("--log-file", help="also write log records to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {}

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str):
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        handlers[name] = handler
        return p

    p = add("demo-data", _demo_data, "generate the procedural demo dataset in VOC layout")
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--n-train", type=int, required=True, help="images in train_aug")
    p.add_argument("--n-val", type=int, required=True, help="images in val")
    p.add_argument("--size", type=int, required=True, help="image side in pixels")
    p.add_argument("--seed", type=int, required=True, help="generator seed")
    p.add_argument("--style", required=True, help="visual grammar: parts or tools")
    p.add_argument("--preview", help="also render a preview grid PNG here")

    p = add("check-data", _check_data, "validate a VOC-layout dataset before compute is spent")
    p.add_argument("--root", help="dataset root")
    p.add_argument("--dataset", type=_json, help="dataset settings (JSON) instead of --root")
    p.add_argument("--split", action="append", help="split to check (repeatable; default all)")
    p.add_argument(
        "--training-split",
        action="append",
        default=None,
        help="splits that must not hold images without labels (default: train, train_aug)",
    )
    p.add_argument(
        "--require-masks",
        action="append",
        metavar="SPLIT",
        help="every image of SPLIT needs a training mask (full supervision; repeatable)",
    )
    p.add_argument("--report", help="CSV report of every problem found")
    p.add_argument(
        "--kind",
        choices=["images", "labels"],
        help="check only what readers of images or of labels need (default: both)",
    )
    p.add_argument("--manifest", help="write the content manifest of the split (needs --kind)")

    p = add("convert-coco", _convert_coco, "convert MS-COCO instance annotations to VOC layout")
    p.add_argument("--annotations", required=True, help="instances_*.json of --split")
    p.add_argument("--images", required=True, help="image folder of --split (e.g. train2014/)")
    p.add_argument("--out", required=True, help="VOC-layout root to write")
    p.add_argument("--split", default="train", help="split list name for --annotations")
    p.add_argument("--val-annotations", help="instances_*.json of the validation split")
    p.add_argument("--val-images", help="image folder of the validation split")
    p.add_argument("--val-split", default="val", help="split list name for --val-annotations")
    p.add_argument("--workers", type=int, default=1, help="processes rasterising masks")

    p = add("prepare-voc", _prepare_voc, "add train_aug and SBD masks to a VOC 2012 tree")
    p.add_argument("--root", required=True, help="VOCdevkit/VOC2012 folder")
    p.add_argument("--sbd", help="SBD's dataset folder (cls/*.mat): SegmentationClassAug PNGs")
    p.add_argument(
        "--configfile",
        action="append",
        help="config files of the run (as for snakemake): report what its experiments lack",
    )
    p.add_argument("--workers", type=int, default=1, help="processes converting SBD masks")

    p = add("import-checkpoint", _import_checkpoint, "official Puzzle-CAM weights -> a pcam model")
    p.add_argument("--official", required=True, help="state dict saved by the official code")
    p.add_argument(
        "--kind", required=True, choices=["classifier", "affinitynet", "deeplab"], help="network"
    )
    p.add_argument("--backbone", required=True, help="our timm name, e.g. resnet50, resnest101e")
    p.add_argument("--out", required=True, help="pcam model file to write")

    p = add("evaluate", _evaluate, "score label PNGs or score maps against ground truth")
    p.add_argument("--root", help="dataset root")
    p.add_argument("--dataset", type=_json, help="dataset settings (JSON) instead of --root")
    p.add_argument("--split", required=True, help="split list to score")
    p.add_argument("--pred", nargs="+", required=True, help="prediction directories (shards)")
    p.add_argument("--out", required=True, help="CSV to write")
    p.add_argument("--score-key", help="score maps: array name in the .npz (hr_cam, rw)")
    p.add_argument("--threshold", type=float, help="score maps: background threshold")
    p.add_argument(
        "--sweep",
        type=float,
        nargs=3,
        metavar=("START", "STOP", "STEP"),
        help="score maps: background-threshold sweep",
    )
    p.add_argument("--every", type=int, default=1, help="score every N-th image (official: 8)")
    p.add_argument("--workers", type=int, default=1, help="worker processes")

    p = add("train-classifier", _train_classifier, "train the Puzzle-CAM classifier")
    _stage_args(p)
    _training_args(p)

    p = add("make-cams", _make_cams, "dump multi-scale CAMs for one shard of a split")
    _stage_args(p)
    p.add_argument("--model", required=True, help="trained classifier")
    _shard_args(p)

    p = add("make-affinity-labels", _make_affinity_labels, "affinity labels from CAMs + dCRF")
    _stage_args(p, compute=False)
    p.add_argument("--cams", nargs="+", required=True, help="CAM shard directories")
    p.add_argument("--workers", type=int, default=1, help="CRF processes")
    _shard_args(p)

    p = add("train-affinitynet", _train_affinitynet, "train AffinityNet on affinity labels")
    _stage_args(p)
    p.add_argument("--labels", nargs="+", required=True, help="affinity-label shard directories")
    p.add_argument("--init-from", help="classifier whose backbone starts the frozen backbone")
    _training_args(p)

    p = add("make-rw", _make_rw, "random-walk refinement of CAMs for one shard")
    _stage_args(p)
    p.add_argument("--model", required=True, help="trained AffinityNet")
    p.add_argument("--cams", nargs="+", required=True, help="CAM shard directories")
    _shard_args(p)

    p = add("make-pseudo-labels", _make_pseudo_labels, "pseudo-labels from RW maps + dCRF")
    _stage_args(p, compute=False)
    p.add_argument("--rw", nargs="+", required=True, help="random-walk shard directories")
    p.add_argument("--workers", type=int, default=1, help="CRF processes")
    _shard_args(p)

    p = add("train-deeplab", _train_deeplab, "train DeepLabV3+ on pseudo-labels or ground truth")
    _stage_args(p)
    p.add_argument("--labels", nargs="+", help="label shard directories (omit: ground truth)")
    _training_args(p)

    p = add("infer-deeplab", _infer_deeplab, "multi-scale DeepLab inference for one shard")
    _stage_args(p)
    p.add_argument("--model", required=True, help="trained DeepLab")
    p.add_argument("--out-crf", help="also write dCRF-refined predictions here")
    p.add_argument("--workers", type=int, default=1, help="CRF processes")
    p.add_argument(
        "--server-format",
        action="store_true",
        help="write the VOC evaluation server's layout (test split)",
    )
    _shard_args(p)

    from pcam.cli_results import add_commands

    add_commands(add)
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

"""Make a PASCAL VOC 2012 tree ready for pcam (`pcam prepare-voc`).

1. `ImageSets/Segmentation/train_aug.txt`: the standard 10,582-id list shipped in
   `pcam/data/lists/` (its README says where it comes from). An existing different list is kept
   and reported, never overwritten.
2. With `--sbd DIR` (SBD's `dataset` folder, or the folder above it): every `cls/{id}.mat`
   (MATLAB struct `GTcls`, field `Segmentation`: HxW class indices 0..20) becomes the palette
   PNG `SegmentationClassAug/{id}.png` in the VOC colour map. Each PNG is written atomically and
   an existing one is kept, so an interrupted run redoes only what is missing.
3. What the chosen experiments still lack: `weak` needs every train_aug image and an
   image-level label (XML or mask) for it, plus `SegmentationClass` masks of the evaluation
   splits (train, val); `full` needs a training mask (SegmentationClassAug or
   SegmentationClass) for every train_aug image.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import scipy.io

from pcam.crf import map_images
from pcam.data.check import missing_training_masks
from pcam.data.voc import VOC_CLASSES, DatasetSpec, read_split, voc_palette
from pcam.errors import DataError
from pcam.io import save_label_png, write_text

log = logging.getLogger(__name__)

TRAIN_AUG_SHA256 = "d1326bd532648d73bc4b1bd275434eba81930982dc7401a65a8cecb26c028e24"
SUPERVISIONS = ("weak", "full")


def standard_train_aug() -> str:
    """The shipped train_aug list (text, one id per line); a damaged copy -> DataError."""
    text = (resources.files("pcam.data") / "lists" / "voc12_train_aug.txt").read_text()
    if hashlib.sha256(text.encode()).hexdigest() != TRAIN_AUG_SHA256:
        raise DataError("pcam/data/lists/voc12_train_aug.txt: sha256 differs from the release's")
    return text


def write_train_aug(spec: DatasetSpec, text: str) -> str:
    """Put `text` at the train_aug list path unless a list is there; returns what happened."""
    path = spec.split_path("train_aug")
    if path.exists():
        if path.read_text() == text:
            return f"{path}: already the standard list"
        n = len(read_split(spec, "train_aug"))
        return f"{path}: kept yours ({n} ids; it differs from the standard list)"
    write_text(path, text)
    return f"{path}: written ({len(text.splitlines())} ids)"


def sbd_cls_dir(sbd: Path) -> Path:
    """SBD's `cls` folder under `sbd` (`sbd/cls` or `sbd/dataset/cls`); absent -> DataError."""
    for candidate in (sbd / "cls", sbd / "dataset" / "cls"):
        if candidate.is_dir():
            return candidate
    raise DataError(f"{sbd}: no cls/ folder of SBD .mat masks here (nor under dataset/)")


def read_sbd_mask(path: Path) -> np.ndarray:
    """`GTcls.Segmentation` of an SBD `.mat` file: HxW uint8 in 0..20, else DataError."""
    try:
        gt = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)["GTcls"]
        mask = np.asarray(gt.Segmentation)
    except (OSError, ValueError, KeyError, AttributeError, scipy.io.matlab.MatReadError) as exc:
        raise DataError(f"{path}: not an SBD class mask (GTcls.Segmentation): {exc}") from exc
    if mask.ndim != 2 or mask.size == 0 or mask.min() < 0 or mask.max() >= len(VOC_CLASSES):
        raise DataError(f"{path}: Segmentation is not a 2-D map of VOC class indices 0..20")
    return mask.astype(np.uint8)


def _convert_mat(item: tuple[str, str, str]) -> str:
    """(id, .mat path, .png path) -> the id, once its PNG is written (a map_images task)."""
    image_id, mat, png = item
    save_label_png(png, read_sbd_mask(Path(mat)), voc_palette(len(VOC_CLASSES)))
    return image_id


def convert_sbd(spec: DatasetSpec, sbd: Path, workers: int = 1) -> tuple[int, int]:
    """Convert every SBD `.mat` without a PNG yet; returns (converted now, already present)."""
    mats = sorted(sbd_cls_dir(Path(sbd)).glob("*.mat"))
    todo = [
        (m.stem, str(m), str(spec.mask_path(m.stem, aug=True)))
        for m in mats
        if not spec.mask_path(m.stem, aug=True).exists()
    ]
    for _ in map_images(_convert_mat, todo, workers):
        pass
    log.info("SBD: %d masks converted, %d already there", len(todo), len(mats) - len(todo))
    return len(todo), len(mats) - len(todo)


@dataclass
class Preparation:
    """What `prepare_voc` did and what each supervision still lacks (counts of image ids)."""

    train_aug: str
    sbd: tuple[int, int] | None = None
    lacking: dict[str, dict[str, int]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [self.train_aug]
        if self.sbd is not None:
            out.append(f"SegmentationClassAug: {self.sbd[0]} converted, {self.sbd[1]} kept")
        for supervision, gaps in self.lacking.items():
            found = {what: n for what, n in gaps.items() if n}
            state = "; ".join(f"{n} {what}" for what, n in found.items()) or "nothing missing"
            out.append(f"supervision {supervision}: {state}")
        return out

    @property
    def complete(self) -> bool:
        return not any(n for gaps in self.lacking.values() for n in gaps.values())


def lacking(spec: DatasetSpec, supervision: str) -> dict[str, int]:
    """Counts of what `supervision` ("weak", "full") still needs in the VOC tree `spec`."""
    ids = read_split(spec, "train_aug")
    if supervision == "full":
        n = len(missing_training_masks(spec, ["train_aug"]))
        return {"train_aug images without SegmentationClassAug or SegmentationClass mask": n}
    label_sources = (
        lambda i: spec.annotation_path(i),
        lambda i: spec.mask_path(i),
        lambda i: spec.mask_path(i, aug=True),
    )
    gaps = {
        "train_aug images missing from JPEGImages": sum(
            not spec.image_path(i).exists() for i in ids
        ),
        "train_aug images without XML or mask (no image-level label)": sum(
            not any(source(i).exists() for source in label_sources) for i in ids
        ),
    }
    for split in ("train", "val"):
        gaps[f"{split} images without SegmentationClass mask (evaluation)"] = sum(
            not spec.mask_path(i).exists() for i in read_split(spec, split)
        )
    return gaps


def supervisions_of(configfiles: list[Path]) -> tuple[str, ...]:
    """The supervisions of the experiments a run with these config files would run (later
    files override earlier ones key by key, as Snakemake's `--configfile`)."""
    import yaml

    from pcam.config import deep_merge, experiments, load_config

    overrides: dict = {}
    for path in configfiles[1:]:
        overrides = deep_merge(overrides, yaml.safe_load(Path(path).read_text()) or {})
    cfg = load_config(configfiles[0], overrides)
    return tuple(sorted({cfg["experiments"][e]["supervision"] for e in experiments(cfg)}))


def prepare_voc(
    root: Path,
    sbd: Path | None = None,
    supervisions: tuple[str, ...] = SUPERVISIONS,
    workers: int = 1,
    train_aug_text: str | None = None,
) -> Preparation:
    """Run steps 1-3 of the module docstring on the VOC 2012 folder `root`.

    `train_aug_text` replaces the shipped list (tests); `supervisions` are those of the
    experiments to run. A missing `root` or split list -> DataError naming it.
    """
    root = Path(root)
    if not (root / "JPEGImages").is_dir():
        raise DataError(f"{root}: no JPEGImages/ folder: not a VOCdevkit/VOC2012 root")
    spec = DatasetSpec(root, VOC_CLASSES, voc_palette(len(VOC_CLASSES)))
    text = standard_train_aug() if train_aug_text is None else train_aug_text
    report = Preparation(write_train_aug(spec, text))
    if sbd is not None:
        report.sbd = convert_sbd(spec, Path(sbd), workers)
    for supervision in supervisions:
        report.lacking[supervision] = lacking(spec, supervision)
    return report

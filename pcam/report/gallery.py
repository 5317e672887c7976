"""Image galleries (HTML pages): what each stage made of a few images, with a class legend.

Rows are images of a split with ground truth, chosen deterministically so that every class the
split's masks contain appears in at least one row (`choose_images`). Columns are the photo, one
column per stage (score maps as heat maps over the photo, label maps in the dataset's palette),
and the ground truth. The report shows an HTML result in a scrolling frame that fills the pane, so
the page fits any window and keeps its column titles in view (sticky header).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from pcam.data.voc import DatasetSpec, gt_mask, load_image, read_split
from pcam.errors import DataError
from pcam.io import IGNORE_INDEX, find_in_dirs, load_label_png, load_scores, write_text
from pcam.report.html import colour_labels, img_tag, legend, page

THUMB_PX = 256  # longest side of a thumbnail; the page scales it to the column width


@dataclass(frozen=True)
class Column:
    """One stage's column: its shard directories; `score_key` names the `.npz` array of a
    score-map stage (shown as a heat map), None for label PNGs."""

    title: str
    dirs: tuple[Path, ...]
    score_key: str | None = None


def classes_present(mask: np.ndarray) -> set[int]:
    """Foreground classes of a mask (background 0 and ignore 255 left out)."""
    return {int(c) for c in np.unique(mask)} - {0, IGNORE_INDEX}


def choose_images(present: Sequence[tuple[str, set[int]]], min_rows: int) -> list[str]:
    """Ids that together show every class of `present` ((id, classes) in split order).

    Greedy cover: repeatedly the id adding the most classes not shown yet (ties: earlier in the
    list); then, up to `min_rows`, the earliest ids not chosen. Returned in split order.
    """
    chosen: list[int] = []
    missing = set().union(*(classes for _, classes in present)) if present else set()
    while missing:
        gains = [len(classes & missing) for _, classes in present]
        best = int(np.argmax(gains))  # first maximum: the earliest id wins ties
        chosen.append(best)
        missing -= present[best][1]
    for index in range(len(present)):
        if len(chosen) >= min_rows:
            break
        if index not in chosen:
            chosen.append(index)
    return [present[i][0] for i in sorted(chosen)]


def _resize(array: np.ndarray, nearest: bool) -> np.ndarray:
    h, w = array.shape[:2]
    scale = THUMB_PX / max(h, w)
    if scale >= 1:
        return array
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(array).resize(size, resample))


def _heat(photo: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Strongest class score per pixel (jet colours, 0..1) blended half-and-half with the photo."""
    top = scores.max(axis=0) if len(scores) else np.zeros(photo.shape[:2], np.float32)
    colours = matplotlib.colormaps["jet"](np.clip(top, 0, 1))[..., :3] * 255
    return (0.5 * photo + 0.5 * colours).astype(np.uint8)


def _cell(spec: DatasetSpec, column: Column, image_id: str, photo: np.ndarray) -> str:
    if column.score_key is None:
        labels = load_label_png(find_in_dirs(column.dirs, image_id, ".png"))
        rgb = colour_labels(labels, spec.palette)
        return img_tag(_resize(rgb, nearest=True), labels=True, alt=f"{column.title} {image_id}")
    path = find_in_dirs(column.dirs, image_id, ".npz")
    scores = load_scores(path)
    if column.score_key not in scores:
        raise DataError(f"{path}: no {column.score_key!r} array")
    rgb = _heat(photo, scores[column.score_key])
    return img_tag(_resize(rgb, nearest=False), labels=False, alt=f"{column.title} {image_id}")


def _row(spec: DatasetSpec, columns: Sequence[Column], image_id: str, mask: np.ndarray) -> str:
    photo = load_image(spec.image_path(image_id))
    names = ", ".join(spec.class_names[c] for c in sorted(classes_present(mask)))
    cells = [
        f'<td class="id"><b>{html.escape(image_id)}</b><br>{html.escape(names)}</td>',
        f"<td>{img_tag(_resize(photo, nearest=False), labels=False, alt=image_id)}</td>",
        *(f"<td>{_cell(spec, c, image_id, photo)}</td>" for c in columns),
        "<td>"
        + img_tag(_resize(colour_labels(mask, spec.palette), True), labels=True, alt="GT")
        + "</td>",
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def gallery_page(
    spec: DatasetSpec, split: str, columns: Sequence[Column], min_rows: int, title: str
) -> str:
    """The HTML page of a gallery over the images of `split` that have a ground-truth mask."""
    masks = {}
    for image_id in read_split(spec, split):
        mask = gt_mask(spec, image_id)
        if mask is not None:
            masks[image_id] = mask
    if not masks:
        raise DataError(f"{spec.split_path(split)}: no image of split {split!r} has a mask")
    ids = choose_images([(i, classes_present(m)) for i, m in masks.items()], min_rows)
    titles = ["image id, classes", "image", *(c.title for c in columns), "ground truth"]
    head = "".join(
        f"<th{' class=id' if i == 0 else ''}>{html.escape(t)}</th>" for i, t in enumerate(titles)
    )
    rows = "\n".join(_row(spec, columns, i, masks[i]) for i in ids)
    note = (
        f"{len(ids)} images of split <code>{html.escape(split)}</code>, chosen so that every "
        "class of its masks appears at least once."
    )
    if any(c.score_key for c in columns):
        note += " Heat maps: the strongest class score per pixel (blue 0, red 1) over the image."
    body = (
        f'<h1>{html.escape(title)}</h1>\n<p class="note">{note}</p>\n{legend(spec)}\n'
        f'<table class="gallery"><thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody></table>'
    )
    return page(title, body)


def write_gallery(
    spec: DatasetSpec,
    split: str,
    columns: Sequence[Column],
    *,
    min_rows: int,
    title: str,
    out: Path,
) -> None:
    """Write the gallery page (HTML, atomically)."""
    if Path(out).suffix != ".html":
        raise DataError(f"{out}: a gallery is an HTML page; give a path ending in .html")
    write_text(out, gallery_page(spec, split, columns, min_rows, title))

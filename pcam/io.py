"""File I/O at the edges: atomic writes, score-map archives and palette label PNGs.

Every writer here goes through `atomic_path`, so a killed job never leaves a file that
looks finished (spec 11.9).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pcam.errors import DataError

IGNORE_INDEX = 255

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_scores(
    path: str | os.PathLike, keys: np.ndarray, dtype: str = "float32", **arrays: np.ndarray
) -> None:
    """Save score maps as an uncompressed `.npz` with an int64 `keys` array (spec 15.7).

    `keys` holds the dataset labels of the channels, background first: [0, c1, ..., cK].
    Every other array is stored with `dtype` ("float32" or "float16").
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"score dtype must be float32 or float16, got {dtype!r}")
    payload = {"keys": np.asarray(keys, dtype=np.int64)}
    payload.update({name: np.asarray(a, dtype=dtype) for name, a in arrays.items()})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **payload)


def load_scores(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a score archive written by `save_scores`; arrays come back as float32."""
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read score archive ({exc})") from exc
    if "keys" not in out:
        raise DataError(f"{path}: score archive has no 'keys' array")
    return {k: (v if k == "keys" else v.astype(np.float32, copy=False)) for k, v in out.items()}


def palette_bytes(palette: np.ndarray) -> list[int]:
    """Flatten a (C, 3) palette into the 768-entry list PIL expects (unused entries black)."""
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(palette)] = palette
    flat[IGNORE_INDEX] = (224, 224, 192)  # VOC's colour for the ignore label
    return flat.reshape(-1).tolist()


def save_label_png(path: str | os.PathLike, labels: np.ndarray, palette: np.ndarray) -> None:
    """Write an HxW uint8 label map as a palette PNG (values are class indices, 255 = ignore)."""
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
    img = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
    img.putpalette(palette_bytes(palette))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as class indices (palette or grayscale), naming the file on failure."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise DataError(
                    f"{path}: label PNG must be palette or grayscale, got mode {img.mode}"
                )
            return np.array(img, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: label file is missing") from exc
    except (OSError, SyntaxError) as exc:
        raise DataError(f"{path}: corrupt label PNG ({exc})") from exc


def find_in_dirs(dirs: Sequence[str | os.PathLike], stem: str, suffix: str) -> Path:
    """Return `dir/stem+suffix` from the first of `dirs` that holds it (shard look-up)."""
    for d in dirs:
        candidate = Path(d) / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    raise DataError(f"{stem}{suffix}: not found in any of {[str(d) for d in dirs]}")


def shard_ids(ids: Sequence[str], shard: int, num_shards: int) -> list[str]:
    """The ids of one shard: every `num_shards`-th id starting at `shard`."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is outside 0..{num_shards - 1}")
    return list(ids[shard::num_shards])


def unfinished(ids: Sequence[str], out_dir: Path, suffix: str) -> list[str]:
    """The ids without an `out_dir/{id}{suffix}` yet (outputs are atomic: present = finished).

    Creates `out_dir`, so even an empty shard leaves its declared directory.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i in ids if not (out_dir / f"{i}{suffix}").exists()]
    log.info("%d of %d outputs to make in %s", len(todo), len(ids), out_dir)
    return todo

"""Resumable training state: the checkpoint files and the key that says whose state they are.

A checkpoint (`state_dir/checkpoint.pt`) holds the whole state of a training (model, optimiser,
scaler, step, curve so far, best selection score, training seconds) and the state key of the run
that wrote it. The key is a hash of everything the result depends on (`state_key`: the settings
without execution-only keys, the code, the content of every input file); a checkpoint with
another key is never resumed: it is moved aside to `state_dir/stale/{its key}/` and the training
starts from step 0. No RNG state is stored: every draw is a function of (seed, step)
(`pcam.batches`).

Checkpoints are read on the CPU (`map_location="cpu"`); `load_state_dict` then moves each tensor
to the device of the model or optimiser it belongs to, so a CUDA resume works like a CPU one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pcam.errors import DataError
from pcam.models import save_torch

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # the best-scoring epoch's weights, with a selection score (`select_fn`)
STALE = "stale"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write the training state atomically (tensors, numbers, strings and lists only)."""
    save_torch(state, path)


def load_checkpoint(path: Path, set_aside: bool = True) -> dict[str, Any] | None:
    """The saved training state on the CPU, or None when there is none. A damaged one is moved
    to `*.damaged` when `set_aside` (one process of a job does it)."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged archive
        damaged = path.with_suffix(".damaged")
        if set_aside:
            path.replace(damaged)
        log.warning(
            "%s: unreadable checkpoint (%s), set aside as %s; starting over", path, exc, damaged
        )
        return None


def resumable_state(state_dir: Path, key: str, set_aside: bool = True) -> dict[str, Any] | None:
    """The checkpoint in `state_dir` when it was written under `key`, else None.

    With `set_aside` (rank 0), a checkpoint of another key (other settings, code or inputs) is
    moved with its best.pt to `state_dir/stale/{its key}/` (replacing an older one of the same
    key), and logged; a damaged one to `checkpoint.damaged`.
    """
    state = load_checkpoint(state_dir / CHECKPOINT, set_aside)
    if state is None or state.get("key") == key:
        return state
    if not set_aside:
        return None
    old = str(state.get("key") or "unkeyed")
    aside = state_dir / STALE / old
    aside.mkdir(parents=True, exist_ok=True)
    for name in (CHECKPOINT, BEST):
        if (state_dir / name).exists():
            os.replace(state_dir / name, aside / name)
    log.warning(
        "%s: checkpoint of step %s was made with other settings, code or inputs (state key %s, "
        "this run %s): moved to %s; training starts from step 0",
        state_dir, state["step"], old, key, aside,
    )  # fmt: skip
    return None


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_digest(path: Path) -> str:
    """SHA-256 of a file's content, or of a directory's: every file below it, by relative path
    and content (names and bytes only: a touched but unchanged tree keeps its digest)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    if not path.is_dir():
        raise DataError(f"{path}: an input of the training state is missing")
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_digest(file)}\n".encode())
    return digest.hexdigest()


def state_key(identity: dict[str, Any], inputs: Sequence[Path]) -> str:
    """A short hash of `identity` (JSON-serialisable: settings, code fingerprint, ...) and the
    content of every input path, in the given order."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    for path in inputs:
        digest.update(f"{content_digest(Path(path))}\n".encode())
    return digest.hexdigest()[:16]

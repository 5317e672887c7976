"""What a rule's result depends on beyond its inputs: its code and the compute keys that matter.

`code_fingerprint("pcam.stages.cams")` hashes the stage module and every `pcam` module it imports,
transitively (imports inside functions included), so editing one stage's code re-runs that stage
and its descendants only, while editing a shared module (e.g. `pcam.io`) re-runs every stage that
uses it. Rules put the value in `params:`.

`result_compute` keeps the `compute` keys that change a rule's numbers; the others only say how a
job is executed (worker and thread counts, the shard count, which is in the paths) and must not
make results stale.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The dispatcher is not part of any stage's computation.
_EXCLUDED = {"pcam.cli", "pcam.__main__"}

# compute keys by role of the rule: what changes its numbers (every key of the schema's `compute`
# section is in one of these, tests/test_workflow_static.py checks it).
RESULT_COMPUTE_KEYS = {
    # the device count sets the per-device batch, hence BatchNorm statistics (spec 15.2);
    # precision changes every float
    "training": ("device", "gpus_per_job", "mixed_precision"),
    # one image at a time: the device count does not matter, precision, CPU vs GPU and a
    # compiled graph (float rounding) do
    "inference": ("device", "mixed_precision", "compile_inference"),
}
EXECUTION_COMPUTE_KEYS = ("num_workers", "cam_shards", "crf_threads", "torch_threads")


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for candidate in (
        PACKAGE_DIR.parent / rel.with_suffix(".py"),
        PACKAGE_DIR.parent / rel / "__init__.py",
    ):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Names of the pcam modules imported anywhere in `path` (absolute and relative imports)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in [*parts, base] if p)
            found.add(base)
            # `from pcam.models import deeplab` names a module too.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in found if n == "pcam" or n.startswith("pcam.")}


def module_closure(root: str) -> list[Path]:
    """Files of `root` and of every pcam module it imports, transitively, sorted."""
    seen: dict[str, Path] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen or name in _EXCLUDED:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        todo.extend(_imports(path, name))
        # A submodule import also runs its parent packages' __init__.
        parent = name.rpartition(".")[0]
        if parent:
            todo.append(parent)
    return sorted(set(seen.values()))


@functools.cache
def code_fingerprint(*roots: str) -> str:
    """A short SHA-256 over the source of `roots` and their transitive pcam imports."""
    digest = hashlib.sha256()
    files = sorted({p for root in roots for p in module_closure(root)})
    for path in files:
        digest.update(str(path.relative_to(PACKAGE_DIR.parent)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def result_compute(compute: dict, role: str) -> dict:
    """The `compute` keys that change the result of a rule of `role` (training, inference);
    inference also records whether it runs on a GPU at all (gpus_per_job > 0)."""
    kept = {key: compute[key] for key in RESULT_COMPUTE_KEYS[role]}
    if role == "inference":
        kept["on_gpu"] = compute["gpus_per_job"] > 0 and compute["device"] != "cpu"
    return kept

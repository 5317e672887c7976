"""The README's "Running on PASCAL VOC 2012" recipe, line by line, on a fake VOCdevkit + SBD tree
holding every one of the 10,582 train_aug ids: the install and watch lines are skipped (this
test already runs inside the installed environment; there is no cluster), the submission runs
as a dry run (`-n`), every other line runs as written."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from pcam.data.prepare_voc import standard_train_aug
from tests.snakemake_runner import make_project
from tests.test_prepare_voc import fake_voc

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"
SKIPPED = ("python3.11 -m venv", "source .venv/bin/activate", "squeue", "tail -f")


def recipe() -> tuple[dict[str, str], list[str]]:
    """(the variables the recipe asks to edit, its command lines) from the README."""
    text = README.read_text()
    section = text[text.index("## Running on PASCAL VOC 2012") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    variables, commands = {}, []
    for line in block.splitlines():
        line = line.split(" #")[0].strip() if not line.startswith("#") else ""
        if not line:
            continue
        if match := re.fullmatch(r"([A-Z]+)=(\S+)", line):
            variables[match.group(1)] = match.group(2)
        else:
            commands.append(line)
    return variables, commands


def test_readme_voc_recipe_runs_on_a_fake_tree(tmp_path):
    variables, commands = recipe()
    assert set(variables) == {"VOC", "SBD", "WEIGHTS"}
    ids = standard_train_aug().split()
    val = [f"2099_{k:06d}" for k in range(5)]
    voc, sbd = fake_voc(tmp_path, ids[:40], val, ids[40:])
    weights = tmp_path / "weights"
    weights.mkdir()
    project = make_project(tmp_path / "project")
    env = {**project.env, "VOC": str(voc), "SBD": str(sbd / "dataset"), "WEIGHTS": str(weights)}
    ran = []
    for command in commands:
        if command.startswith(SKIPPED):
            continue
        assert command.startswith(("pcam ", "snakemake ")), f"README line not covered: {command}"
        if command.startswith("snakemake ") and " -n " not in command:
            command = command.replace("snakemake ", "snakemake -n ", 1)
        proc = subprocess.run(
            ["bash", "-c", command], cwd=project.root, env=env, capture_output=True, text=True,
            timeout=1800,
        )  # fmt: skip
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        ran.append((command, proc.stdout + proc.stderr))
    assert [c.split()[:2] for c, _ in ran] == [
        ["pcam", "prepare-voc"], ["pcam", "check-data"], ["snakemake", "-n"], ["snakemake", "-n"],
    ]  # fmt: skip
    assert len(os.listdir(voc / "SegmentationClassAug")) == len(ids)
    for _, output in ran[2:]:
        assert "train_classifier" in output and "train_deeplab" in output

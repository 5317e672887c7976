"""The `pcam` command line is a contract: every sub-command keeps its options and their meaning."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pcam import cli
from pcam.cli import build_parser
from tests.stage_settings import cpu_compute, section

# Written from the parser of commit d979830 (before the table-driven rewrite), since only extended
# (figure gallery --segmentation-prefix). Regenerate only for
# a deliberate change of the contract: python -m tests.test_cli > tests/fixtures/cli_options.json
SNAPSHOT = Path(__file__).parent / "fixtures" / "cli_options.json"


def _describe(action: argparse.Action) -> dict:
    """What a user relies on in one option: names, required, arity, type, default, choices."""
    return {
        "flags": list(action.option_strings) or [action.dest],
        "dest": action.dest,
        "action": type(action).__name__,
        "required": action.required,
        "nargs": action.nargs,
        "type": getattr(action.type, "__name__", None),
        "default": action.default,
        "choices": list(action.choices) if action.choices else None,
    }


def option_table(parser: argparse.ArgumentParser) -> dict[str, list[dict]]:
    """`{"": top-level options, command: its options}` of the `pcam` parser."""
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    table = {"": [_describe(a) for a in parser._actions if a is not sub]}
    for name, command in sub.choices.items():
        table[name] = [_describe(a) for a in command._actions]
    return table


def test_every_command_keeps_its_options():
    expected = json.loads(SNAPSHOT.read_text())
    actual = json.loads(json.dumps(option_table(build_parser())))  # tuples -> lists, as stored
    assert list(actual) == list(expected)  # the same commands, in the same order
    for name in expected:
        assert actual[name] == expected[name], f"pcam {name}: options changed"


def test_every_command_has_a_handler_and_a_help_line():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    for name, command in sub.choices.items():
        assert callable(command.get_default("handler")), name
        assert helps[name] and command.description == helps[name], name


def _dump(table: dict[str, list[dict]]) -> str:
    """The snapshot's text: one line per option, so a change of the contract reads as a diff."""
    commands = (
        f" {json.dumps(name)}: [\n" + ",\n".join(f"  {json.dumps(o)}" for o in options) + "\n ]"
        for name, options in table.items()
    )
    return "{\n" + ",\n".join(commands) + "\n}"


if __name__ == "__main__":
    print(_dump(option_table(build_parser())))


def _documented_calls(text: str) -> list[str]:
    """The `pcam ...` lines of a Markdown text's bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.split("#")[0] for line in lines if line.strip().startswith("pcam ")]


@pytest.mark.parametrize("doc", ["README.md", "docs/design.md", "docs/evaluation.md"])
def test_documented_command_lines_parse(doc):
    calls = _documented_calls((Path(__file__).parents[1] / doc).read_text())
    parser = build_parser()
    for call in calls:
        try:
            parser.parse_args(shlex.split(call)[1:])
        except SystemExit:
            pytest.fail(f"{doc}: `{call.strip()}` does not parse")
    assert calls or doc != "README.md"


def test_building_the_parser_imports_no_torch():
    # CPU-only commands (CRF, evaluation, data checks) must not pay for importing torch.
    code = (
        "import sys; from pcam.cli import build_parser; build_parser(); "
        "import pcam.stages.affinity_labels, pcam.stages.pseudo_labels, pcam.evaluate; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# Stage command -> (its function, its settings section, its own options beyond --dataset and
# --settings, the arguments the function must receive besides the dataset and the settings).
def _stage_calls(tmp: Path) -> dict[str, tuple[str, str, list[str], dict]]:
    out, model, dirs = str(tmp / "out"), str(tmp / "model.pt"), [str(tmp / "a"), str(tmp / "b")]
    shard = ["--split", "val", "--shard", "1", "--num-shards", "2", "--out", out]
    crf = {"split": "val", "shard": 1, "num_shards": 2, "out_dir": Path(out), "workers": 3}
    training = ["--out-model", out, "--out-curve", str(tmp / "c.csv"), "--state-dir", "s"]
    return {
        "train-classifier": ("classifier:train_classifier", "classifier", training, {}),
        "make-cams": ("cams:make_cams", "cams", ["--model", model, *shard], {"out_dir": Path(out)}),
        "make-affinity-labels": (
            "affinity_labels:make_affinity_labels", "affinity_labels",
            ["--cams", *dirs, "--workers", "3", *shard],
            {"cam_dirs": [Path(d) for d in dirs], **crf},
        ),
        "train-affinitynet": (
            "affinitynet:train_affinitynet", "affinitynet",
            ["--labels", *dirs, "--init-from", model, *training],
            {"label_dirs": [Path(d) for d in dirs], "init_model": Path(model)},
        ),
        "make-rw": (
            "rw:make_rw", "rw", ["--model", model, "--cams", *dirs, *shard],
            {"cam_dirs": [Path(d) for d in dirs], "out_dir": Path(out)},
        ),
        "make-pseudo-labels": (
            "pseudo_labels:make_pseudo_labels", "pseudo_labels",
            ["--rw", *dirs, "--workers", "3", *shard], {"rw_dirs": [Path(d) for d in dirs], **crf},
        ),
        "train-deeplab": (
            "deeplab:train_deeplab", "deeplab", ["--init-from", model, *training],
            {"label_dirs": None, "init_model": Path(model)},
        ),
        "infer-deeplab": (
            "segmentation:infer_deeplab", "deeplab_inference",
            ["--model", model, "--workers", "3", "--server-format", *shard],
            {"out_dir": Path(out), "out_crf_dir": None, "workers": 3, "server_format": True},
        ),
    }  # fmt: skip


@pytest.mark.parametrize("command", list(_stage_calls(Path("."))))
def test_stage_commands_call_their_stage_with_the_parsed_arguments(command, tmp_path, monkeypatch):
    target, stage, options, expected = _stage_calls(tmp_path)[command]
    model = tmp_path / "model.pt"
    module, _, name = target.partition(":")
    module = importlib.import_module(f"pcam.stages.{module}")
    signature, calls = inspect.signature(getattr(module, name)), []
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(signature.bind(*a, **k)))
    settings = section(stage)
    argv = [command, "--dataset", json.dumps({"root": str(tmp_path)}), "--settings",
            json.dumps(settings), *options]  # fmt: skip
    if "compute" in signature.parameters or "run" in signature.parameters:
        argv += ["--compute", json.dumps(cpu_compute())]
    assert cli.main(argv) == 0
    (bound,) = calls
    spec, given = bound.arguments.pop("spec"), bound.arguments.pop("settings")
    assert spec.root == tmp_path and given == settings
    if "run" in bound.arguments:  # a per-image stage: the shard of the split, the model file
        run = bound.arguments.pop("run")
        assert (run.model, run.split, run.shard, run.num_shards) == (model, "val", 1, 2)
    if "job" in bound.arguments:
        job = bound.arguments.pop("job")
        assert (job.out_model, job.state_dir) == (tmp_path / "out", Path("s"))
    bound.arguments.pop("compute", None)
    assert bound.arguments == expected

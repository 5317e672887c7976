"""The `pcam` command line is a contract: every sub-command keeps its options and their meaning."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pcam.cli import build_parser

# Written from the parser of commit d979830 (before the table-driven rewrite). Regenerate only for
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

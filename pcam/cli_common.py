"""What the parts of the `pcam` command share: the command table and the arguments stages read.

Each sub-command is one `Command` row (handler, help line, options) of a table (`pcam.cli` and
`pcam.cli_results` each hold one); `add_commands` turns the rows into argparse sub-parsers, so an
option is declared once, in the row of its command or in a group several rows list. Handlers
import their stage modules lazily, so CPU-only commands never pay for importing torch.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pcam.errors import PcamError

if TYPE_CHECKING:
    from pcam.data.voc import DatasetSpec

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Option:
    """One `add_argument` call: the flags (or a positional's name) and the keywords."""

    flags: tuple[str, ...]
    kwargs: Mapping[str, Any]


def opt(*flags: str, **kwargs: Any) -> Option:
    """An option, declared with `argparse.ArgumentParser.add_argument`'s signature."""
    return Option(flags, kwargs)


def _json(text: str) -> dict:
    """Parse a JSON object given on the command line (settings passed by a rule's params)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def json_opt(*flags: str, **kwargs: Any) -> Option:
    """An option whose value is a JSON object (the settings a rule passes in its params)."""
    return Option(flags, {"type": _json, **kwargs})


@dataclass(frozen=True)
class Command:
    """One sub-command: what runs it, its one-line help (also its description), its options."""

    handler: Handler
    help: str
    options: tuple[Option, ...]


def add_commands(sub: argparse._SubParsersAction, table: Mapping[str, Command]) -> None:
    """Add one sub-parser per row of `table`, in the table's order."""
    for name, command in table.items():
        parser = sub.add_parser(name, help=command.help, description=command.help)
        parser.set_defaults(handler=command.handler)
        for option in command.options:
            parser.add_argument(*option.flags, **option.kwargs)


def dataset_spec(args: argparse.Namespace) -> DatasetSpec:
    """The DatasetSpec from --dataset JSON, or from --root alone (dataset.json or VOC)."""
    from pcam.data.voc import DatasetSpec

    settings = dict(getattr(args, "dataset", None) or {})
    if getattr(args, "root", None):
        settings["root"] = args.root
    if "root" not in settings:
        raise PcamError("give --root DIR or --dataset JSON with a 'root' key")
    return DatasetSpec.from_settings(settings)

"""One module per CLI sub-command. Each states its ``HELP`` (one line for ``jigsawkit
--help``), ``DESCRIPTION``, ``EXAMPLES`` (command lines, shown one per line) and optional
``NOTES``, and has ``add_arguments(parser)`` and ``run(args) -> int``; :func:`add_command`
builds its parser, so every command's help is laid out the same way."""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType


def command_module(name: str) -> ModuleType:
    """The module of a sub-command (``list-components`` -> ``commands.list_components``)."""
    return importlib.import_module(f"jigsawkit.commands.{name.replace('-', '_')}")


def add_command(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    """Add the sub-command ``name`` (``list-components`` or ``list_components``): its help
    ends with its examples, one per line as written, then its notes."""
    module = command_module(name)
    epilog = "examples:\n" + "\n".join(f"  {example}" for example in module.EXAMPLES)
    notes = getattr(module, "NOTES", "")
    if notes:
        epilog += f"\n\n{notes}"
    parser = subparsers.add_parser(
        name.replace("_", "-"),
        help=module.HELP,
        description=module.DESCRIPTION,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    return parser

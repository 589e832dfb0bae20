"""The ``jigsawkit`` command line. Sub-commands live in ``jigsawkit/commands/``, one module each.

Bad input (files, arguments) ends with one clear line per problem on stderr and exit code 2,
never a traceback. Importing this module is cheap: torch, timm and wandb are imported only by
the commands that run models.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from jigsawkit.errors import UserError

COMMANDS = ("run", "sweep", "validate", "list_components", "permutations", "report")

EPILOG = """\
examples:
  jigsawkit run experiments/quickstart.yaml
  jigsawkit run experiments/quickstart.yaml --set pretrain.epochs=2 --out runs/try
  jigsawkit validate experiments/*.yaml
  jigsawkit list-components --kind backbone
  jigsawkit sweep experiments/quickstart_sweep.yaml
  jigsawkit permutations --grid 3 --count 1000 --selection maximal --out perms.npy
  jigsawkit report runs/quickstart-*
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line and exit code 2 (its convention too)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    from jigsawkit import __version__

    parser = _Parser(
        prog="jigsawkit",
        description="Self-supervised pretraining of image backbones (jigsaw puzzles and "
        "more) and measuring what they learned.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jigsawkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"jigsawkit.commands.{name}")
        module.add_parser(sub)
    return parser


def command_module(command: str):
    """The module of a sub-command (``list-components`` -> ``commands.list_components``)."""
    return importlib.import_module(f"jigsawkit.commands.{command.replace('-', '_')}")


def print_problems(error: UserError) -> None:
    lines = getattr(error, "problems", None) or str(error).splitlines() or [type(error).__name__]
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    if len(lines) > 1:
        print(f"{len(lines)} problems found", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 0
        return int(command_module(args.command).run(args) or 0)
    except UserError as error:
        print_problems(error)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())

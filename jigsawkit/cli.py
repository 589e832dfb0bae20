"""The ``jigsawkit`` command line. Sub-commands live in ``jigsawkit/commands/``, one module each.

Bad input (files, arguments) ends with one clear line per problem on stderr and exit code 2,
never a traceback. So does a plugin whose code fails (its factory, its ``check()``, any of its
methods): one line naming the plugin file; ``--traceback`` or ``JIGSAWKIT_TRACEBACK=1`` adds
the full traceback for the plugin's author. Importing this module is cheap: torch, timm and
wandb are imported only by the commands that run models.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from jigsawkit.commands import add_command, command_module
from jigsawkit.errors import PluginError, UserError, one_line

TRACEBACK_ENV = "JIGSAWKIT_TRACEBACK"
HINT = f" (--traceback or {TRACEBACK_ENV}=1 shows the traceback)"
TRACEBACK_HELP = f"on a plugin error, also print the full traceback (or set {TRACEBACK_ENV}=1)"

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


class _Version(argparse.Action):
    """``--version``: the installed package's version, looked up only when asked for (reading
    package metadata costs a tenth of a second that every other command would pay)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from jigsawkit import __version__

        print(f"jigsawkit {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jigsawkit",
        description="Self-supervised pretraining of image backbones (jigsaw puzzles and "
        "more) and measuring what they learned.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    parser.add_argument("--traceback", action="store_true", help=TRACEBACK_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        command = add_command(sub, name)
        # Also after the command (`jigsawkit run x.yaml --traceback`); SUPPRESS keeps the
        # sub-parser from resetting a --traceback given before the command.
        command.add_argument(
            "--traceback", action="store_true", default=argparse.SUPPRESS, help=TRACEBACK_HELP
        )
    return parser


def print_problems(error: UserError) -> None:
    lines = getattr(error, "problems", None) or str(error).splitlines() or [type(error).__name__]
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    if len(lines) > 1:
        print(f"{len(lines)} problems found", file=sys.stderr)


def _traceback_wanted(argv: list[str] | None) -> bool:
    if os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
        return True
    return "--traceback" in (sys.argv[1:] if argv is None else argv)


def plugin_frame(error: BaseException) -> str | None:
    """``file:line`` of the innermost traceback frame in a loaded plugin file, if any."""
    from jigsawkit.plugins import loaded_files

    files = {str(path) for path in loaded_files()}
    found = None
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename in files or any(frame.filename.startswith(f + os.sep) for f in files):
            found = f"{frame.filename}:{frame.lineno} (in {frame.name})"
    return found


def main(argv: list[str] | None = None) -> int:
    show_traceback = _traceback_wanted(argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 0
        return int(command_module(args.command).run(args) or 0)
    except UserError as error:
        if isinstance(error, PluginError):
            if show_traceback and error.__cause__ is not None:
                traceback.print_exception(error.__cause__, file=sys.stderr)
            elif not show_traceback:
                error = PluginError(f"{error}{HINT}")
        print_problems(error)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as error:
        # Third-party code failing outside a factory or check(): one line naming the
        # plugin file when the traceback goes through one; jigsawkit's own bugs keep
        # their traceback.
        where = plugin_frame(error)
        if where is None:
            raise
        if show_traceback:
            traceback.print_exception(error, file=sys.stderr)
        hint = "" if show_traceback else HINT
        print(f"error: plugin {where}: {one_line(error)}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

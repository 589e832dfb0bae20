"""``jigsawkit validate FILE...``: print each file's resolved config, or all its problems."""

from __future__ import annotations

import argparse
import sys

from jigsawkit.errors import UserError

HELP = "check experiment or sweep files and print the resolved config"

DESCRIPTION = (
    "Validate experiment (or sweep) files against the assembled schema and "
    "print the resolved config with defaults filled in, or every problem found."
)

EXAMPLES = (
    "jigsawkit validate experiments/baseline.yaml",
    "jigsawkit validate experiments/*.yaml --quiet",
    "jigsawkit validate experiments/quickstart.yaml --set pretrain.epochs=2",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="experiment or sweep YAML files")
    add_experiment_options(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="print only OK or the errors")


def add_experiment_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by the commands that read an experiment file."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, validated like the file (repeatable), e.g. pretrain.epochs=2",
    )
    parser.add_argument(
        "--plugins",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of plugin files to load (repeatable; also JIGSAWKIT_PLUGINS)",
    )


def resolve_file(path: str, args: argparse.Namespace) -> dict:
    """The resolved config of an experiment or sweep file (told apart by a `sweep` key);
    the file is read and parsed once."""
    from jigsawkit.config.yaml_marks import load_yaml_mapping

    loaded = load_yaml_mapping(path)
    if "sweep" in loaded[0]:
        from jigsawkit.search.sweep_file import load_sweep_file

        spec = load_sweep_file(path, args.overrides, args.plugins, loaded=loaded)
        return spec.as_dict()
    from jigsawkit.config.experiment import load_experiment

    return load_experiment(path, overrides=args.overrides, plugin_dirs=args.plugins, loaded=loaded)


def run(args: argparse.Namespace) -> int:
    from jigsawkit.cli import print_problems
    from jigsawkit.config.experiment import dump_yaml

    failed = 0
    for path in args.files:
        try:
            resolved = resolve_file(path, args)
        except UserError as error:
            failed += 1
            print_problems(error)
            continue
        if args.quiet or len(args.files) > 1:
            print(f"{path}: OK")
        if not args.quiet:
            if len(args.files) > 1:
                print(f"# {path}")
            sys.stdout.write(dump_yaml(resolved))
    return 2 if failed else 0

"""``jigsawkit report RUN_DIR...``: figures and a report.md from run and sweep directories."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "PNG figures and a report.md from run (and sweep) directories"

DESCRIPTION = (
    "Draw loss/accuracy curves per stage, probe top-1 per learning rate "
    "(pretrained vs random-init) and sweep results from run directories alone (no W&B "
    "needed), and write a report.md with the summary table and resolved configs. "
    "Several directories are compared side by side."
)

EXAMPLES = (
    "jigsawkit report runs/quickstart-20261128-101500",
    "jigsawkit report runs/quickstart-* --out reports/compare",
    "jigsawkit report sweeps/probe_sweep-20261128-120000",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dirs", nargs="+", metavar="RUN_DIR", help="run directories or sweep directories"
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where to write (default: RUN_DIR/report for one directory, ./report for several)",
    )


def default_out(dirs: list[str]) -> Path:
    return Path(dirs[0]) / "report" if len(dirs) == 1 else Path("report")


def run(args: argparse.Namespace) -> int:
    from jigsawkit.errors import UserError
    from jigsawkit.tracking.report import build_report, directory_kind

    try:
        for directory in args.dirs:
            directory_kind(Path(directory))
        out = Path(args.out) if args.out else default_out(args.dirs)
        result = build_report(args.dirs, out)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {result.report} ({len(result.figures)} figures)")
    return 0

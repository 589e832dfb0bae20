"""``jigsawkit sweep FILE``: placeholder until the sweep engine lands."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("sweep", help="run a hyperparameter sweep (W&B Sweeps, Optuna)")
    parser.add_argument("file", metavar="FILE")
    return parser


def run(args: argparse.Namespace) -> int:
    from jigsawkit.errors import UserError

    raise UserError("jigsawkit sweep: not available yet")

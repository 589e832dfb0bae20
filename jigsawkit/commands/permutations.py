"""``jigsawkit permutations``: build a jigsaw permutation set, print its statistics, save it."""

from __future__ import annotations

import argparse
import sys
import time

from jigsawkit.errors import UserError

HELP = "build a jigsaw permutation set and report its Hamming distances"

DESCRIPTION = (
    "Build a permutation set for an N x N jigsaw (cached on disk), print its "
    "size and its mean and minimum pairwise Hamming distance, and optionally save it as "
    "an int array (K, N*N) of 0-based tile indices with np.save."
)

EXAMPLES = (
    "jigsawkit permutations --grid 3 --count 1000 --selection maximal --out perms.npy",
    "jigsawkit permutations --grid 3 --count 100 --selection max_min",
    "jigsawkit permutations --grid 4 --count 100 --selection random --seed 1",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", type=int, default=3, help="N of an N x N grid (default 3)")
    parser.add_argument("--count", type=int, default=1000, help="K, the set size (default 1000)")
    parser.add_argument(
        "--selection",
        choices=("maximal", "max_min", "random"),
        default="maximal",
        help="maximal: greedy max average distance (Noroozi & Favaro); max_min: greedy max "
        "minimum distance; random (default maximal)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument(
        "--out", metavar="FILE", default=None, help="save the set here (.npy); default: not saved"
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from jigsawkit.pretext.permutations import (
        build_permutations,
        hamming_stats,
        save_npy_atomic,
    )

    started = time.perf_counter()
    try:
        perms = build_permutations(args.grid, args.count, args.selection, args.seed)
    except UserError as error:
        message = str(error).replace("permutations.", "--", 1)
        print(f"error: {message}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    mean, smallest = hamming_stats(perms)
    console = Console()
    console.print(
        f"[bold]{len(perms)}[/bold] permutations of a {args.grid}x{args.grid} grid "
        f"({args.selection}, seed {args.seed}): mean Hamming distance [bold]{mean:.4f}[/bold], "
        f"min {smallest}; built in {elapsed:.2f} s"
    )
    if args.out:
        try:
            save_npy_atomic(args.out, perms)
        except OSError as exc:
            print(f"error: --out {args.out}: cannot write: {exc.strerror or exc}", file=sys.stderr)
            return 2
        console.print(f"saved to {args.out} (int array {perms.shape}, 0-based tile indices)")
    return 0

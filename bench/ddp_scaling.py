"""Pretraining images/s of 1 and N processes on the same experiment, side by side in one run.

    python bench/ddp_scaling.py [--nproc 2] [--file experiments/quickstart.yaml] [--set K=V ...]

Each run is ``jigsawkit run FILE --nproc P --set evaluate=[]`` (pretraining only) in a
temporary run directory; the figure is the run's ``pretrain.images_per_second`` (images of
all ranks per second of training). The last line is ``ddp<N>/single: X``. On a CPU machine
with few cores the ranks share them, so the ratio says little; it is meant for GPU machines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SETS = ["pretrain.epochs=1", "pretrain.max_steps_per_epoch=30"]


def images_per_second(file: str, nproc: int, sets: list[str], out: Path) -> float:
    command = [sys.executable, "-m", "jigsawkit", "run", file, "--nproc", str(nproc)]
    for item in [*sets, "evaluate=[]"]:
        command += ["--set", item]
    command += ["--out", str(out), "--no-progress"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return float(json.loads((out / "summary.json").read_text())["pretrain.images_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--file", default="experiments/quickstart.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=None, metavar="KEY=VALUE")
    args = parser.parse_args()
    sets = DEFAULT_SETS if args.sets is None else args.sets
    with tempfile.TemporaryDirectory(prefix="ddp-scaling-") as tmp:
        single = images_per_second(args.file, 1, sets, Path(tmp) / "single")
        multi = images_per_second(args.file, args.nproc, sets, Path(tmp) / "ddp")
    print(f"{'processes':>10} {'images/s':>10}")
    print(f"{1:>10} {single:>10.1f}")
    print(f"{args.nproc:>10} {multi:>10.1f}")
    print(f"ddp{args.nproc}/single: {multi / single:.2f}")


if __name__ == "__main__":
    main()

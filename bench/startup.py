"""Start-up time of the CLI, as whole processes (what a user waits for).

    python bench/startup.py [--repeat 5]

Times `jigsawkit --help`, `jigsawkit list-components` and
`jigsawkit validate experiments/baseline.yaml` (best of --repeat runs each, to filter out a
noisy machine), prints each figure and `import torch` alone for scale, and ends with
`slowest_startup_s: X.XX` (target <= 1.0 on the 2-core CPU here).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "jigsawkit --help": ["--help"],
    "jigsawkit list-components": ["list-components"],
    "jigsawkit validate experiments/baseline.yaml": ["validate", "experiments/baseline.yaml"],
}


def best_time(argv: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
        best = min(best, elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "jigsawkit"]
    times = {}
    for label, extra in COMMANDS.items():
        times[label] = best_time(cli + extra, args.repeat)
        print(f"{label:48s} {times[label]:.3f} s")
    torch_time = best_time([sys.executable, "-c", "import torch"], max(1, args.repeat // 2))
    label = 'python -c "import torch" (for scale)'
    print(f"{label:48s} {torch_time:.3f} s")
    print(f"slowest_startup_s: {max(times.values()):.2f}")


if __name__ == "__main__":
    main()

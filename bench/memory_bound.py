"""Resident memory stays bounded whatever the dataset size.

Builds a decoded-image cache larger than the memory budget (default 2.5 GB on disk) and
iterates the BatchLoader over it once, shuffled, as a training epoch would. Prints the
peak resident memory (VmHWM) of the build and of the pass, and ends with
``peak_rss_gb: X.XX`` for the whole process. The budget is 2 GB.

    python bench/memory_bound.py                 # 2.5 GB cache, 96 px images
    python bench/memory_bound.py --size-gb 3 --batch-size 512
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _status(field: str) -> float:
    """A /proc/self/status memory field in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class BankImages:
    """Cheap ``decode``: cycles through a small bank of synthetic images (picklable)."""

    def __init__(self, size: int, bank: int = 64):
        from jigsawkit.data.synthetic import generate_image

        self.bank = np.stack([generate_image(0, "train", i, size)[0] for i in range(bank)])

    def __call__(self, index: int) -> np.ndarray:
        return self.bank[index % len(self.bank)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.5, help="cache size on disk")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: a temp folder")
    parser.add_argument("--keep", action="store_true", help="keep the cache afterwards")
    args = parser.parse_args()

    import torch

    from jigsawkit.data.cache import build_image_cache
    from jigsawkit.data.loader import BatchLoader

    size = args.image_size
    count = int(args.size_gb * 1e9 // (size * size * 3))
    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="jigsawkit-membench-"))
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, cache in {cache_dir}")
    print(f"rss after imports: {_status('VmRSS'):.2f} GB")
    try:
        start = time.perf_counter()
        split = build_image_cache(
            {"bench": "memory_bound", "count": count},
            count,
            BankImages(size),
            size,
            cache_dir,
            labels=np.arange(count) % 10,
            description="building the cache",
        )
        build_s = time.perf_counter() - start
        build_peak = _status("VmHWM")
        on_disk = split.images.nbytes / 1e9
        print(
            f"cache: {count} images of {size} px, {on_disk:.2f} GB on disk, built in {build_s:.1f} s"
        )
        print(f"build peak rss: {build_peak:.2f} GB")

        reset = _reset_peak()
        loader = BatchLoader(
            split, args.batch_size, shuffle=True, seed=0, device=args.device, drop_last=False
        )
        start = time.perf_counter()
        checksum = 0.0
        for images, _ in loader:
            checksum += float(images[:, :, 0, 0].sum())  # touch every batch
        pass_s = time.perf_counter() - start
        pass_peak = _status("VmHWM")
        label = "" if reset else " (includes the build: clear_refs not allowed)"
        print(
            f"loader pass: {len(loader)} batches of {args.batch_size}, {pass_s:.1f} s, "
            f"{count / pass_s:.0f} images/s, checksum {checksum:.0f}"
        )
        print(f"loader peak rss{label}: {pass_peak:.2f} GB")
        print(f"dataset / peak rss: {on_disk / max(build_peak, pass_peak):.2f}x")
        print(f"peak_rss_gb: {max(build_peak, pass_peak):.2f}")
    finally:
        if not args.keep and args.cache_dir is None:
            shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

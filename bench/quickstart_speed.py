"""Each speed measure of the quickstart path against the code without it, side by side in one run.

    python bench/quickstart_speed.py [--precision auto|fp32|bf16] [--threads N]
                                     [--steps 20] [--rounds 3]

(1) pretraining through the real engine (loader, tiling, CFN, Adam) with channels-last
    CFN activations vs contiguous ones;
(2) the same with glibc's malloc keeping freed memory (``jigsawkit.allocator``) vs glibc's
    defaults (every block over 32 MiB mmapped and unmapped again);
(3) frozen feature extraction (whole 96 px images, batch 256) with BatchNorm folded into
    the convolutions vs as trained.

Variants alternate for ``--rounds`` rounds and each keeps its best round, so a burst of load
from other processes hits no figure alone. On a shared machine prefer ``--threads 1``: CPU
time per image is then measured instead of wall time, which load inflates less. Prints
one ratio line per measure: ``channels_last/default``, ``retain_malloc/default``,
``folded_bn/default``.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

# The quickstart's model, as the throughput bench defines it (one definition for both).
from pretrain_throughput import QUICKSTART_BACKBONE as BACKBONE  # noqa: E402
from pretrain_throughput import QUICKSTART_JIGSAW as JIGSAW  # noqa: E402

BATCH = 64


def _clock(threads: int) -> float:
    """CPU seconds of this process with one thread (load-robust), else wall seconds."""
    if threads == 1:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    return time.perf_counter()


def _set_malloc(retain: bool) -> None:
    libc = ctypes.CDLL(None)
    if retain:
        from jigsawkit.allocator import retain_freed_memory

        retain_freed_memory()
        libc.mallopt(-4, 0)  # M_MMAP_MAX, again after a default round
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    else:  # glibc's defaults
        libc.mallopt(-4, 65536)
        libc.mallopt(-1, 128 * 1024)


def _task(channels_last: bool):
    from jigsawkit.registry import registry

    torch.manual_seed(0)
    backbone = registry("backbone").build("cfn", **BACKBONE)
    backbone.channels_last = channels_last
    return registry("pretext").build("jigsaw", backbone=backbone, **JIGSAW)


def pretrain_rate(splits: dict, precision: str, steps: int, threads: int, cl: bool) -> float:
    """Training images per second (or per CPU second) of the real engine."""
    from jigsawkit.data.loader import BatchLoader
    from jigsawkit.training.engine import pretrain
    from jigsawkit.training.settings import PretrainSettings

    def make_loader(split: str, epoch: int) -> BatchLoader:
        loader = BatchLoader(
            splits[split], BATCH, shuffle=split == "train", seed=0, device="cpu", drop_last=True
        )
        loader.set_epoch(epoch)
        return loader

    task = _task(cl)
    with tempfile.TemporaryDirectory(prefix="jk-speed-") as run_dir:
        started = _clock(threads)
        settings = PretrainSettings(
            epochs=1,
            optimizer={"name": "adam", "lr": 1e-3},
            schedule={"name": "constant"},
            precision=precision,
            seed=0,
            max_steps_per_epoch=steps,
        )
        pretrain(
            task,
            make_loader,
            settings,
            device="cpu",
            run_dir=run_dir,
            log=lambda metrics, step=None: None,
            progress=False,
        )
        seconds = _clock(threads) - started
    return steps * BATCH / seconds


def extraction_rate(split, threads: int, folded: bool) -> float:
    """Images per second (or per CPU second) of frozen feature extraction."""
    from jigsawkit.evaluators.features import backbone_inputs, fold_batchnorm, frozen

    task = _task(True)
    backbone = task.backbone
    with frozen(backbone):
        model = fold_batchnorm(backbone) if folded else backbone
        count = min(len(split), 512)
        started = _clock(threads)
        for start in range(0, count, 256):
            x = backbone_inputs(split.images[start : start + 256], "cpu", 96, "per_image")
            model.probe_features(x, ["conv"])
        seconds = _clock(threads) - started
    return count / seconds


def _best_of(rounds: int, variants: dict) -> dict:
    best = dict.fromkeys(variants, 0.0)
    for _ in range(rounds):
        for name, measure in variants.items():
            best[name] = max(best[name], measure())
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.threads < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--threads, --steps and --rounds must be >= 1")

    from jigsawkit.training.seeding import resolve_precision

    torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision, "cpu")
    unit = "images/CPU-s" if args.threads == 1 else "images/s"
    cache = Path(tempfile.mkdtemp(prefix="jk-speed-cache-"))
    try:
        _measure(args, precision, unit, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _measure(args: argparse.Namespace, precision: str, unit: str, cache: Path) -> None:
    from jigsawkit.registry import registry

    dataset = registry("dataset").build(
        "synthetic", seed=0, train_size=BATCH * (args.steps + 2), val_size=64, test_size=64
    )
    splits = {s: dataset.load(s, 96, cache) for s in ("train", "val", "test")}
    print(f"cpu, {args.threads} thread(s), precision {precision}, batch {BATCH}, {unit}")

    _set_malloc(True)
    layout = _best_of(
        args.rounds,
        {
            name: (lambda cl=cl: pretrain_rate(splits, precision, args.steps, args.threads, cl))
            for name, cl in (("default", False), ("channels_last", True))
        },
    )

    def with_malloc(retain: bool) -> float:
        _set_malloc(retain)
        return pretrain_rate(splits, precision, args.steps, args.threads, True)

    malloc = _best_of(
        args.rounds,
        {"default": lambda: with_malloc(False), "retain_malloc": lambda: with_malloc(True)},
    )
    _set_malloc(True)
    folding = _best_of(
        args.rounds,
        {
            name: (lambda f=f: extraction_rate(splits["train"], args.threads, f))
            for name, f in (("default", False), ("folded_bn", True))
        },
    )
    print(f"(1) pretraining, contiguous:        {layout['default']:8.1f}")
    print(f"(1) pretraining, channels-last:     {layout['channels_last']:8.1f}")
    print(f"(2) pretraining, glibc defaults:    {malloc['default']:8.1f}")
    print(f"(2) pretraining, retained memory:   {malloc['retain_malloc']:8.1f}")
    print(f"(3) feature extraction, as trained: {folding['default']:8.1f}")
    print(f"(3) feature extraction, folded BN:  {folding['folded_bn']:8.1f}")
    print(f"channels_last/default: {layout['channels_last'] / layout['default']:.2f}")
    print(f"retain_malloc/default: {malloc['retain_malloc'] / malloc['default']:.2f}")
    print(f"folded_bn/default: {folding['folded_bn'] / folding['default']:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

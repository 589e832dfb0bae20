"""Cost of a linear-probe grid: 16 heads vs 1 on the same cached features, side by side.

    python bench/probe_grid.py [--repeat 3] [--epochs 30] [--threads N] [--device cuda]

Builds the quickstart's CFN (or a tiny CNN when the cfn backbone is not importable) and
small synthetic labelled images (a bright patch whose position is the class, on noise),
extracts and caches their features once, then times on those same cached features a probe
with one learning rate and one with a grid of 16 heads (8 lr x 2 weight decay), same
epochs and batches (best of --repeat runs each, alternating, to filter a noisy machine).
The figure that ends the output is the wall time of whole probe runs through the real
`linear_probe` evaluator on warm caches (data cache, weights hash, cached features,
standardisation, heads with per-epoch val/test curves, selection on val, results file):
`grid16/single: X.XX` (target <= 1.5). It also prints the heads-only training ratio, the
floor that the 16 heads' own arithmetic puts under the ratio on this machine (their two
matmuls, the exp over their logits and one step of torch's fused AdamW over their
weights, per training step, timed alone: docs/evaluation.md, "Cost"), the uncached path
(features re-extracted) and a wide case for scale. `--device cuda` runs it all on a GPU.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jigsawkit.data.base import ImageSplit
from jigsawkit.evaluators.features import extract_features
from jigsawkit.evaluators.linear_probe import (
    HeadConfig,
    LayerFeatures,
    select_best,
    train_heads,
)

LRS_16 = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2]
WDS_16 = [0.0, 1e-4]


class TinyCNN(nn.Module):
    """Fallback backbone following the contract (conv trunk, pooled features)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(width // 2),
            nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.out_dim, self.input_size = width, 64
        self.feature_layers, self.default_probe_layer = {"conv": width}, "conv"

    def probe_features(self, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        return {"conv": self.trunk(x).mean(dim=(-2, -1))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probe_features(x, ["conv"])["conv"]


def make_backbone() -> tuple[nn.Module, str]:
    torch.manual_seed(0)
    try:
        from jigsawkit.backbones.cfn import CFN

        model = CFN(
            channels=[32, 64, 128],
            kernel_sizes=[3, 3, 3],
            batch_norm=True,
            tile_fc=256,
            input_size=24,
        )
        return model.eval(), "cfn 32-64-128 (quickstart trunk)"
    except ImportError:
        return TinyCNN().eval(), "tiny CNN (cfn not importable)"


def make_split(n: int, size: int, classes: int, seed: int) -> ImageSplit:
    """Noise images with a bright patch whose grid cell is the class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 120, (n, size, size, 3), dtype=np.uint8)
    side = int(np.ceil(np.sqrt(classes)))
    cell = size // side
    for i, label in enumerate(labels):
        row, col = divmod(int(label), side)
        images[i, row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] += 100
    return ImageSplit(images, labels.astype(np.int64), classes, key=f"bench-{seed}-{n}-{size}")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_probe(
    features: dict[str, LayerFeatures],
    labels: dict,
    classes: int,
    config: HeadConfig,
    device: torch.device,
) -> tuple[float, float]:
    synchronize(device)
    start = time.perf_counter()
    results = train_heads(features, labels, classes, config, device=device)
    synchronize(device)
    return time.perf_counter() - start, select_best(results).test_top1


def unavoidable_work(heads: int, classes: int, dim: int, device: torch.device) -> dict:
    """The work per step that no implementation of ``heads`` heads can skip: the two matmuls
    (logits and gradient), and those plus the exp over every logit that the softmax needs
    and one step of torch's fused AdamW over the weights. ``{name: callable}``."""
    from jigsawkit.evaluators.linear_probe import padded_width

    width, rows, batch = padded_width(dim), classes * heads, 256
    weight, x = torch.randn(rows, width, device=device), torch.randn(batch, width, device=device)
    grad_z, logits = (
        torch.randn(rows, batch, device=device),
        torch.empty(rows, batch, device=device),
    )
    param = nn.Parameter(torch.zeros(rows, width, device=device))
    param.grad = torch.empty_like(param)
    adamw = torch.optim.AdamW([param], lr=1e-3, fused=True)

    def matmuls() -> None:
        torch.mm(weight, x.t())
        torch.mm(grad_z, x, out=param.grad)

    def with_softmax_exp_and_adamw() -> None:
        matmuls()
        torch.exp(grad_z, out=logits)
        adamw.step()

    return {"matmuls": matmuls, "with_exp_adamw": with_softmax_exp_and_adamw}


def unavoidable_seconds(classes: int, dim: int, device: torch.device) -> dict:
    """Best time per step of each ``unavoidable_work`` for 1 and for 16 heads, timed in
    alternating rounds: ``{(heads, name): seconds}``."""
    works = {
        (heads, name): work
        for heads in (1, 16)
        for name, work in unavoidable_work(heads, classes, dim, device).items()
    }
    best = dict.fromkeys(works, math.inf)
    for _ in range(7):
        for key, work in works.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(50):
                work()
            synchronize(device)
            best[key] = min(best[key], (time.perf_counter() - start) / 50)
    return best


def best_of(repeat: int, jobs: dict) -> dict[str, tuple[float, float]]:
    """Run every job ``repeat`` times, interleaved; keep each one's fastest run."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeat):
        for name, job in jobs.items():
            seconds, top1 = job()
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, top1)
    return best


def whole_probe_jobs(
    backbone: nn.Module, epochs: int, images: int, root: Path, device: torch.device
) -> dict:
    """Whole probe runs through the real ``linear_probe`` evaluator on warm caches.

    This is what a user waits for when probing an already-cached backbone: open the data
    cache, hash the weights, load the cached features, standardise, train the heads with
    per-epoch val/test curves, select on val, write probe_linear_probe.json.
    """
    from jigsawkit.evaluators.base import EvalContext
    from jigsawkit.evaluators.features import state_dict_hash
    from jigsawkit.registry import registry

    data = {
        "name": "synthetic",
        "seed": 1,
        "train_size": images,
        "val_size": images // 3,
        "test_size": images // 3,
    }

    def context(cache_dir: Path) -> EvalContext:
        return EvalContext(
            backbone=backbone,
            make_random_backbone=lambda: None,
            checkpoint_id=state_dict_hash(backbone),
            device=device,
            seed=0,
            cache_dir=cache_dir,
            run_dir=root / "run",
            build_dataset=lambda sel: registry("dataset").build(
                sel["name"], **{k: v for k, v in sel.items() if k != "name"}
            ),
        )

    def probe(lrs: list[float], wds: list[float], cache_dir: Path) -> tuple[float, float]:
        evaluator = registry("evaluator").build(
            "linear_probe",
            data=data,
            lr=lrs,
            weight_decay=wds,
            epochs=epochs,
            compare_random_init=False,
            image_size=96,
        )
        synchronize(device)
        start = time.perf_counter()
        result = evaluator.evaluate(context(cache_dir))
        synchronize(device)
        return time.perf_counter() - start, float(result["test_top1"])

    warm = root / "warm"
    probe([1e-3], [0.0], warm)  # decode images and extract features once
    counter = iter(range(10**6))

    def uncached() -> tuple[float, float]:
        # A fresh feature cache (images stay decoded): features are extracted again.
        fresh = root / f"fresh{next(counter)}"
        (fresh / "images").parent.mkdir(parents=True, exist_ok=True)
        (fresh / "images").symlink_to(warm / "images", target_is_directory=True)
        return probe([1e-3], [0.0], fresh)

    return {
        "single": lambda: probe([1e-3], [0.0], warm),
        "grid16": lambda: probe(LRS_16, WDS_16, warm),
        "uncached": uncached,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--images", type=int, default=3000, help="train images (val/test: 1/3)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from jigsawkit.errors import UserError
    from jigsawkit.training.seeding import resolve_device

    try:
        device = resolve_device(args.device)
    except UserError as error:
        parser.error(f"--{error}")
    backbone, description = make_backbone()
    backbone = backbone.to(device)
    classes, layer = 10, backbone.default_probe_layer
    splits = {
        "train": make_split(args.images, args.size, classes, 1),
        "val": make_split(args.images // 3, args.size, classes, 2),
        "test": make_split(args.images // 3, args.size, classes, 3),
    }
    labels = {name: torch.from_numpy(s.labels) for name, s in splits.items()}
    print(f"backbone: {description}; device: {device}; torch threads: {torch.get_num_threads()}")
    print(f"data: {args.images} train / {args.images // 3} val / {args.images // 3} test images")

    with tempfile.TemporaryDirectory() as tmp:
        raw = {
            name: extract_features(backbone, s, [layer], args.size, device, progress=False)[layer]
            for name, s in splits.items()
        }
        features = {layer: LayerFeatures(raw["train"], raw["val"], raw["test"])}
        layer_dim = raw["train"].shape[1]
        single = HeadConfig(lrs=[1e-3], epochs=args.epochs)
        grid16 = HeadConfig(lrs=LRS_16, wds=WDS_16, epochs=args.epochs)
        heads = best_of(
            args.repeat,
            {
                "single": lambda: time_probe(features, labels, classes, single, device),
                "grid16": lambda: time_probe(features, labels, classes, grid16, device),
            },
        )
        heads_ratio = heads["grid16"][0] / heads["single"][0]
        print(
            f"heads only (training on features in memory): single {heads['single'][0]:.3f}s,"
            f" grid16 {heads['grid16'][0]:.3f}s, ratio {heads_ratio:.2f}"
        )

        jobs = whole_probe_jobs(backbone, args.epochs, args.images, Path(tmp), device)
        best = best_of(args.repeat, {k: jobs[k] for k in ("single", "grid16")})
        best["uncached"] = best_of(1, {"uncached": jobs["uncached"]})["uncached"]
    for name, (seconds, top1) in best.items():
        print(
            f"whole probe, {name:>8}: {seconds:7.3f}s for {args.epochs} epochs"
            f"  (selected head test_top1 {top1:.3f})"
        )

    # For scale, not the target: wider features and many classes make heads' own math
    # (G x D x C per step) dominate, and the grid then costs more than the shared work.
    torch.manual_seed(0)
    wide = {
        "w": LayerFeatures(torch.randn(4000, 512), torch.randn(1000, 512), torch.randn(1000, 512))
    }
    wide_labels = {
        s: torch.randint(0, 200, (n,)) for s, n in (("train", 4000), ("val", 1000), ("test", 1000))
    }
    wide_single = HeadConfig(lrs=[1e-3], epochs=5)
    wide_grid = HeadConfig(lrs=LRS_16, wds=WDS_16, epochs=5)
    wide_best = best_of(
        1,
        {
            "single": lambda: time_probe(wide, wide_labels, 200, wide_single, device),
            "grid16": lambda: time_probe(wide, wide_labels, 200, wide_grid, device),
        },
    )
    ratio_wide = wide_best["grid16"][0] / wide_best["single"][0]
    print(f"heads only, wide features (D=512, 200 classes): grid16/single {ratio_wide:.2f}")
    steps = args.epochs * -(-args.images // 256)
    unavoidable = unavoidable_seconds(classes, layer_dim, device)
    for what, name in (
        ("two matmuls", "matmuls"),
        ("two matmuls, softmax exp and fused AdamW", "with_exp_adamw"),
    ):
        extra_per_step = unavoidable[(16, name)] - unavoidable[(1, name)]
        extra = steps * extra_per_step
        print(
            f"the 16 heads' {what}, per training step, timed alone, add {extra:.3f}s over one"
            f" head's: a floor of {1 + extra / best['single'][0]:.2f} for grid16/single"
            " (training steps only: the per-epoch val pass adds more)"
        )
    print(f"uncached/cached single: {best['uncached'][0] / best['single'][0]:.2f}")
    print(
        f"sixteen separate single probes would take {16 * best['single'][0]:.2f}s"
        f" vs one grid pass {best['grid16'][0]:.2f}s"
    )
    print(f"grid16/single: {best['grid16'][0] / best['single'][0]:.2f}")


if __name__ == "__main__":
    from jigsawkit.progress import progress_bars

    with progress_bars(False):  # figures only, no bars
        main()

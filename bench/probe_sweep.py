"""Cost of a 10-trial probe sweep against one probe run, side by side.

    python bench/probe_sweep.py [--images 3000] [--epochs 10] [--trials 10]

A small synthetic setup: the quickstart's CFN exported once with random weights (the
bench measures probing, not pretraining) and synthetic labelled images decoded once into
the image cache (an untimed warm-up). Then, each starting from an empty feature cache:

- single: ``run_experiment`` on the experiment (load the checkpoint, extract frozen
  features, train one linear head), the same experiment file a sweep trial runs;
- sweep: ``jigsawkit sweep``'s machinery (offline W&B engine, random method over the
  probe's lr, ``run_cap`` trials, each an offline W&B run and a run directory): the first
  trial extracts the features, every other trial reads them from the feature cache.

Single runs and sweeps alternate ``--repeat`` times and the fastest of each counts (the
machine is shared: other processes only ever add time). Ends with
``sweep10/single: X.XX`` (target <= 2).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

EXPERIMENT = """\
name: bench-probe
seed: 0
device: cpu
cache_dir: {cache}
checkpoint: {checkpoint}
pretrain: null
trackers:
  - {{name: wandb, mode: offline}}
backbone: {{name: cfn, channels: [32, 64, 128], kernel_sizes: [3, 3, 3], tile_fc: 256,
           input_size: 24}}
evaluate:
  - name: linear_probe
    data: {{name: synthetic, seed: 1, train_size: {train}, val_size: {held}, test_size: {held}}}
    image_size: 96
    epochs: {epochs}
    lr: 1.0e-3
    compare_random_init: false
"""

SWEEP = """\
experiment: experiment.yaml
sweep:
  method: random
  metric: {{name: probe.linear_probe.val_top1, goal: maximize}}
  run_cap: {trials}
  parameters:
    evaluate[0].lr: {{distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-1}}
strategy: {{name: wandb, mode: offline}}
"""


def export_random_cfn(path: Path) -> Path:
    from jigsawkit.registry import registry
    from jigsawkit.training.export import export_feature_extractor

    params = {
        "channels": [32, 64, 128],
        "kernel_sizes": [3, 3, 3],
        "tile_fc": 256,
        "input_size": 24,
    }
    backbone = registry("backbone").build("cfn", **params)
    return export_feature_extractor(backbone, path, {"backbone": {"name": "cfn", "params": params}})


def time_single(experiment_file: Path, cache: Path, out: Path) -> float:
    from jigsawkit.config.experiment import load_experiment
    from jigsawkit.runner import run_experiment

    shutil.rmtree(cache / "features", ignore_errors=True)
    start = time.perf_counter()
    config = load_experiment(experiment_file)
    run_experiment(config, out=out, progress=False)
    return time.perf_counter() - start


def time_sweep(sweep_file: Path, cache: Path, out: Path) -> tuple[float, list]:
    from jigsawkit.search.sweep_file import load_sweep_file
    from jigsawkit.search.sweep_runner import run_sweep

    shutil.rmtree(cache / "features", ignore_errors=True)
    start = time.perf_counter()
    spec = load_sweep_file(sweep_file)
    result = run_sweep(spec, out, progress=False)
    return time.perf_counter() - start, result.records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="probe train images")
    parser.add_argument("--epochs", type=int, default=10, help="probe epochs per trial")
    parser.add_argument("--trials", type=int, default=10, help="sweep trials (run_cap)")
    parser.add_argument("--repeat", type=int, default=2, help="alternating repeats")
    args = parser.parse_args()

    import os

    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory(prefix="bench-probe-sweep-") as tmp:
        root = Path(tmp)
        cache = root / "cache"
        checkpoint = export_random_cfn(root / "feature_extractor.pt")
        (root / "experiment.yaml").write_text(
            EXPERIMENT.format(
                cache=cache,
                checkpoint=checkpoint,
                train=args.images,
                held=max(args.images // 4, 10),
                epochs=args.epochs,
            )
        )
        (root / "sweep.yaml").write_text(SWEEP.format(trials=args.trials))
        warm = time_single(root / "experiment.yaml", cache, root / "warmup")
        print(f"warm-up (decodes the synthetic images once, untimed): {warm:.1f}s")
        singles, sweeps = [], []
        for i in range(args.repeat):
            singles.append(time_single(root / "experiment.yaml", cache, root / f"single-{i}"))
            seconds, records = time_sweep(root / "sweep.yaml", cache, root / f"sweep-{i}")
            sweeps.append(seconds)
        single, sweep_s = min(singles), min(sweeps)
        finished = [r for r in records if r.state == "finished"]
        print(f"probe: {args.images} train images, {args.epochs} epochs, CFN 32-64-128 on 96 px")
        print(
            "single probe run, fresh feature cache: "
            + ", ".join(f"{t:.2f}s" for t in singles)
            + f" (fastest {single:.2f}s)"
        )
        print(
            f"{len(records)}-trial probe sweep ({len(finished)} finished), fresh feature cache: "
            + ", ".join(f"{t:.2f}s" for t in sweeps)
            + f" (fastest {sweep_s:.2f}s, {sweep_s / max(len(records), 1):.2f}s per trial)"
        )
        best = max(finished, key=lambda r: r.metric) if finished else None
        if best is not None:
            print(
                f"best trial {best.id}: lr={best.params['evaluate.0.lr']:.3g} "
                f"val_top1={best.metric:.3f}"
            )
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"load average during the bench (1/5/15 min): {load} on {os.cpu_count()} CPUs")
        print(f"sweep{args.trials}/single: {sweep_s / single:.2f}")


if __name__ == "__main__":
    main()

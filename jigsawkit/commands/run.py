"""``jigsawkit run FILE``: pretrain, export and evaluate as the experiment says."""

from __future__ import annotations

import argparse

from jigsawkit.commands.validate import add_experiment_options
from jigsawkit.errors import UserError

HEADLINE_KEYS = (
    ("pretrain.test_top1", "pretext ({pretext}) top-1 (test)"),
    ("pretrain.chance", "chance level"),
    ("probe.linear_probe.test_top1", "linear probe top-1 (test), pretrained"),
    ("probe.linear_probe.random_init.test_top1", "linear probe top-1 (test), random init"),
    ("probe.linear_probe.gain_top1", "probe gain over random init"),
    ("probe.linear_probe.gain_top1_ci95_low", "probe gain, 95% interval low"),
    ("probe.linear_probe.gain_top1_ci95_high", "probe gain, 95% interval high"),
    ("probe.knn.test_top1", "kNN top-1 (test), pretrained"),
    ("probe.knn.random_init.test_top1", "kNN top-1 (test), random init"),
    ("probe.knn.gain_top1", "kNN gain over random init"),
    ("pretrain.images_per_second", "pretraining images/s"),
    ("run.wall_seconds", "wall time (s)"),
)


HELP = "run an experiment: pretrain, export the feature extractor, evaluate"

DESCRIPTION = (
    "Run an experiment file. Results go to a run directory "
    "(runs/<name>-<timestamp>/ by default): config.yaml, metrics.jsonl, summary.json, "
    "environment.json, checkpoints/, the exported feature extractor."
)

EXAMPLES = (
    "jigsawkit run experiments/quickstart.yaml",
    "jigsawkit run experiments/quickstart.yaml --set pretrain.epochs=1 --out runs/short",
    "jigsawkit run experiments/quickstart.yaml --resume runs/quickstart-20261128-101500",
    "jigsawkit run experiments/quickstart.yaml --nproc 2 --out runs/ddp",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="experiment YAML file")
    add_experiment_options(parser)
    parser.add_argument("--out", metavar="DIR", help="the run directory to write")
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="run data-parallel on N local processes (starts torchrun: "
        "torch.distributed.run --standalone --nproc_per_node N); see docs/distributed.md",
    )


def _launch(args: argparse.Namespace, config: dict) -> int:
    """``--nproc N``: check what would fail in every rank once, then start the N ranks."""
    from jigsawkit.rundir import new_run_dir
    from jigsawkit.training import distributed

    if args.nproc < 1:
        raise UserError(f"--nproc: {args.nproc} is not a number of processes (expected >= 1)")
    if config.get("pretrain"):
        distributed.check_global_batch(config["pretrain"]["batch_size"], args.nproc)
    # One run directory name for every rank (and for the failure message).
    run_dir = args.resume or args.out or str(new_run_dir(config["output_dir"], config["name"]))
    command = ["run", args.file, *(f"--set={item}" for item in args.overrides)]
    command += [f"--plugins={item}" for item in args.plugins]
    command += [f"--resume={run_dir}"] if args.resume else [f"--out={run_dir}"]
    command += ["--no-progress"] if args.no_progress else []
    distributed.launch(args.nproc, command, run_dir)
    return 0


def print_headline(summary: dict, run_dir: object, config: dict | None = None) -> None:
    """The results table; the pretext task is named by the experiment's ``pretext.name``."""
    from rich.console import Console
    from rich.table import Table

    pretext = ((config or {}).get("pretext") or {}).get("name") or "pretext task"
    table = Table(title=f"results: {run_dir}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in HEADLINE_KEYS:
        label = label.format(pretext=pretext)
        value = summary.get(key)
        if isinstance(value, float):
            text = f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
        elif value is None:
            continue
        else:
            text = str(value)
        table.add_row(label, text)
    Console().print(table)


def run(args: argparse.Namespace) -> int:
    from jigsawkit.config.experiment import load_experiment
    from jigsawkit.runner import run_experiment

    if args.out and args.resume:
        raise UserError("--out and --resume cannot be used together (resume writes into RUN_DIR)")
    config = load_experiment(args.file, overrides=args.overrides, plugin_dirs=args.plugins)
    from jigsawkit.training import distributed

    if args.nproc is not None and args.nproc != 1:
        if distributed.env_world().distributed:
            raise UserError("--nproc: this process is already a rank of a torchrun job")
        return _launch(args, config)

    try:
        result = run_experiment(
            config, out=args.out, resume=args.resume, progress=not args.no_progress
        )
        main = distributed.current().is_main
    finally:
        distributed.shutdown()
    if main:  # other ranks print nothing but errors
        print_headline(result.summary, result.run_dir, config)
    return 0

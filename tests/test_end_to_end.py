"""End to end through the real CLI (as a user runs it, output piped): a shortened quickstart
pretrains above chance, exports, probes, logs an offline W&B run whose history holds the
metrics, and `jigsawkit report` draws real figures from its run directory. Also the rotation
plugin's experiment, which runs with no change to the core.

These are the slowest tests of the suite (about a minute together on two cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# The quickstart with smaller data and fewer probe epochs: the same recipe, still learning.
SHORT_QUICKSTART = [
    "--set",
    "pretrain.epochs=2",
    "--set",
    "pretrain.data.train_size=3000",
    "--set",
    "pretrain.data.val_size=300",
    "--set",
    "pretrain.data.test_size=300",
    "--set",
    "evaluate[0].data.train_size=1000",
    "--set",
    "evaluate[0].data.val_size=300",
    "--set",
    "evaluate[0].data.test_size=300",
    "--set",
    "evaluate[0].epochs=5",
    "--set",
    "evaluate[1].data.train_size=1000",
    "--set",
    "evaluate[1].data.val_size=300",
    "--set",
    "evaluate[1].data.test_size=300",
    # The kNN monitor reads the probes' dataset: the same sizes, so the same image cache.
    "--set",
    "pretrain.monitor.data.train_size=1000",
    "--set",
    "pretrain.monitor.data.val_size=300",
    "--set",
    "pretrain.monitor.data.test_size=300",
]


def run_cli(args: list[str], cache: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"JIGSAWKIT_CACHE": str(cache), "WANDB_SILENT": "true", "NO_COLOR": "1"})
    return subprocess.run(
        [sys.executable, "-m", "jigsawkit", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def quickstart_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess]:
    base = tmp_path_factory.mktemp("e2e")
    run_dir = base / "run"
    done = run_cli(
        ["run", "experiments/quickstart.yaml", *SHORT_QUICKSTART, "--out", str(run_dir)],
        cache=base / "cache",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, done


def test_quickstart_learns_and_writes_the_run_directory(quickstart_run) -> None:
    run_dir, _ = quickstart_run
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "environment.json",
        "feature_extractor.pt",
        "checkpoints/last.pt",
    ):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["pretrain.num_classes"] == summary["pretrain.num_permutations"] == 64
    chance = 1 / summary["pretrain.num_classes"]
    # Held-out jigsaw accuracy well above chance even after this short run.
    assert summary["pretrain.test_top1"] >= 5 * chance, summary["pretrain.test_top1"]
    assert summary["pretrain.images_per_second"] > 0
    for key in (
        "probe.linear_probe.test_top1",
        "probe.linear_probe.best_lr",
        "probe.linear_probe.random_init.test_top1",
        "probe.knn.test_top1",
    ):
        assert key in summary, key
    assert 0.1 < summary["probe.linear_probe.test_top1"] <= 1.0  # 10 classes: above chance


def test_quickstart_logs_the_knn_monitor_every_epoch(quickstart_run) -> None:
    run_dir, _ = quickstart_run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [row["pretrain/epoch"] for row in rows if "pretrain/monitor_knn_top1" in row]
    val_epochs = [row["pretrain/epoch"] for row in rows if "pretrain/val_top1" in row]
    assert epochs == val_epochs == [1, 2]  # one value per epoch, in the epoch's val row
    assert all(0.0 <= row.get("pretrain/monitor_knn_top1", 0.0) <= 1.0 for row in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["pretrain.monitor_evaluations"] == 2
    assert summary["pretrain.monitor_best_epoch"] in (1, 2)


def test_exported_extractor_loads_frozen(quickstart_run) -> None:
    import torch

    import jigsawkit

    run_dir, _ = quickstart_run
    model = jigsawkit.load_feature_extractor(run_dir / "feature_extractor.pt")
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    features = model(torch.rand(2, 3, 24, 24))
    assert features.shape == (2, model.out_dim)


def test_offline_wandb_history_holds_the_metrics(quickstart_run) -> None:
    from wandb_records import read_history

    from jigsawkit.tracking.wandb_runfile import find_run_file

    run_dir, _ = quickstart_run
    history = read_history(find_run_file(next((run_dir / "wandb").glob("offline-run-*"))))
    keys = set().union(*(row.keys() for row in history))
    for name in (
        "pretrain/train_loss",
        "pretrain/train_top1",
        "pretrain/val_top1",
        "pretrain/val_loss",
        "probe/linear_probe/val_top1",
    ):
        assert name in keys, (name, sorted(keys))
    # The values are the ones the run directory recorded.
    local = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    local_val = [row["pretrain/val_top1"] for row in local if "pretrain/val_top1" in row]
    wandb_val = [row["pretrain/val_top1"] for row in history if "pretrain/val_top1" in row]
    assert wandb_val == pytest.approx(local_val)


def test_piped_output_has_no_terminal_control_sequences(quickstart_run) -> None:
    _, done = quickstart_run
    assert "\x1b[" not in done.stdout and "\x1b[" not in done.stderr
    assert "Traceback" not in done.stderr


def test_report_draws_real_figures(quickstart_run, tmp_path: Path) -> None:
    from PIL import Image

    run_dir, _ = quickstart_run
    done = run_cli(["report", str(run_dir), "--out", str(tmp_path)], cache=tmp_path / "c")
    assert done.returncode == 0, done.stderr
    figures = sorted(tmp_path.glob("*.png"))
    assert len(figures) >= 2, figures
    for figure in figures:
        with Image.open(figure) as image:
            image.verify()
        with Image.open(figure) as image:
            assert image.width >= 300 and image.height >= 200
    report = (tmp_path / "report.md").read_text()
    assert all(f.name in report for f in figures)


def test_rotation_plugin_experiment_runs_without_core_changes(tmp_path: Path) -> None:
    done = run_cli(
        [
            "run",
            "experiments/rotation.yaml",
            "--out",
            str(tmp_path / "run"),
            "--set",
            "pretrain.epochs=1",
            "--set",
            "pretrain.max_steps_per_epoch=5",
            "--set",
            "pretrain.data.train_size=400",
            "--set",
            "pretrain.data.val_size=100",
            "--set",
            "pretrain.data.test_size=100",
            "--set",
            "evaluate[0].epochs=2",
            "--set",
            "evaluate[0].data.train_size=200",
            "--set",
            "evaluate[0].data.val_size=100",
            "--set",
            "evaluate[0].data.test_size=100",
        ],
        cache=tmp_path / "cache",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["pretrain.num_classes"] == 4  # the task's classes, in task-neutral words
    assert "pretext (rotation) top-1 (test)" in done.stdout and "jigsaw" not in done.stdout
    assert "probe.linear_probe.test_top1" in summary
    # The probe feeds what rotation declared and the export recorded (issue 12).
    assert summary["pretrain.input_normalization"] == "per_image"
    assert summary["probe.linear_probe.normalize"] == "per_image"
    assert summary["probe.linear_probe.normalize_from"] == "pretraining"


TINY_RUN = [
    "--set",
    "pretrain.epochs=3",
    "--set",
    "pretrain.max_steps_per_epoch=4",
    "--set",
    "pretrain.batch_size=16",
    "--set",
    "pretrain.data.train_size=200",
    "--set",
    "pretrain.data.val_size=32",
    "--set",
    "pretrain.data.test_size=32",
    "--set",
    "pretrain.precision=fp32",
    "--set",
    "evaluate=[]",
    "--set",
    "trackers=[console]",
]


def test_resume_after_a_kill_gives_the_same_final_metrics(tmp_path: Path) -> None:
    """Kill a run once its first checkpoint exists, resume it, compare with a straight run."""
    import signal
    import time

    cache = tmp_path / "cache"
    straight = run_cli(
        ["run", "experiments/quickstart.yaml", *TINY_RUN, "--out", str(tmp_path / "straight")],
        cache=cache,
    )
    assert straight.returncode == 0, straight.stderr[-2000:]

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"JIGSAWKIT_CACHE": str(cache)})
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jigsawkit",
            "run",
            "experiments/quickstart.yaml",
            *TINY_RUN,
            "--set",
            "pretrain.max_steps_per_epoch=4",
            "--no-progress",
            "--out",
            str(interrupted),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = interrupted / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists()
    if (interrupted / "feature_extractor.pt").exists():
        pytest.skip("the run finished before it could be killed (machine too fast)")

    resumed = run_cli(
        [
            "run",
            "experiments/quickstart.yaml",
            *TINY_RUN,
            "--set",
            "pretrain.max_steps_per_epoch=4",
            "--resume",
            str(interrupted),
        ],
        cache=cache,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "straight" / "summary.json").read_text())
    b = json.loads((interrupted / "summary.json").read_text())
    for key in (
        "pretrain.test_top1",
        "pretrain.test_loss",
        "pretrain.val_loss",
        "pretrain.train_loss",
    ):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key


def test_resume_with_a_different_experiment_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run_cli(
        [
            "run",
            "experiments/quickstart.yaml",
            *TINY_RUN,
            "--set",
            "pretrain.epochs=1",
            "--out",
            str(tmp_path / "run"),
        ],
        cache=cache,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    again = run_cli(
        [
            "run",
            "experiments/quickstart.yaml",
            *TINY_RUN,
            "--set",
            "pretrain.epochs=1",
            "--set",
            "seed=5",
            "--resume",
            str(tmp_path / "run"),
        ],
        cache=cache,
    )
    assert again.returncode == 2
    assert "differs" in again.stderr and "seed" in again.stderr
    assert "Traceback" not in again.stderr


def refused_run(
    tmp_path: Path, experiment: str, override: str, timeout: int = 600
) -> tuple[str, str]:
    """Run ``experiment`` with one ``--set``; it must fail with exit code 2, one ``error:``
    line, no traceback and no run directory. Returns that line and stdout."""
    run_dir = tmp_path / "run"
    done = run_cli(
        ["run", experiment, "--set", override, "--out", str(run_dir)],
        cache=tmp_path / "cache",
        timeout=timeout,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert not run_dir.exists()
    return errors[0], done.stdout


def test_missing_data_fails_in_one_line_and_leaves_no_run_directory(tmp_path: Path) -> None:
    error, _ = refused_run(
        tmp_path, "experiments/baseline.yaml", f"pretrain.data.root={tmp_path / 'data'}"
    )
    assert "places365" in error and "val_256.tar" in error


def test_missing_probe_data_fails_before_pretraining(tmp_path: Path) -> None:
    error, stdout = refused_run(
        tmp_path,
        "experiments/quickstart.yaml",
        f"evaluate[0].data={{name: tiny_imagenet, root: {tmp_path / 'data'}}}",
        timeout=60,  # far less than the quickstart's pretraining
    )
    assert error.startswith("error: evaluate.linear_probe.data: tiny_imagenet:")
    assert "tiny-imagenet-200.zip" in error and "pretrain" not in stdout

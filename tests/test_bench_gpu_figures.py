"""bench/gpu_figures.sh, the prepared script for the GPU figures, works on this CPU machine in
its dry-run mode (tiny settings, compile with the eager backend), and the baseline's CFN it
measures is the one of experiments/baseline.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from pretrain_throughput import build_task, model_settings  # noqa: E402


def test_the_baseline_model_is_the_one_of_its_experiment() -> None:
    config = yaml.safe_load((ROOT / "experiments" / "baseline.yaml").read_text())
    backbone, jigsaw = model_settings("baseline")
    assert backbone == {k: v for k, v in config["backbone"].items() if k != "name"}
    assert jigsaw == {k: v for k, v in config["pretext"].items() if k != "name"}
    task = build_task(__import__("torch").device("cpu"), False, "baseline")
    assert task.image_size == config["pretext"]["crop"] == 255
    assert task.num_classes == 100


@pytest.mark.slow
def test_the_dry_run_measures_every_configuration_it_names(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "ONLY": "throughput-quickstart",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        ["bash", "bench/gpu_figures.sh", "--dry-run"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    measured = [line for line in summary if "end_to_end/model_only:" in line]
    assert [line.split(" ")[0] for line in measured] == [
        "throughput-quickstart-base",
        "throughput-quickstart-all",
    ]
    assert "precision bf16, channels_last on, compile eager" in measured[1]
    skipped = [line for line in summary if "skipped (ONLY=" in line]
    assert {line.split(":")[0] for line in skipped} == {
        "throughput-baseline-base", "throughput-baseline-all", "probe-grid", "ddp-scaling"
    }  # fmt: skip
    assert (tmp_path / "throughput-quickstart-all.txt").read_text().startswith("$ python ")

"""bench/probe_grid.py keeps running and keeps its contract: the figures it prints, its
last line, and a clear exit 2 on a bad --device."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "probe_grid.py"


def run_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_probe_grid_bench_prints_its_figures_and_ends_with_the_ratio():
    done = run_bench("--repeat", "1", "--epochs", "2", "--images", "300", "--threads", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"grid16/single: \d+\.\d\d", lines[-1]), lines[-1]
    for name in ("single", "grid16", "uncached"):
        assert any(re.match(rf"whole probe, +{name}: +\d+\.\d+s", line) for line in lines)
    floors = [line for line in lines if "a floor of" in line]
    assert len(floors) == 2, lines
    for line in floors:
        assert float(re.search(r"a floor of (\d+\.\d+)", line).group(1)) > 1.0


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "meta"])
def test_probe_grid_bench_rejects_an_unknown_device_with_exit_2(device):
    done = run_bench("--device", device)
    assert done.returncode == 2
    assert f"--device: unknown device '{device}'; expected auto, cpu, cuda or cuda:N" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_probe_grid_bench_says_when_no_cuda_device_is_there():
    done = run_bench("--device", "cuda")
    assert done.returncode == 2
    assert "--device: 'cuda' asked for but CUDA is not available here" in done.stderr

"""Data-parallel runs on CPU with gloo, 2 processes through torchrun (torch.distributed.run).

- the same global batch on 1 and 2 processes takes the same optimizer steps (no BatchNorm,
  targets that need no random draws): parameters equal to 1e-5;
- a killed rank ends the job with an error within a bounded time, the last checkpoint kept,
  and a resume with the same world size ends with the numbers of a run never interrupted;
  another world size is refused in one line;
- the loader's rank shards put together are exactly the single-process batches;
- a global batch that does not divide by the world size is one line, exit 2, nothing written;
- end to end through the CLI (``--nproc``, which starts torchrun's launcher): one run
  directory with run.world_size 2 and one W&B run; a killed rank is one line naming it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from jigsawkit.data.base import ImageSplit
from jigsawkit.data.loader import BatchLoader
from jigsawkit.training.distributed import KILL_RANK1_AFTER_ENV, TIMEOUT_ENV

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TORCHELASTIC"))}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR"):
        env.pop(name, None)
    env.update({"OMP_NUM_THREADS": "1", "WANDB_SILENT": "true", "NO_COLOR": "1", **extra})
    env["PYTHONFAULTHANDLER"] = "1"  # a rank that aborts prints its Python stacks
    return env


def torchrun(args: list[str], nproc: int = 2, timeout: int = 240, **env: str):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={nproc}", *args]
    return subprocess.run(
        command, env=_env(**env), capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def worker(out: Path, mode: str, epochs: int, run_dir: Path, nproc: int, *extra: str, **env):
    args = [str(WORKER), str(out), mode, str(epochs), "0", str(run_dir), *extra]
    if nproc == 1:
        return subprocess.run(
            [sys.executable, *args], env=_env(**env), capture_output=True, text=True, timeout=240
        )
    return torchrun(args, nproc, **env)


def test_rank_shards_together_are_the_single_process_batches() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (50, 4, 4, 3), dtype=np.uint8)
    data = ImageSplit(images, np.arange(50), 50)
    for drop_last in (True, False):
        single = BatchLoader(data, 12, True, 3, "cpu", drop_last, epoch=2).batch_indices()
        shards = [
            BatchLoader(data, 12, True, 3, "cpu", drop_last, 2, rank=r, world_size=2)
            for r in (0, 1)
        ]
        per_rank = [loader.batch_indices() for loader in shards]
        assert len(per_rank[0]) == len(single)
        for step, batch in enumerate(single):
            together = np.concatenate([per_rank[0][step], per_rank[1][step]])
            assert sorted(together.tolist()) == batch.tolist()
            assert len(per_rank[0][step]) == len(per_rank[1][step])


def test_a_batch_that_does_not_divide_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    env = _env(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", JIGSAWKIT_CACHE=str(tmp_path / "c"))
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "jigsawkit", "run", "experiments/quickstart.yaml",
         "--set", "pretrain.batch_size=63", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pretrain.batch_size: 63 does not divide" in lines[0], lines
    assert not out.exists() and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_two_processes_take_the_same_steps_as_one(tmp_path: Path) -> None:
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    done = worker(one, "fixed", 2, tmp_path / "r1", 1)
    assert done.returncode == 0, done.stderr[:3000]
    done = worker(two, "fixed", 2, tmp_path / "r2", 2)
    assert done.returncode == 0, done.stderr[:3000]
    a, b = torch.load(one), torch.load(two)
    assert a["metrics"]["steps"] == b["metrics"]["steps"] == 20
    for name, value in a["params"].items():
        assert torch.allclose(value, b["params"][name], atol=1e-5, rtol=0), name
    # The parameters moved: equality is not two untrained copies.
    start = torch.load(tmp_path / "r1" / "checkpoints" / "last.pt", weights_only=True)
    assert start["world_size"] == 1
    for key in ("train_loss", "val_loss", "test_loss", "test_top1"):
        assert a["metrics"][key] == pytest.approx(b["metrics"][key], abs=1e-5), key


@pytest.mark.slow
def test_killed_rank_ends_the_job_and_another_world_size_is_refused(tmp_path: Path):
    run_dir, out = tmp_path / "killed", tmp_path / "resumed.pt"
    started = time.monotonic()
    done = worker(out, "random", 2, run_dir, 2, **{KILL_RANK1_AFTER_ENV: "13", TIMEOUT_ENV: "30"})
    assert done.returncode != 0
    assert time.monotonic() - started < 90  # no hang: torchrun tears the job down
    assert "SIGKILL" in done.stderr and not out.exists()
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["world_size"] == 2  # the last good one

    refused = worker(tmp_path / "x.pt", "random", 2, run_dir, 1, "resume")
    assert refused.returncode != 0
    assert "written by 2 process(es), resumed with 1" in refused.stderr


@pytest.mark.slow
def test_resume_with_the_same_world_size_matches_an_uninterrupted_run(tmp_path: Path):
    full = tmp_path / "full.pt"
    done = worker(full, "random", 2, tmp_path / "full", 2)
    assert done.returncode == 0, done.stderr[:3000]
    run_dir, out = tmp_path / "killed", tmp_path / "resumed.pt"
    done = worker(out, "random", 2, run_dir, 2, **{KILL_RANK1_AFTER_ENV: "13", TIMEOUT_ENV: "30"})
    assert done.returncode != 0
    done = worker(out, "random", 2, run_dir, 2, "resume")
    assert done.returncode == 0, done.stderr[:3000]
    a, b = torch.load(full), torch.load(out)
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "test_loss", "test_top1"):
        assert a["metrics"][key] == b["metrics"][key], key
    for name, value in a["params"].items():
        assert torch.equal(value, b["params"][name]), name


SMALL = [
    "--set", "pretrain.epochs=1", "--set", "pretrain.data.train_size=640",
    "--set", "pretrain.data.val_size=128", "--set", "pretrain.data.test_size=128",
    "--set", "evaluate=[]", "--no-progress",
    "--set", "pretrain.monitor.data={name: synthetic, seed: 1, train_size: 200, val_size: 100, "
    "test_size: 16}",
]  # fmt: skip


@pytest.mark.slow
def test_end_to_end_writes_one_run_directory_with_the_world_size(tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"run{nproc}"
        args = ["-m", "jigsawkit", "run", "experiments/quickstart.yaml", *SMALL, "--out", str(out)]
        done = subprocess.run(
            [sys.executable, *args, "--nproc", str(nproc)], env=_env(JIGSAWKIT_CACHE=cache),
            capture_output=True, text=True, timeout=240, cwd=ROOT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[:3000]
        runs[nproc] = json.loads((out / "summary.json").read_text())
        assert len(list((out / "wandb").glob("offline-run-*"))) == 1
    assert runs[2]["run.world_size"] == 2 and "run.world_size" not in runs[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "run1", "run2"]
    assert runs[1]["pretrain.steps"] == runs[2]["pretrain.steps"] == 10
    assert runs[1]["pretrain.train_images"] == runs[2]["pretrain.train_images"] == 640
    # The kNN monitor runs on rank 0 alone; the other rank waits for it at the epoch's end.
    assert runs[1]["pretrain.monitor_evaluations"] == runs[2]["pretrain.monitor_evaluations"] == 1
    # Rank 1 draws its own puzzles, so the numbers are close, not equal: one epoch from the
    # same start on the same images moves the loss by the same amount to within 0.05.
    for key in ("pretrain.train_loss", "pretrain.val_loss", "pretrain.test_loss"):
        assert runs[1][key] == pytest.approx(runs[2][key], abs=0.05), key


@pytest.mark.slow
def test_nproc_names_the_killed_rank_and_the_last_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["-m", "jigsawkit", "run", "experiments/quickstart.yaml", *SMALL, "--out", str(out)]
    env = _env(JIGSAWKIT_CACHE=str(tmp_path / "cache"), **{KILL_RANK1_AFTER_ENV: "12"})
    done = subprocess.run(
        [sys.executable, *args, "--set", "pretrain.epochs=2", "--nproc", "2"],
        env=env, capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"error: rank 1 of 2 failed (signal SIGKILL); the job was stopped; "
        f"last good checkpoint: {out / 'checkpoints' / 'last.pt'}"
    )
    assert not (out / "summary.json").exists() or "pretrain.test_top1" not in (
        json.loads((out / "summary.json").read_text())
    )


# Evaluation across ranks: a tiny pretraining, then a linear probe and kNN on every layer,
# each compared with the random-init twin (BatchNorm recalibrated). Extraction batches of 64
# split the 300 probe-train images 2/3 over the ranks, so both ranks extract and merge.
EVAL_EXPERIMENT = """
name: ddp-eval
seed: 0
device: cpu
trackers: []
backbone: {name: cfn, channels: [8, 16, 32], kernel_sizes: [3, 3, 3], tile_fc: 32, input_size: 24}
pretext:
  name: jigsaw
  grid: 3
  crop: 96
  tile: 24
  permutations: {count: 8, selection: maximal, seed: 0}
  head_hidden: 32
pretrain:
  data: {name: synthetic, seed: 0, train_size: 256, val_size: 64, test_size: 64}
  epochs: 1
  batch_size: 32
  optimizer: {name: adam, lr: 0.001, weight_decay: 0.0}
  precision: fp32
evaluate:
  - name: linear_probe
    data: &probe {name: synthetic, seed: 1, train_size: 300, val_size: 100, test_size: 100}
    image_size: 48
    layers: all
    epochs: 4
    batch_size: 64
    compare_random_init: true
  - name: knn
    data: *probe
    image_size: 48
    layers: all
    compare_random_init: true
"""
# Features within this of the single-process ones (the random-init twin's BatchNorm
# statistics are averaged over the ranks in float64 instead of accumulated batch by batch in
# float32: rounding, nothing else); probe metrics within one test image in 100.
FEATURE_ATOL, FEATURE_RTOL, METRIC_ABS = 1e-5, 1e-4, 0.01
PROBE_KEYS = (
    "probe.linear_probe.test_top1", "probe.linear_probe.random_init.test_top1",
    "probe.linear_probe.val_top1", "probe.knn.test_top1", "probe.knn.random_init.test_top1",
)  # fmt: skip


def _run_cli(experiment: Path, out: Path, cache: Path, nproc: int, *sets: str, **env: str):
    args = ["-m", "jigsawkit", "run", str(experiment), "--no-progress", "--out", str(out)]
    for value in sets:
        args += ["--set", value]
    return subprocess.run(
        [sys.executable, *args, "--nproc", str(nproc)], env=_env(JIGSAWKIT_CACHE=str(cache), **env),
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip


def _feature_entries(cache: Path) -> dict[str, tuple[int, int]]:
    """Each feature cache file's (inode, mtime_ns): a rewritten entry gets a new inode."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (cache / "features").iterdir()}


@pytest.mark.slow
def test_ranks_extract_the_features_into_the_single_process_cache(tmp_path: Path) -> None:
    experiment = tmp_path / "ddp_eval.yaml"
    experiment.write_text(EVAL_EXPERIMENT)
    shared_cache, fresh_cache = tmp_path / "cache2", tmp_path / "cache1"
    done = _run_cli(experiment, tmp_path / "run2", shared_cache, 2)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert two["run.world_size"] == 2
    written = _feature_entries(shared_cache)
    # train/val/test of the probed backbone (both evaluators read them) and of two random-init
    # twins (recalibrated in batches of 64 for the probe, of kNN's default 256 for kNN).
    assert len(written) == 9

    # One process evaluating the exported backbone from scratch writes the same entries.
    export = tmp_path / "run2" / "feature_extractor.pt"
    alone = ("pretrain=null", f"checkpoint={export}")
    done = _run_cli(experiment, tmp_path / "run1", fresh_cache, 1, *alone)
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(_feature_entries(fresh_cache)) == set(written)
    for name in written:
        a = torch.load(shared_cache / "features" / name, weights_only=True)
        b = torch.load(fresh_cache / "features" / name, weights_only=True)
        assert a["meta"] == b["meta"] and set(a["features"]) == set(b["features"])
        for layer, value in a["features"].items():
            torch.testing.assert_close(
                value, b["features"][layer], atol=FEATURE_ATOL, rtol=FEATURE_RTOL
            )
    one = json.loads((tmp_path / "run1" / "summary.json").read_text())
    for key in PROBE_KEYS:
        assert two[key] == pytest.approx(one[key], abs=METRIC_ABS), key

    # A later single-process run on the ranks' cache extracts nothing: every entry is a hit.
    done = _run_cli(experiment, tmp_path / "again", shared_cache, 1, *alone)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _feature_entries(shared_cache) == written
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    for key in PROBE_KEYS:
        assert again[key] == pytest.approx(two[key], abs=METRIC_ABS), key


@pytest.mark.slow
def test_a_rank_killed_while_extracting_features_ends_the_job(tmp_path: Path) -> None:
    experiment = tmp_path / "ddp_eval.yaml"
    experiment.write_text(EVAL_EXPERIMENT)
    started = time.monotonic()
    done = _run_cli(
        experiment, tmp_path / "run", tmp_path / "cache", 2,
        JIGSAWKIT_TEST_KILL_AT="feature-share:1@1", **{TIMEOUT_ENV: "30"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert time.monotonic() - started < 120  # no hang: the job ends with the rank
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: rank 1 of 2 failed (signal SIGKILL); the job was stopped")
    )
    assert not list((tmp_path / "cache" / "features").glob("*.pt"))  # nothing half-gathered

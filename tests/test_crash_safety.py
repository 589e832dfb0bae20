"""Crash safety, measured: kill -9 a small run at named points and at random moments, resume
it, and compare with a run never interrupted.

A process is killed with ``JIGSAWKIT_TEST_KILL_AT=<point>:<n>`` (``jigsawkit.killpoints``:
it sends itself SIGKILL the n-th time it reaches the point: mid checkpoint write, mid
feature-cache write, between the pixels and the marker of an image-cache entry, ...). After
each kill, every file the run directory and the caches hold (temporary files aside) must be
whole: readable, and verified where the reader verifies. Then the run is resumed with
``--resume`` (or started again when the kill came before its run directory existed) and its
final metrics must equal the uninterrupted run's, to the last bit (CPU, one thread).

Also: a NaN loss stops a run with one line, exit code 2, and keeps its last good checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# The quickstart, tiny: 3 epochs of 3 steps, a kNN probe (it writes the feature cache).
TINY = [
    "pretrain.epochs=3",
    "pretrain.max_steps_per_epoch=3",
    "pretrain.batch_size=16",
    "pretrain.data.train_size=64",
    "pretrain.data.val_size=16",
    "pretrain.data.test_size=16",
    "pretrain.precision=fp32",
    "backbone.channels=[8, 16, 32]",
    "backbone.tile_fc=32",
    "pretext.head_hidden=32",
    "trackers=[console]",
    "device=cpu",
    "evaluate=[{name: knn, k: 5, data: {name: synthetic, seed: 1, train_size: 48, "
    "val_size: 16, test_size: 16}, image_size: 48, compare_random_init: false}]",
    # The kNN monitor on the probe's images (the same cache entries): its state must
    # survive every kill too.
    "pretrain.monitor={data: {name: synthetic, seed: 1, train_size: 48, val_size: 16, "
    "test_size: 16}, image_size: 48, k: 5}",
]

COMPARED = (
    "pretrain.train_loss",
    "pretrain.train_top1",
    "pretrain.val_loss",
    "pretrain.val_top1",
    "pretrain.test_loss",
    "pretrain.test_top1",
    "pretrain.epochs",
    "pretrain.steps",
    "probe.knn.test_top1",
    "pretrain.monitor_knn_top1_best",
    "pretrain.monitor_best_epoch",
    "pretrain.monitor_evaluations",
)

# (kill point, hit): each lands in a different place of the run.
KILL_POINTS = [
    ("image-cache-write", 1),  # the first split's pixels half written (no run dir yet)
    ("image-cache-meta", 2),  # pixels in place, the entry not yet marked complete
    ("train-step", 2),  # mid first epoch, no checkpoint yet
    ("epoch-end", 1),  # validated, checkpoint not written
    ("checkpoint-write", 1),  # the first checkpoint half written
    ("checkpoint-saved", 1),  # right after the first checkpoint
    ("checkpoint-write", 2),  # the second checkpoint half written over the first
    ("checkpoint-write", 3),  # the last checkpoint half written
    ("export-write", 1),  # pretraining done, the feature extractor half written
    ("evaluate", 1),  # exported, probe not started
    ("feature-cache-write", 1),  # the probe's first feature file half written
    ("feature-cache-write", 2),  # a later one
    ("summary-write", 3),  # summary.json half written
]
RANDOM_KILLS = 2


def environment(cache: Path, kill: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "JIGSAWKIT_"))}
    env.update(
        JIGSAWKIT_CACHE=str(cache),
        OMP_NUM_THREADS="1",  # two runs side by side on two cores; same numbers every time
        PYTHONPATH=str(ROOT),
    )
    if kill:
        env["JIGSAWKIT_TEST_KILL_AT"] = kill
    return env


def command(*args: str) -> list[str]:
    sets = [part for item in TINY for part in ("--set", item)]
    run = [sys.executable, "-m", "jigsawkit", "run", "experiments/quickstart.yaml"]
    return [*run, *sets, "--no-progress", *args]


def run(args: list[str], cache: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=ROOT, env=environment(cache, kill), capture_output=True, text=True, timeout=600
    )


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def check_whole(folder: Path) -> None:
    """Every file a later run could read is whole: JSON parses, torch files load (weights
    only), image-cache entries open, feature-cache entries verify."""
    import numpy as np
    import torch

    from jigsawkit.data.cache import open_image_cache

    if not folder.exists():
        return
    for path in folder.rglob("*"):
        if path.is_dir() or is_temporary(path):
            continue
        if path.suffix == ".json" and path.parent.name != "images":
            json.loads(path.read_text())
        elif path.suffix == ".pt":
            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".u8" and (path.with_suffix(".json")).exists():
            assert open_image_cache(path.parent, path.stem) is not None, path
        elif path.name.endswith(".labels.npy"):
            np.load(path, allow_pickle=False)
        elif path.name == "metrics.jsonl":
            lines = path.read_text().splitlines()
            for line in lines[:-1]:  # the last line may be cut by the kill; it is repaired
                json.loads(line)


def features_verify(cache: Path) -> None:
    import torch

    from jigsawkit.evaluators.features import features_digest

    for path in (cache / "features").glob("*.pt"):
        if is_temporary(path):
            continue
        stored = torch.load(path, map_location="cpu", weights_only=True)
        assert stored["digest"] == features_digest(stored["features"]), path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, Path, float]:
    """The uninterrupted run, a cache holding only its decoded images, its wall time."""
    base = tmp_path_factory.mktemp("reference")
    started = time.perf_counter()
    done = run(command("--out", str(base / "run")), base / "cache")
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    images_only = base / "images-only"
    shutil.copytree(base / "cache" / "images", images_only / "images")
    return summary(base / "run"), images_only, wall


def kill_and_resume(tmp: Path, images_only: Path, kill: str | None, delay: float = 0.0) -> dict:
    """Kill a run (at a point, or after ``delay`` seconds), check what it left, finish it."""
    cache = tmp / "cache"
    if kill is None or not kill.startswith("image-cache"):
        shutil.copytree(images_only, cache)
    run_dir = tmp / "run"
    if kill is not None:
        killed = run(command("--out", str(run_dir)), cache, kill)
        assert killed.returncode == -signal.SIGKILL, (
            kill,
            killed.returncode,
            killed.stderr[-2000:],
        )
    else:
        process = subprocess.Popen(
            command("--out", str(run_dir)),
            cwd=ROOT,
            env=environment(cache),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
    check_whole(run_dir)
    check_whole(cache)
    features_verify(cache)
    if (run_dir / "config.yaml").exists():
        again = run(command("--resume", str(run_dir)), cache)
    else:  # killed before its run directory existed: nothing to resume, start it again
        assert not run_dir.exists()
        again = run(command("--out", str(run_dir)), cache)
    assert again.returncode == 0, (kill, again.stderr[-3000:])
    check_whole(run_dir)
    features_verify(cache)
    return summary(run_dir)


def test_kill_anywhere_then_resume_gives_the_same_final_metrics(reference, tmp_path):
    expected, images_only, wall = reference
    assert expected["run.state"] == "finished"
    rng = random.Random(14)
    scenarios = [(f"{point}:{hit}", 0.0) for point, hit in KILL_POINTS]
    scenarios += [(None, rng.uniform(0.3, 0.9) * wall) for _ in range(RANDOM_KILLS)]

    def one(index: int) -> tuple[str, dict]:
        kill, delay = scenarios[index]
        folder = tmp_path / f"kill-{index}"
        folder.mkdir()
        label = kill or f"random after {delay:.1f}s"
        return label, kill_and_resume(folder, images_only, kill, delay)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, range(len(scenarios))))
    assert len(results) >= 10
    print(f"{len(results)} kills, each resumed to the uninterrupted run's metrics")
    for label, resumed in results:
        assert resumed["run.state"] == "finished" and "run.error" not in resumed, label
        for key in COMPARED:
            assert resumed[key] == expected[key], (label, key, resumed[key], expected[key])


NAN_PLUGIN = """\
from jigsawkit import register_pretext
from jigsawkit.registry import registry


@register_pretext("nan_after", schema={"properties": {"steps": {"type": "integer"}}})
def nan_after(backbone, steps):
    '''The quickstart's jigsaw, whose loss turns NaN after `steps` training steps.'''
    task = registry("pretext").build("jigsaw", backbone=backbone, grid=3, crop=96, tile=24,
                                     permutations={"count": 4})
    loss, calls = task.loss, [0]

    def poisoned(logits, targets):
        value = loss(logits, targets)
        if task.training:
            calls[0] += 1
            if calls[0] > steps:
                value = value * float("nan")
        return value

    task.loss = poisoned
    return task
"""


def test_a_nan_loss_stops_in_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "nan_task.py").write_text(NAN_PLUGIN)
    run_dir = tmp_path / "run"
    done = run(
        command(
            "--set",
            "pretext={name: nan_after, steps: 3}",  # epoch 1: steps 1-3 fine; step 4: NaN
            "--set",
            "evaluate=[]",
            "--plugins",
            str(plugins),
            "--out",
            str(run_dir),
        ),
        tmp_path / "cache",
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    checkpoint = run_dir / "checkpoints" / "last.pt"
    assert "loss is nan at step 4 (epoch 2)" in errors[0] and str(checkpoint) in errors[0]
    from jigsawkit.training.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)  # whole, and the last good one: epoch 1
    assert state["epoch"] == 1 and state["global_step"] == 3
    recorded = summary(run_dir)
    assert recorded["run.state"] == "failed" and "diverged" in recorded["run.error"]
    assert not (run_dir / "feature_extractor.pt").exists()

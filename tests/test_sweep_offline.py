"""Offline sweeps end to end: W&B's engine proposes, the real runner runs each trial.

Trials run a real (tiny) experiment whose evaluator comes from a temporary plugin: it
returns a metric computed from its parameters and logs it per epoch, so a sweep takes
seconds while every piece between the sweep file and the run directories is the real one.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jigsawkit.cli import main
from jigsawkit.config.experiment import load_experiment
from jigsawkit.progress import bars_enabled
from jigsawkit.search.sweep_file import load_sweep_file
from jigsawkit.search.sweep_runner import TrialOutcome, run_sweep

PLUGIN = '''
import math
import time

from jigsawkit import register_evaluator


class FakeProbe:
    def __init__(self, lr, batch_size, epochs, delay):
        self.lr, self.batch_size, self.epochs, self.delay = lr, batch_size, epochs, delay

    def evaluate(self, ctx):
        target = abs(math.log10(self.lr) + 2.5) + self.batch_size / 1000
        for epoch in range(1, self.epochs + 1):
            time.sleep(self.delay)
            row = {"probe/fk_probe/val_loss": target + (self.epochs - epoch) * 0.05}
            if ctx.epoch_end("probe/fk_probe", epoch, row).stop_requested:
                break
        (ctx.run_dir / "backbone_id.txt").write_text(ctx.checkpoint_id)
        return {"val_loss": target, "test_top1": 1.0 / (1.0 + target)}


@register_evaluator("fk_probe", schema={"properties": {
    "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.01},
    "batch_size": {"type": "integer", "minimum": 1, "default": 64},
    "epochs": {"type": "integer", "minimum": 1, "default": 4},
    "delay": {"type": "number", "minimum": 0, "default": 0.0}}})
def fk_probe(**params):
    """A fake probe: its val loss is a function of lr and batch size."""
    return FakeProbe(**params)
'''

EXPERIMENT = """\
name: tiny
seed: 0
device: cpu
cache_dir: {cache}
trackers: [console]
backbone: {{name: cfn, channels: [8, 16], kernel_sizes: [3, 3], tile_fc: 32, input_size: 24}}
pretext: {{name: jigsaw, grid: 2, crop: 48, tile: 24, permutations: {{count: 24}}}}
pretrain:
  data: {{name: synthetic, train_size: 64, val_size: 32, test_size: 32, image_size: 48}}
  epochs: 1
  batch_size: 32
evaluate:
  - name: fk_probe
"""


def expected_loss(params: dict) -> float:
    return (
        abs(math.log10(params["evaluate.0.lr"]) + 2.5)
        + params.get("evaluate.0.batch_size", 64) / 1000
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny pretrained feature extractor, made once for the module."""
    from jigsawkit.runner import run_experiment

    folder = tmp_path_factory.mktemp("base")
    path = folder / "experiment.yaml"
    path.write_text(
        EXPERIMENT.format(cache=folder / "cache")
        .replace("  - name: fk_probe\n", "")
        .replace("evaluate:\n", "evaluate: []\n")
    )
    result = run_experiment(load_experiment(path), out=folder / "run", progress=False)
    return Path(result.summary["pretrain.export_path"])


@pytest.fixture
def folder(tmp_path, clean_registries) -> Path:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "fk_probe.py").write_text(PLUGIN)
    (tmp_path / "experiment.yaml").write_text(EXPERIMENT.format(cache=tmp_path / "cache"))
    return tmp_path


def sweep_file(folder: Path, method: str, parameters: str, extra: str = "", **keys: str) -> Path:
    lines = [
        "experiment: experiment.yaml",
        "sweep:",
        f"  method: {method}",
        "  metric: {name: probe.fk_probe.val_loss, goal: minimize}",
        *(f"  {k}: {v}" for k, v in keys.items()),
        "  parameters:",
        *(f"    {line}" for line in parameters.strip().splitlines()),
    ]
    path = folder / "sweep.yaml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def stored_records(out: Path) -> list:
    """Every trial of the sweep in ``out``, as its Optuna storage holds them."""
    from jigsawkit.search.sweep_runner import SweepSession, build_strategy, read_sweep_info
    from jigsawkit.search.sweep_spec import SweepSpec

    info = read_sweep_info(out)
    spec = SweepSpec.from_record(info["spec"])
    session = SweepSession(spec=spec, sweep_dir=out, sweep_id=info["id"], info=info)
    session.storage_url = info["storage"]
    strategy = build_strategy(spec)
    strategy.open(session)
    return strategy.records(session)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_outputs(out: Path, expect_trials: int) -> dict:
    """trials.jsonl, summary.json and best.yaml agree with each other and with the runs."""
    lines = read_lines(out / "trials.jsonl")
    assert len(lines) == expect_trials
    finished = [t for t in lines if t["state"] == "finished"]
    for trial in finished:
        assert trial["metric"] == pytest.approx(expected_loss(trial["params"]))
        run_summary = json.loads((Path(trial["run_dir"]) / "summary.json").read_text())
        assert run_summary["probe.fk_probe.val_loss"] == pytest.approx(trial["metric"])
    best_value = min(t["metric"] for t in finished)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sweep.trials"] == expect_trials
    assert summary["sweep.best_value"] == pytest.approx(best_value)
    tied = [t for t in finished if t["metric"] == best_value]  # equal metrics: any of them
    best = next(t for t in tied if t["params"] == summary["sweep.best_params"])
    assert summary["sweep.best_run_dir"] == best["run_dir"]
    assert summary["sweep.best_test_top1"] == pytest.approx(1 / (1 + best["metric"])), (
        "the reported figure is the best trial's held-out test metric"
    )
    resolved = load_experiment(out / "best.yaml")
    assert resolved["evaluate"][0]["lr"] == pytest.approx(best["params"]["evaluate.0.lr"])
    assert main(["validate", str(out / "best.yaml"), "--quiet"]) == 0
    return summary


def test_grid_sweep_pretrains_once_and_covers_the_grid(folder, capsys):
    path = sweep_file(
        folder,
        "grid",
        "evaluate[0].lr: {values: [0.1, 0.003]}\nevaluate.0.batch_size: {values: [64, 256]}\n"
        "pretrain.max_steps_per_epoch: {value: 1}",
        extra="strategy: {name: wandb, mode: offline, log_trials: true}\n",
    )
    out = folder / "out"
    assert main(["sweep", str(path), "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "held-out test: test_top1" in stdout
    summary = check_outputs(out, 4)
    lines = read_lines(out / "trials.jsonl")
    points = {(t["params"]["evaluate.0.lr"], t["params"]["evaluate.0.batch_size"]) for t in lines}
    assert len(points) == 4
    assert summary["sweep.best_params"] == {
        "evaluate.0.lr": 0.003,
        "evaluate.0.batch_size": 64,
        "pretrain.max_steps_per_epoch": 1,
    }
    # the backbone was pretrained once, in base/, and every trial probed those weights
    assert (out / "base" / "feature_extractor.pt").exists()
    base = yaml.safe_load((out / "base" / "config.yaml").read_text())
    assert base["pretrain"]["max_steps_per_epoch"] == 1, "constants reach the shared base"
    assert base["evaluate"] == []
    ids = {(Path(t["run_dir"]) / "backbone_id.txt").read_text() for t in lines}
    assert len(ids) == 1
    for trial in lines:
        run_summary = json.loads((Path(trial["run_dir"]) / "summary.json").read_text())
        assert not any(k.startswith("pretrain.") for k in run_summary), "no pretraining per trial"
        config = yaml.safe_load((Path(trial["run_dir"]) / "config.yaml").read_text())
        wandb = [t for t in config["trackers"] if t["name"] == "wandb"]
        assert wandb and wandb[0]["mode"] == "offline" and wandb[0]["group"] == summary["sweep.id"]
        # the metric bridge to the strategy is not part of the trial's experiment
        assert {t["name"] for t in config["trackers"]} <= {"console", "wandb"}
    # run again: nothing left to do, nothing run twice
    assert main(["sweep", str(path), "--out", str(out), "--no-progress"]) == 0
    assert len(read_lines(out / "trials.jsonl")) == 4


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_random_and_bayes_sweeps(folder, checkpoint, method):
    (folder / "experiment.yaml").write_text(
        (folder / "experiment.yaml").read_text() + f"checkpoint: {checkpoint}\n"
    )
    path = sweep_file(
        folder,
        method,
        "evaluate[0].lr: {distribution: log_uniform_values, min: 0.0001, max: 0.1}",
        extra="strategy: {name: wandb, log_trials: false}\n",
        run_cap="5",
    )
    out = folder / "out"
    assert main(["sweep", str(path), "--out", str(out), "--no-progress"]) == 0
    check_outputs(out, 5)
    assert not (out / "base").exists(), "a checkpoint is loaded, not pretrained"
    lrs = [t["params"]["evaluate.0.lr"] for t in read_lines(out / "trials.jsonl")]
    assert all(1e-4 <= lr <= 0.1 for lr in lrs) and len(set(lrs)) == 5


def test_hyperband_stops_trials_at_an_epoch(folder, checkpoint, capsys):
    (folder / "experiment.yaml").write_text(
        (folder / "experiment.yaml").read_text() + f"checkpoint: {checkpoint}\n"
    )
    path = sweep_file(
        folder,
        "grid",
        "evaluate[0].lr: {values: [0.003, 0.1, 0.0001, 0.5, 0.00005]}\n"
        "evaluate.0.epochs: {value: 6}",
        extra="strategy: {name: wandb, log_trials: false}\n",
        early_terminate="{type: hyperband, min_iter: 2, eta: 2}",
    )
    out = folder / "out"
    assert main(["sweep", str(path), "--out", str(out), "--no-progress"]) == 0
    lines = read_lines(out / "trials.jsonl")
    states = {t["params"]["evaluate.0.lr"]: t["state"] for t in lines}
    assert states[0.003] == "finished", "the best trial always runs to the end"
    stopped = [t for t in lines if t["state"] == "stopped"]
    assert stopped, states
    for trial in stopped:
        epochs = [
            row
            for row in read_lines(Path(trial["run_dir"]) / "metrics.jsonl")
            if "probe/fk_probe/val_loss" in row
        ]
        assert len(epochs) < 6, "a stopped trial ends at an epoch boundary"
        assert trial["metric"] == pytest.approx(epochs[-1]["probe/fk_probe/val_loss"])
        run_summary = json.loads((Path(trial["run_dir"]) / "summary.json").read_text())
        assert run_summary["run.state"] == "stopped"
    console = capsys.readouterr().out
    assert console.count("run stopped early by the sweep") == len(stopped)
    assert "run FAILED" not in console
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sweep.stopped"] == len(stopped)
    assert summary["sweep.best_params"]["evaluate.0.lr"] == 0.003


def test_two_worker_processes_share_one_grid(folder, checkpoint):
    (folder / "experiment.yaml").write_text(
        (folder / "experiment.yaml")
        .read_text()
        .replace("fk_probe\n", "fk_probe\n    delay: 0.02\n")
        + f"checkpoint: {checkpoint}\n"
    )
    path = sweep_file(
        folder,
        "grid",
        "evaluate[0].lr: {values: [0.1, 0.01, 0.001, 0.0001]}\n"
        "evaluate.0.batch_size: {values: [32, 64]}",
        extra="strategy: {name: wandb, log_trials: false}\n",
    )
    out = folder / "out"
    assert main(["sweep", str(path), "--out", str(out), "--count", "1", "--no-progress"]) == 0
    command = [sys.executable, "-m", "jigsawkit", "sweep", "--join", str(out), "--no-progress"]
    workers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=120) for w in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err
    records = stored_records(out)
    points = [tuple(sorted(r.params.items())) for r in records]
    assert len(points) == 8 and len(set(points)) == 8, "no duplicate, no missing point"
    assert all(r.state == "finished" for r in records)
    workers_used = {r.worker for r in records}
    assert len(workers_used) == 3, "the first process and both joined workers ran trials"
    assert len(read_lines(out / "trials.jsonl")) == 8
    check_outputs(out, 8)


# -- the strategy with a fake trial function: resume, failures ---------------------------


SIMPLE = """\
experiment: experiment.yaml
sweep:
  method: grid
  metric: {name: probe.fk_probe.val_loss, goal: minimize}
  parameters:
    evaluate[0].lr: {values: [0.1, 0.01, 0.001, 0.0001]}
strategy: {name: wandb, log_trials: false}
"""


def test_interrupted_sweep_resumes_keeping_finished_trials(folder):
    spec = load_sweep_file(_write(folder, SIMPLE))
    calls: list[float] = []

    def trial(ctx):
        lr = ctx.params["evaluate.0.lr"]
        if len(calls) == 2 and not ctx.run_dir.parent.joinpath("interrupted").exists():
            ctx.run_dir.parent.mkdir(parents=True, exist_ok=True)
            ctx.run_dir.parent.joinpath("interrupted").touch()
            raise KeyboardInterrupt
        calls.append(lr)
        return TrialOutcome(metric=abs(math.log10(lr) + 2.5))

    out = folder / "out"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, trial_function=trial)
    info = json.loads((out / "sweep.json").read_text())
    assert [r.state for r in stored_records(out)] == ["finished", "finished", "pending"]
    result = run_sweep(spec, out, info=info, trial_function=trial)
    assert calls == [0.1, 0.01, 0.001, 0.0001], "finished trials are not run again"
    assert [r.state for r in result.records] == ["finished"] * 4
    assert len(read_lines(out / "trials.jsonl")) == 4
    best = min(result.records, key=lambda r: r.metric)
    assert result.summary["sweep.best_params"] == best.params


def test_failed_trial_is_recorded_and_the_sweep_goes_on(folder):
    spec = load_sweep_file(_write(folder, SIMPLE))

    def trial(ctx):
        if ctx.params["evaluate.0.lr"] == 0.01:
            raise RuntimeError("out of memory\nmore detail")
        return TrialOutcome(metric=1.0)

    result = run_sweep(spec, folder / "out", trial_function=trial)
    states = [(r.params["evaluate.0.lr"], r.state, r.error) for r in result.records]
    assert (0.01, "failed", "RuntimeError: out of memory") in states
    assert result.summary["sweep.failed"] == 1 and result.summary["sweep.finished"] == 3


def test_metric_target_ends_the_sweep(folder):
    text = SIMPLE.replace("goal: minimize}", "goal: minimize, target: 0.6}")
    spec = load_sweep_file(_write(folder, text))
    result = run_sweep(
        spec,
        folder / "out",
        trial_function=lambda ctx: TrialOutcome(
            metric=abs(math.log10(ctx.params["evaluate.0.lr"]) + 2.5)
        ),
    )
    assert [r.params["evaluate.0.lr"] for r in result.records] == [0.1, 0.01]


def _write(folder: Path, text: str) -> Path:
    path = folder / "s.yaml"
    path.write_text(text)
    return path


@pytest.mark.progress_bars
def test_trial_table_plain_lines_and_live_table(folder, capsys, monkeypatch):
    from rich.console import Console

    from jigsawkit.commands.sweep import TrialTable

    text = SIMPLE.replace(
        "    evaluate[0].lr:", "    evaluate[0].epochs: {value: 2}\n    evaluate[0].lr:"
    )
    spec = load_sweep_file(_write(folder, text))
    plain = TrialTable(spec, interactive=False)
    run_sweep(
        spec, folder / "plain", trial_function=lambda ctx: TrialOutcome(metric=1.0), hooks=plain
    )
    out = capsys.readouterr().out
    assert "trial t0001 started: evaluate.0.lr=0.1" in out
    assert "trial t0004 finished: evaluate.0.lr=0.0001 -> probe.fk_probe.val_loss=1" in out
    assert "evaluate.0.epochs" not in out, "constants are not shown"

    live = TrialTable(spec, interactive=True)

    def trial(ctx):
        assert not bars_enabled(), "no bars under the live table"
        ctx.report(1, 0.5)
        return TrialOutcome(metric=float(ctx.params["evaluate.0.lr"]))

    assert bars_enabled()
    run_sweep(spec, folder / "live", trial_function=trial, hooks=live)
    assert bars_enabled(), "bars come back once the table is gone"
    console = Console(record=True, width=120)
    console.print(live._table())
    table = console.export_text()
    assert "evaluate.0.lr" in table and "finished" in table and "t0004" in table
    assert "evaluate.0.epochs" not in table


def test_resume_or_join_with_another_sweep_file_is_refused(folder, capsys):
    spec = load_sweep_file(_write(folder, SIMPLE))
    out = folder / "out"
    run_sweep(spec, out, count=1, trial_function=lambda ctx: TrialOutcome(metric=1.0))
    other = folder / "other.yaml"
    other.write_text(SIMPLE.replace("0.0001]", "0.5]"))
    assert main(["sweep", str(other), "--out", str(out)]) == 2
    assert "holds a different sweep (differs in: sweep)" in capsys.readouterr().err
    assert main(["sweep", str(other), "--join", str(out)]) == 2
    assert "different sweep" in capsys.readouterr().err
    assert main(["sweep"]) == 2
    assert "give a sweep FILE, or --join" in capsys.readouterr().err
    assert main(["sweep", "--join", str(folder / "nowhere")]) == 2
    assert "no such sweep folder" in capsys.readouterr().err
    assert len(read_lines(out / "trials.jsonl")) == 1, "nothing ran"

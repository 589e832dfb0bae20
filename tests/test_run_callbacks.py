"""Callbacks beyond the engine: evaluators' epochs, ending a whole run, the sweep's bridge,
and progress bars switched off by the run instead of an environment variable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from doc_examples import run_doc_example
from fakes import FakeDataset, TinyBackbone, make_backbone, make_context

from jigsawkit.callbacks import Callback, CallbackList, EpochEnd

EXPERIMENT = """\
name: callbacks
seed: 3
trackers: [console]
backbone: {name: cfn, channels: [8, 16], kernel_sizes: [3, 3], tile_fc: 32, input_size: 24}
evaluate: [stepper, after]
"""


class Stepper:
    """An evaluator that trains for 5 epochs, reporting ``probe/stepper/val_loss`` each."""

    def evaluate(self, ctx) -> dict:
        from jigsawkit.progress import progress_bar

        with progress_bar("stepper", total=5, unit="epoch") as bar:
            for epoch in range(1, 6):
                bar.advance(1)
                row = {"probe/stepper/val_loss": 1.0 / epoch}
                if ctx.epoch_end("probe/stepper", epoch, row).stop_requested:
                    return {"val_loss": 1.0 / epoch, "epochs": epoch}
        return {"val_loss": 0.2, "epochs": 5}


class After:
    """An evaluator that only says it ran."""

    def evaluate(self, ctx) -> dict:
        return {"ran": 1}


@pytest.fixture
def evaluators(clean_registries):
    from jigsawkit.registry import register_evaluator

    register_evaluator("stepper", schema={"properties": {}})(lambda: Stepper())
    register_evaluator("after", schema={"properties": {}})(lambda: After())


def run(tmp_path: Path, callbacks: list, progress: bool = False, resume: bool = False):
    from jigsawkit.config.experiment import load_experiment
    from jigsawkit.runner import run_experiment

    path = tmp_path / "callbacks.yaml"
    path.write_text(EXPERIMENT)
    torch.manual_seed(0)
    return run_experiment(
        load_experiment(path),
        out=None if resume else tmp_path / "run",
        resume=tmp_path / "run" if resume else None,
        progress=progress,
        backbone_override=TinyBackbone(4),
        callbacks=callbacks,
    )


def logged(run_dir: Path, key: str) -> list:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row[key] for row in rows if key in row]


class StopAt(Callback):
    """Asks to stop stage ``stage`` at epoch ``epoch`` (ending the run if ``end_run``)."""

    name = "the test"

    def __init__(self, stage: str, epoch: int, end_run: bool):
        self.stage, self.epoch, self.end_run = stage, epoch, end_run
        self.seen: list[tuple[str, int]] = []
        self.rows: list[dict] = []

    def on_epoch_end(self, event: EpochEnd) -> None:
        self.seen.append((event.stage, event.epoch))
        event.metrics[f"{event.stage}/seen_by_callback"] = float(event.epoch)
        if event.stage == self.stage and event.epoch == self.epoch:
            event.request_stop(f"enough at epoch {event.epoch}", end_run=self.end_run)

    def on_log(self, metrics, step):
        self.rows.append(dict(metrics))


def test_a_callback_that_ends_the_run_from_an_evaluator(evaluators, tmp_path, capsys):
    stop = StopAt("probe/stepper", 2, end_run=True)
    result = run(tmp_path, [stop])  # returns normally: no exception carries the stop
    summary = result.summary
    assert summary["run.state"] == "stopped"
    assert summary["run.stop_reason"] == "enough at epoch 2"
    assert summary["run.stopped_by"] == "the test"
    assert "run.wall_seconds" in summary and "run.error" not in summary
    assert summary["probe.stepper.epochs"] == 2, "the evaluator ended at the stop"
    assert "probe.after.ran" not in summary, "no later stage runs"
    assert stop.seen == [("probe/stepper", 1), ("probe/stepper", 2)]
    assert logged(result.run_dir, "probe/stepper/seen_by_callback") == [1.0, 2.0]
    assert any("probe/stepper/val_loss" in row for row in stop.rows), "on_log sees rows"
    saved = json.loads((result.run_dir / "summary.json").read_text())
    assert saved["run.state"] == "stopped"
    assert "run stopped early by the test: enough at epoch 2" in capsys.readouterr().out


def test_resuming_a_stopped_run_completes_it(evaluators, tmp_path):
    run(tmp_path, [StopAt("probe/stepper", 1, end_run=True)])
    summary = run(tmp_path, [], resume=True).summary
    assert summary["run.state"] == "finished" and summary["probe.after.ran"] == 1
    assert "run.stop_reason" not in summary and "run.stopped_by" not in summary


def test_a_stage_stop_lets_the_run_go_on(evaluators, tmp_path):
    result = run(tmp_path, [StopAt("probe/stepper", 3, end_run=False)])
    assert result.summary["run.state"] == "finished"
    assert result.summary["probe.stepper.epochs"] == 3
    assert result.summary["probe.after.ran"] == 1


def test_the_sweep_bridge_ends_a_stopped_trial_as_stopped(evaluators, tmp_path):
    from jigsawkit.search.sweep_runner import TrialContext
    from jigsawkit.search.trial_callbacks import SweepMetricReporter

    def strategy(step: int, value: float) -> str | None:
        return f"pruned at step {step}" if step == 3 else None

    ctx = TrialContext("t0001", {}, tmp_path / "run", reporter=strategy)
    result = run(tmp_path, [SweepMetricReporter(ctx, "probe.stepper.val_loss")])
    assert ctx.history == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert ctx.last_value == pytest.approx(1 / 3)
    assert result.summary["run.state"] == "stopped"
    assert result.summary["run.stopped_by"] == "the sweep"
    assert result.summary["run.stop_reason"] == "pruned at step 3"


@pytest.mark.progress_bars
def test_progress_false_silences_every_bar_inside_the_run(
    evaluators, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("JIGSAWKIT_PLAIN_PROGRESS", "1")  # plain lines on stderr
    for progress in (True, False):
        (tmp_path / str(progress)).mkdir()
        run(tmp_path / str(progress), [], progress=progress)
        err = capsys.readouterr().err
        assert ("stepper: 5/5 epoch" in err) is progress, err


def test_the_package_reads_no_progress_switch_from_the_environment():
    root = Path(__file__).resolve().parents[1] / "jigsawkit"
    hits = [p for p in root.rglob("*.py") if "JIGSAWKIT_NO_PROGRESS" in p.read_text()]
    assert hits == []


# -- the linear probe's epochs -------------------------------------------------------------


def linear_probe(**params):
    from jigsawkit.registry import registry

    return registry("evaluator").build("linear_probe", data={"name": "synthetic"}, **params)


def probe_context(tmp_path, callbacks):
    ctx = make_context(tmp_path, make_backbone(), FakeDataset())
    ctx.callbacks = CallbackList(callbacks)
    return ctx


def test_the_linear_probe_calls_on_epoch_end_with_its_stage_and_metrics(tmp_path):
    watch = StopAt("never", 0, end_run=False)
    ctx = probe_context(tmp_path, [watch])
    linear_probe(epochs=2, lr=[1e-2, 1e-1]).evaluate(ctx)
    stages = [stage for stage, _ in watch.seen]
    assert stages == ["probe/linear_probe"] * 2 + ["probe/linear_probe/random_init"] * 2
    assert [epoch for _, epoch in watch.seen] == [1, 2, 1, 2]


def test_a_callback_stops_the_linear_probe_and_ends_the_run(tmp_path):
    torch.manual_seed(0)
    stop = StopAt("probe/linear_probe", 1, end_run=True)
    ctx = probe_context(tmp_path, [stop])
    results = linear_probe(epochs=4, lr=[1e-2, 1e-1]).evaluate(ctx)
    assert stop.seen == [("probe/linear_probe", 1)], "no second epoch, no random-init probe"
    assert ctx.run_stop == {"reason": "enough at epoch 1", "by": "the test"}
    assert results["stop_reason"] == "enough at epoch 1"
    assert "random_init.test_top1" not in results
    grid = json.loads((tmp_path / "run" / "probe_linear_probe.json").read_text())
    assert all(len(head["curves"]["val_top1"]) == 1 for head in grid["pretrained"])


def test_a_stage_stop_of_the_probe_keeps_its_baseline(tmp_path):
    stop = StopAt("probe/linear_probe", 1, end_run=False)
    ctx = probe_context(tmp_path, [stop])
    results = linear_probe(epochs=2, lr=[1e-2, 1e-1]).evaluate(ctx)
    assert ctx.run_stop is None and "random_init.test_top1" in results
    assert stop.seen[-1] == ("probe/linear_probe/random_init", 2)


@pytest.mark.slow
def test_the_docs_callback_example_runs_as_written(monkeypatch, capsys):
    doc = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
    run_doc_example(doc, "## Callbacks", "/tmp/jigsawkit-callbacks-example", monkeypatch)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == "1 finished"
    assert lines[-1].startswith("val_top1 ") and lines[-1].endswith("reached 0.0")


def test_wandb_forwarding_sends_rows_and_summary_and_survives_a_failure(monkeypatch, capsys):
    import wandb

    from jigsawkit.search.trial_callbacks import WandbRunForwarder

    class AgentRun:
        def __init__(self, fail: bool):
            self.fail, self.rows, self.summary = fail, [], {}

        def log(self, row):
            if self.fail:
                raise ConnectionError("offline\nfor a while")
            self.rows.append(row)

    good = AgentRun(fail=False)
    monkeypatch.setattr(wandb, "run", good, raising=False)
    forwarder = WandbRunForwarder()
    forwarder.on_log({"probe/x/val_loss": 0.5}, 1)
    forwarder.summary({"probe.x.val_loss": 0.5})
    assert good.rows == [{"probe/x/val_loss": 0.5}] and good.summary == {"probe.x.val_loss": 0.5}

    monkeypatch.setattr(wandb, "run", AgentRun(fail=True), raising=False)
    forwarder.on_log({"a": 1.0}, 2)  # no exception: the trial goes on
    forwarder.on_log({"a": 2.0}, 3)
    err = capsys.readouterr().err
    assert err.count("warning: forwarding metrics") == 1 and "offline for a while" in err

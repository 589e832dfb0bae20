"""The optuna strategy: W&B parameters converted, TPE/grid/random, pruning, resume, join."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from jigsawkit.errors import UserError
from jigsawkit.registry import registry
from jigsawkit.search.optuna_strategy import convert_parameter, convert_space
from jigsawkit.search.sweep_file import load_sweep_file
from jigsawkit.search.sweep_runner import TrialOutcome, TrialStopped, run_sweep

PLUGIN = '''
from jigsawkit import register_backbone, register_dataset, register_evaluator, register_pretext

@register_backbone("op_backbone", schema={"properties": {}})
def op_backbone():
    """A backbone for the optuna tests."""

@register_pretext("op_pretext", schema={"properties": {}})
def op_pretext(backbone=None):
    """A pretext task for the optuna tests."""

@register_dataset("op_data", schema={"properties": {}})
def op_data():
    """A dataset for the optuna tests."""

@register_evaluator("op_probe", schema={"properties": {
    "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.01},
    "batch_size": {"type": "integer", "minimum": 1, "default": 64},
    "layers": {"type": "array", "items": {"type": "string"}, "default": ["conv"]}}})
def op_probe(**params):
    """An evaluator for the optuna tests."""
'''

SWEEP = """\
experiment:
  name: op
  backbone: op_backbone
  pretext: op_pretext
  pretrain: {{data: op_data}}
  trackers: []
  evaluate: [op_probe]
sweep:
  method: {method}
  metric: {{name: probe.op_probe.val_loss, goal: minimize}}
{extra}  parameters:
{parameters}
strategy: {strategy}
"""


def loss(params: dict) -> float:
    return (
        abs(math.log10(params["evaluate.0.lr"]) + 2.5)
        + params.get("evaluate.0.batch_size", 64) / 1000
    )


def objective(ctx):
    return TrialOutcome(metric=loss(ctx.params), summary={"probe.op_probe.test_top1": 0.25})


@pytest.fixture
def folder(tmp_path, clean_registries) -> Path:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "op.py").write_text(PLUGIN)
    return tmp_path


def spec_for(folder: Path, method: str, parameters: str, strategy: str, extra: str = ""):
    text = SWEEP.format(
        method=method,
        parameters="\n".join(f"    {line}" for line in parameters.strip().splitlines()),
        strategy=strategy,
        extra=extra,
    )
    path = folder / "sweep.yaml"
    path.write_text(text)
    return load_sweep_file(path)


def test_parameters_convert_to_optuna_distributions():
    assert convert_parameter("a", {"values": [1, 2]}) == ("categorical", [1, 2], False)
    assert convert_parameter("a", {"values": [[1], [2, 3]]}) == (
        "categorical",
        ["[1]", "[2, 3]"],
        True,
    )
    assert convert_parameter("a", {"value": 3}) == ("constant", 3)
    assert convert_parameter("a", {"min": 0.1, "max": 0.5}) == (
        "float",
        0.1,
        0.5,
        False,
        None,
        None,
    )
    assert convert_parameter(
        "a", {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}
    ) == ("float", 1e-4, 1e-1, True, None, None)
    assert convert_parameter("a", {"min": 1, "max": 5}) == ("int", 1, 5, 1)
    assert (
        convert_parameter("a", {"distribution": "q_uniform", "min": 0, "max": 1.0, "q": 0.25})[4]
        == 0.25
    )
    assert convert_parameter("a", {"distribution": "q_uniform", "min": 0, "max": 8, "q": 2}) == (
        "int",
        0,
        8,
        2,
    )
    assert convert_parameter("a", {"min": 1, "max": 3}, grid=True) == (
        "categorical",
        [1, 2, 3],
        False,
    )
    with pytest.raises(ValueError, match="no counterpart"):
        convert_parameter("a", {"distribution": "normal", "mu": 0, "sigma": 1})
    with pytest.raises(ValueError, match="grid sampling needs"):
        convert_parameter("a", {"min": 0.1, "max": 0.5}, grid=True)
    with pytest.raises(UserError, match="sweep.parameters.b"):
        convert_space({"a": {"values": [1]}, "b": {"distribution": "beta"}})


def test_grid_sampler_covers_the_grid_once(folder):
    spec = spec_for(
        folder,
        "grid",
        "evaluate[0].lr: {values: [0.1, 0.003, 0.0001]}\nevaluate.0.batch_size: {values: [32, 64]}",
        "{name: optuna}",
    )
    result = run_sweep(spec, folder / "out", trial_function=objective)
    points = [tuple(sorted(r.params.items())) for r in result.records]
    assert len(points) == 6 and len(set(points)) == 6
    assert result.summary["sweep.best_params"] == {
        "evaluate.0.lr": 0.003,
        "evaluate.0.batch_size": 32,
    }
    assert result.summary["sweep.best_test_top1"] == 0.25
    assert (folder / "out" / "optuna.db").exists()
    assert len((folder / "out" / "trials.jsonl").read_text().splitlines()) == 6


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_tpe_and_random_respect_run_cap_and_bounds(folder, sampler):
    spec = spec_for(
        folder,
        "bayes",
        "evaluate[0].lr: {distribution: log_uniform_values, min: 0.0001, max: 0.1}\n"
        "evaluate.0.batch_size: {distribution: int_uniform, min: 16, max: 256}\n"
        "evaluate.0.layers: {values: [[conv], [conv, fc]]}",
        f"{{name: optuna, sampler: {sampler}, seed: 3}}",
        extra="  run_cap: 5\n",
    )
    result = run_sweep(spec, folder / "out", trial_function=objective)
    assert len(result.records) == 5
    for record in result.records:
        assert 1e-4 <= record.params["evaluate.0.lr"] <= 0.1
        assert isinstance(record.params["evaluate.0.batch_size"], int)
        assert record.params["evaluate.0.layers"] in (["conv"], ["conv", "fc"])
    best = min(result.records, key=lambda r: r.metric)
    assert result.summary["sweep.best_value"] == pytest.approx(best.metric)
    # the best trial's experiment carries the decoded list value
    experiment = spec.trial_experiment(best.params)
    assert experiment["evaluate"][0]["layers"] == best.params["evaluate.0.layers"]


def test_pruner_wiring(folder):
    import optuna

    spec = spec_for(
        folder,
        "random",
        "evaluate[0].lr: {values: [0.003]}",
        "{name: optuna}",
        extra="  early_terminate: {type: hyperband, min_iter: 2, max_iter: 27, eta: 3}\n",
    )
    pruner = registry("search").build("optuna")._make_pruner(spec)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert pruner._min_resource == 2 and pruner._max_resource == 27
    assert pruner._reduction_factor == 3
    assert isinstance(
        registry("search").build("optuna", pruner="median")._make_pruner(spec),
        optuna.pruners.MedianPruner,
    )
    spec.sweep.pop("early_terminate")
    assert isinstance(
        registry("search").build("optuna")._make_pruner(spec), optuna.pruners.NopPruner
    )


def test_median_pruner_stops_bad_trials_at_an_epoch(folder):
    spec = spec_for(
        folder,
        "grid",
        "evaluate[0].lr: {values: [0.003, 0.002, 0.1, 0.3]}",
        "{name: optuna, pruner: median}",
    )
    order: list[float] = []
    epochs_run: dict[float, int] = {}

    def worse_each_time(ctx):
        # the k-th trial run is worse than every earlier one, whatever the grid order
        lr = ctx.params["evaluate.0.lr"]
        order.append(lr)
        for epoch in range(1, 6):
            epochs_run[lr] = epoch
            ctx.report(epoch, len(order) + 0.01 * (5 - epoch))
        return TrialOutcome(metric=float(len(order)))

    # MedianPruner waits for 5 finished trials by default: 1 here.
    strategy = registry("search").build("optuna", pruner="median")
    strategy._make_pruner = lambda spec: optuna_median()
    result = run_sweep(spec, folder / "out", trial_function=worse_each_time, strategy=strategy)
    states = {r.params["evaluate.0.lr"]: r.state for r in result.records}
    assert states[order[0]] == "finished"
    assert all(states[lr] == "stopped" for lr in order[1:]), states
    assert all(epochs_run[lr] == 1 for lr in order[1:]), "pruned at the first epoch boundary"
    stopped = [r for r in result.records if r.state == "stopped"]
    assert all(r.metric is not None and len(r.history) == 1 for r in stopped)
    assert result.summary["sweep.stopped"] == 3
    assert result.summary["sweep.best_params"] == {"evaluate.0.lr": order[0]}


def optuna_median():
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)


def test_trial_stopped_from_report_is_a_prune(folder):
    spec = spec_for(folder, "grid", "evaluate[0].lr: {values: [0.01, 0.02]}", "{name: optuna}")

    def stop_first(ctx):
        if ctx.params["evaluate.0.lr"] == 0.01:
            ctx.report(1, 5.0)
            raise TrialStopped("told to stop")
        return TrialOutcome(metric=1.0)

    result = run_sweep(spec, folder / "out", trial_function=stop_first)
    by_lr = {r.params["evaluate.0.lr"]: r for r in result.records}
    assert by_lr[0.01].state == "stopped" and by_lr[0.01].metric == 5.0
    assert result.summary["sweep.best_params"] == {"evaluate.0.lr": 0.02}


def test_interrupted_trial_reruns_on_resume_and_join_by_url(folder):
    from jigsawkit.commands.sweep import _join_target

    spec = spec_for(
        folder, "grid", "evaluate[0].lr: {values: [0.1, 0.01, 0.001]}", "{name: optuna}"
    )
    seen: list[float] = []

    def interrupt_second(ctx):
        if len(seen) == 1 and not (folder / "once").exists():
            (folder / "once").touch()
            raise KeyboardInterrupt
        seen.append(ctx.params["evaluate.0.lr"])
        return TrialOutcome(metric=loss(ctx.params))

    out = folder / "out"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, trial_function=interrupt_second)
    info = json.loads((out / "sweep.json").read_text())
    url = f"sqlite:///{(out / 'optuna.db').resolve()}"
    joined, joined_dir, joined_url = _join_target(url, None, None)
    assert joined["id"] == info["id"] and joined_dir == out.resolve() and joined_url == url
    result = run_sweep(spec, out, info=info, trial_function=interrupt_second)
    assert sorted(seen) == [0.001, 0.01, 0.1], "every point ran once to the end"
    finished = [r for r in result.records if r.state == "finished"]
    assert len(finished) == 3 and len(result.records) == 3, "the re-run keeps its trial id"
    assert result.summary["sweep.best_params"] == {"evaluate.0.lr": 0.001}

"""Sweep files: validated before anything runs, every problem at once as file:line:col, exit 2.

The experiments here use components from a temporary plugin folder (``plugins/`` next to
the sweep file), so the checks do not depend on the built-in components' parameters.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from jigsawkit.cli import main
from jigsawkit.errors import ConfigError, UserError
from jigsawkit.search.sweep_file import load_sweep_file
from jigsawkit.search.sweep_spec import check_runnable, normalize_name

PLUGIN = '''
from jigsawkit import register_backbone, register_dataset, register_evaluator, register_pretext

@register_backbone("sf_backbone", schema={"properties": {"width": {"type": "integer", "minimum": 1, "default": 4}}})
def sf_backbone(width=4):
    """A backbone for sweep-file tests."""

@register_pretext("sf_pretext", schema={"properties": {}})
def sf_pretext(backbone=None):
    """A pretext task for sweep-file tests."""

@register_dataset("sf_data", schema={"properties": {"seed": {"type": "integer", "default": 0}}})
def sf_data(seed=0):
    """A dataset for sweep-file tests."""

@register_evaluator("sf_probe", schema={"properties": {
    "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.1},
    "batch_size": {"type": "integer", "minimum": 1, "default": 32},
    "epochs": {"type": "integer", "minimum": 1, "default": 3},
    "optimizer": {"enum": ["sgd", "adam"], "default": "sgd"}}})
def sf_probe(**params):
    """An evaluator for sweep-file tests."""
'''

EXPERIMENT = """\
name: tiny
trackers: [console]
backbone: {name: sf_backbone}
pretext: {name: sf_pretext}
pretrain:
  data: {name: sf_data}
evaluate:
  - name: sf_probe
    lr: 0.1
"""

SWEEP = """\
experiment: experiment.yaml
sweep:
  method: random
  metric: {name: probe.sf_probe.val_loss, goal: minimize}
  run_cap: 4
  parameters:
    evaluate[0].lr: {distribution: uniform, min: 0.0001, max: 0.01}
    evaluate.0.batch_size: {values: [64, 128, 256]}
"""


@pytest.fixture
def folder(tmp_path, clean_registries) -> Path:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "sf_components.py").write_text(PLUGIN)
    (tmp_path / "experiment.yaml").write_text(EXPERIMENT)
    return tmp_path


def write(folder: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path, *args: str, capsys) -> list[tuple[int, str, str]]:
    """Run ``jigsawkit validate``; expect exit 2; return (line, key, message) per problem."""
    assert main(["validate", str(path), *args]) == 2
    err = capsys.readouterr().err
    found = []
    pattern = re.compile(rf"^error: {re.escape(str(path))}:(\d+):\d+: (\S+): (.*)$")
    for line in err.splitlines():
        match = pattern.match(line)
        if match:
            found.append((int(match.group(1)), match.group(2), match.group(3)))
    assert found, err
    return found


def test_valid_sweep_resolves(folder, capsys):
    spec = load_sweep_file(write(folder, SWEEP))
    assert spec.parameters == {
        "evaluate.0.lr": ("evaluate", 0, "lr"),
        "evaluate.0.batch_size": ("evaluate", 0, "batch_size"),
    }
    assert spec.probe_only and spec.metric_name == "probe.sf_probe.val_loss"
    assert spec.goal == "minimize" and spec.run_cap == 4
    assert spec.strategy == {
        "name": "wandb",
        "mode": "offline",
        "project": None,
        "entity": None,
        "log_trials": True,
        "storage": None,
        "heartbeat_interval": 15,
        "grace_period": 120,
        "max_retry": 3,
    }
    assert spec.output_dir == "sweeps"
    assert spec.experiment["plugins"] == [str((folder / "plugins").resolve())]
    resolved = spec.as_dict()
    assert resolved["sweep"]["parameters"]["evaluate.0.batch_size"]["distribution"] == (
        "categorical"
    ), "W&B's defaults are filled in the resolved sweep"
    assert main(["validate", str(folder / "sweep.yaml")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["experiment"]["evaluate"][0]["epochs"] == 3
    assert set(printed) == {"experiment", "sweep", "strategy", "output_dir"}


def test_trial_experiment_puts_values_in_and_validates(folder):
    spec = load_sweep_file(write(folder, SWEEP))
    trial = spec.trial_experiment({"evaluate.0.lr": 0.005, "evaluate.0.batch_size": 128})
    assert trial["evaluate"][0]["lr"] == 0.005 and trial["evaluate"][0]["batch_size"] == 128
    assert trial["evaluate"][0]["epochs"] == 3
    assert spec.experiment["evaluate"][0]["lr"] == 0.1, "the base experiment is untouched"
    with pytest.raises(ConfigError, match=r"evaluate\[0\]\.lr"):
        spec.trial_experiment({"evaluate.0.lr": -1.0})


def test_names_normalize():
    assert normalize_name("evaluate[0].lr") == "evaluate.0.lr"
    assert normalize_name("evaluate.0.lr") == "evaluate.0.lr"
    assert normalize_name("pretrain.optimizer.lr") == "pretrain.optimizer.lr"


def test_missing_parameter_path_points_at_the_parameter(folder, capsys):
    path = write(
        folder,
        SWEEP.replace("evaluate[0].lr: {distribution", "evaluate[0].lrr: {distribution"),
    )
    found = problems(path, capsys=capsys)
    assert len(found) == 1
    line, key, message = found[0]
    assert line == 7 and key == "sweep.parameters.evaluate[0].lrr"
    assert "no key" in message and "did you mean 'lr'" in message


def test_value_rejected_by_experiment_schema(folder, capsys):
    path = write(
        folder,
        SWEEP.replace("values: [64, 128, 256]", "values: [64, 0, 12.5]").replace(
            "min: 0.0001", "min: -0.5"
        ),
    )
    found = problems(path, capsys=capsys)
    assert [(line, key) for line, key, _ in found] == [
        (7, "sweep.parameters.evaluate[0].lr"),
        (8, "sweep.parameters.evaluate.0.batch_size"),
        (8, "sweep.parameters.evaluate.0.batch_size"),
    ]
    assert "min = -0.5 is rejected" in found[0][2] and "> 0" in found[0][2]
    assert "values[1] = 0" in found[1][2] and ">= 1" in found[1][2]
    assert "values[2] = 12.5" in found[2][2] and "integer" in found[2][2]


def test_wandb_schema_problems_all_at_once(folder, capsys):
    path = write(
        folder,
        """\
        experiment: experiment.yaml
        sweep:
          method: randm
          metric: {name: probe.sf_probe.val_loss, goal: minimise}
          run_capp: 4
          early_terminate: {type: hyperband, eta: 3}
          parameters:
            evaluate[0].lr: {distribution: log_uniformm, min: 0.0001, max: 0.01}
            evaluate.0.batch_size: {min: 16}
            evaluate.0.epochs: {distribution: int_uniform, min: 5, max: 2}
            seed: {values: 3}
        """,
    )
    found = problems(path, capsys=capsys)
    by_line = {line: (key, message) for line, key, message in found}
    assert "randm" in by_line[3][1]
    assert by_line[4][0] == "sweep.metric.goal"
    assert by_line[5][0] == "sweep.run_capp" and "did you mean 'run_cap'" in by_line[5][1]
    assert "early_terminate" in by_line[6][0] and "min_iter" in str(found)
    assert "did you mean 'log_uniform'" in by_line[8][1]
    assert "max" in by_line[9][1]
    assert "min 5 is not less than max 2" in by_line[10][1]
    assert by_line[11][0].startswith("sweep.parameters.seed")


def test_grid_needs_discrete_parameters(folder, capsys):
    path = write(folder, SWEEP.replace("method: random", "method: grid"))
    found = problems(path, capsys=capsys)
    assert len(found) == 1 and found[0][0] == 7 and "grid search needs" in found[0][2]


def test_metric_must_be_a_val_summary_key(folder, capsys):
    path = write(folder, SWEEP.replace("probe.sf_probe.val_loss", "probe.sf_probe.test_top1"))
    found = problems(path, capsys=capsys)
    assert found[0][0] == 4 and "test-set metric" in found[0][2]
    path = write(folder, SWEEP.replace("probe.sf_probe.val_loss", "probe.knn.val_top1"))
    found = problems(path, capsys=capsys)
    assert found[0][0] == 4 and "evaluates with sf_probe" in found[0][2]
    path = write(
        folder, SWEEP.replace("  metric: {name: probe.sf_probe.val_loss, goal: minimize}\n", "")
    )
    found = problems(path, capsys=capsys)
    assert "missing `metric" in found[0][2]


def test_missing_experiment_file_points_at_its_line(folder, capsys):
    path = write(folder, SWEEP.replace("experiment.yaml", "nope.yaml"))
    found = problems(path, capsys=capsys)
    assert found == [(1, "experiment", found[0][2])] and "no experiment file" in found[0][2]


def test_errors_in_the_experiment_file_point_into_it(folder, capsys):
    (folder / "experiment.yaml").write_text(EXPERIMENT.replace("lr: 0.1", "lr: fast"))
    path = write(folder, SWEEP)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'experiment.yaml'}:9:9: evaluate[0].lr: expected a number" in err


def test_inline_experiment_and_its_errors(folder, capsys):
    inline = "experiment:\n" + textwrap.indent(EXPERIMENT, "  ") + SWEEP.split("\n", 1)[1]
    spec = load_sweep_file(write(folder, inline))
    assert spec.experiment["name"] == "tiny" and spec.experiment_file is None
    bad = inline.replace("lr: 0.1", "lr: -3")
    path = write(folder, bad, "bad.yaml")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:10:11: evaluate[0].lr: expected a number > 0" in err


@pytest.mark.parametrize("inline", [False, True])
def test_a_missing_plugin_folder_of_the_experiment_points_at_its_line(folder, capsys, inline):
    """The sweep's base experiment is loaded as `jigsawkit run` loads one: a `plugins:`
    folder that does not exist is reported at its line (it was a line with no position)."""
    experiment = EXPERIMENT + "plugins: [nope]\n"
    if inline:
        text = "experiment:\n" + textwrap.indent(experiment, "  ") + SWEEP.split("\n", 1)[1]
        path, line = write(folder, text), 11
    else:
        (folder / "experiment.yaml").write_text(experiment)
        path, line = folder / "experiment.yaml", 10
        write(folder, SWEEP)
    assert main(["validate", str(folder / "sweep.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}:" in err and f"{folder / 'nope'} does not exist" in err, err


def test_optuna_refuses_distributions_it_lacks(folder, capsys):
    text = SWEEP.replace(
        "{distribution: uniform, min: 0.0001, max: 0.01}",
        "{distribution: normal, mu: 0.01, sigma: 0.001}",
    )
    path = write(folder, text + "strategy: {name: optuna}\n")
    found = problems(path, capsys=capsys)
    assert found[0][0] == 7 and "strategy optuna" in found[0][2]
    assert load_sweep_file(write(folder, SWEEP + "strategy: {name: optuna, sampler: tpe}\n"))
    path = write(folder, SWEEP + "strategy: {name: optuna, sampler: gridd}\n")
    found = problems(path, capsys=capsys)
    assert found[0][0] == 9 and "strategy.sampler" == found[0][1]


def test_overrides_reach_sweep_and_experiment(folder):
    spec = load_sweep_file(
        write(folder, SWEEP),
        overrides=["sweep.run_cap=2", "evaluate[0].epochs=7", "experiment.seed=5"],
    )
    assert spec.run_cap == 2
    assert spec.experiment["evaluate"][0]["epochs"] == 7 and spec.experiment["seed"] == 5
    with pytest.raises(ConfigError, match="--set evaluate.0.epochs=0"):
        load_sweep_file(write(folder, SWEEP), overrides=["evaluate.0.epochs=0"])


def test_random_sweep_needs_a_bound(folder):
    spec = load_sweep_file(write(folder, SWEEP.replace("  run_cap: 4\n", "")))
    with pytest.raises(UserError, match="run_cap"):
        check_runnable(spec, None)
    check_runnable(spec, 3)


def test_round_trip_through_record(folder):
    spec = load_sweep_file(write(folder, SWEEP))
    from jigsawkit.search.sweep_spec import SweepSpec

    again = SweepSpec.from_record(spec.to_record())
    params = {"evaluate.0.lr": 0.001, "evaluate.0.batch_size": 64}
    assert again.trial_experiment(params) == spec.trial_experiment(params)


def test_bad_file_exits_2_without_traceback(folder):
    path = write(folder, SWEEP.replace("evaluate[0].lr:", "evaluate[0].nope:"))
    result = subprocess.run(
        [sys.executable, "-m", "jigsawkit", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{path}:7:5: sweep.parameters.evaluate[0].nope" in result.stderr

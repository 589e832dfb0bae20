"""``--set KEY=VALUE`` overrides: keys, values, new mappings, list items, error locations."""

from __future__ import annotations

import pytest
import yaml

from jigsawkit.cli import main
from jigsawkit.config.experiment import load_experiment
from jigsawkit.config.overrides import apply_overrides, parse_key, parse_override
from jigsawkit.config.yaml_marks import Marks
from jigsawkit.errors import ConfigError

EXPERIMENT = """\
name: t
pretrain:
  epochs: 4
  batch_size: 8
evaluate:
  - name: linear_probe
    epochs: 5
  - name: knn
"""


@pytest.fixture
def experiment(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(EXPERIMENT)
    return path


@pytest.mark.parametrize(
    "key, expected",
    [
        ("pretrain.epochs", ("pretrain", "epochs")),
        ("evaluate[0].epochs", ("evaluate", 0, "epochs")),
        ("evaluate.0.epochs", ("evaluate", 0, "epochs")),
        ("evaluate[1].data.name", ("evaluate", 1, "data", "name")),
        ("trackers[0]", ("trackers", 0)),
        (" seed ", ("seed",)),
    ],
)
def test_parse_key(key, expected):
    assert parse_key(key) == expected


@pytest.mark.parametrize(
    "text, value",
    [
        ("pretrain.epochs=2", 2),
        ("evaluate[0].lr=[0.1, 0.01]", [0.1, 0.01]),
        ("evaluate[0].lr=[0.1,0.01]", [0.1, 0.01]),
        ("pretrain.optimizer={name: sgd, lr: 0.5}", {"name": "sgd", "lr": 0.5}),
        ("checkpoint=null", None),
        ("description=a=b", "a=b"),
        ("description='42'", "42"),
        ("description=", ""),
        ("pretrain.grad_clip=1e-3", "1e-3"),  # YAML 1.1: no dot, so a string
        ("pretrain.grad_clip=1.0e-3", 0.001),
        ("evaluate[0].compare_random_init=false", False),
    ],
)
def test_values_are_yaml(text, value):
    assert parse_override(text)[1] == value


def test_apply_sets_existing_and_new_keys_and_records_locations():
    data = yaml.safe_load(EXPERIMENT)
    marks = Marks("e.yaml")
    overrides = [
        "pretrain.epochs=2",
        "evaluate[0].epochs=3",
        "evaluate[0].lr=[0.1, 0.01]",
        "pretrain.optimizer.lr=0.5",  # a mapping the file does not have
        "backbone.channels=[8, 16, 32]",  # a top-level mapping the file does not have
        "evaluate[2]=knn",  # one past the end appends
        "pretrain.epochs=7",  # the last one wins
    ]
    data = apply_overrides(data, overrides, marks)
    assert data["pretrain"] == {"epochs": 7, "batch_size": 8, "optimizer": {"lr": 0.5}}
    assert data["evaluate"][0] == {"name": "linear_probe", "epochs": 3, "lr": [0.1, 0.01]}
    assert data["evaluate"][2] == "knn"
    # a section the file lacks starts from its default (the default backbone, cfn)
    assert data["backbone"] == {"name": "cfn", "channels": [8, 16, 32]}
    assert marks.where(("pretrain", "epochs")) == "--set pretrain.epochs=7"
    assert marks.where(("evaluate", 0, "lr", 1)) == "--set evaluate[0].lr=[0.1, 0.01]"
    assert marks.where(("backbone", "name"), key=True) == "--set backbone.channels=[8, 16, 32]"


def test_parameters_of_a_component_given_by_name():
    data = {"backbone": "cfn", "trackers": ["console", "wandb"]}
    data = apply_overrides(data, ["backbone.tile_fc=8", "trackers[1].mode=offline"], Marks("e"))
    assert data["backbone"] == {"name": "cfn", "tile_fc": 8}
    assert data["trackers"] == ["console", {"name": "wandb", "mode": "offline"}]


def test_null_mapping_in_the_file_is_replaced():
    data = {"pretrain": None}
    data = apply_overrides(data, ["pretrain.epochs=2"], Marks("e.yaml"))
    assert data == {"pretrain": {"epochs": 2}}


@pytest.mark.parametrize(
    "text, message",
    [
        ("pretrain.epochs", "expected KEY=VALUE"),
        ("=3", "empty key"),
        ("evaluate[x].epochs=1", "cannot read the key at '[x].epochs'"),
        ("evaluate[9].epochs=1", "index [9] does not exist"),
        ("evaluate[0][0]=1", "index [0] does not exist"),
        ("pretrain.epochs.value=1", "'value' is not inside a mapping"),
        ("pretrain.epochs=[1,", "cannot read the value"),
    ],
)
def test_bad_overrides(text, message):
    data = yaml.safe_load(EXPERIMENT)
    with pytest.raises(ConfigError) as info:
        apply_overrides(data, [text], Marks("e.yaml"))
    (line,) = info.value.problems
    assert line.startswith(f"--set {text}: ") and message in line, line


def test_overrides_are_validated_like_the_file(experiment):
    resolved = load_experiment(
        experiment,
        overrides=["pretrain.epochs=2", "evaluate[0].epochs=3", "pretrain.optimizer.lr=0.5"],
    )
    assert resolved["pretrain"]["epochs"] == 2
    assert resolved["evaluate"][0]["epochs"] == 3
    assert resolved["pretrain"]["optimizer"]["lr"] == 0.5
    assert "name" in resolved["pretrain"]["optimizer"], "defaults fill the new mapping"
    assert resolved["pretrain"]["batch_size"] == 8, "keys not overridden keep the file's value"


def test_cli_prints_the_overridden_config(experiment, capsys):
    rc = main(["validate", str(experiment), "--set", "pretrain.epochs=2", "--set", "seed=9"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    resolved = yaml.safe_load(out)
    assert resolved["pretrain"]["epochs"] == 2 and resolved["seed"] == 9


def test_errors_point_at_the_option_and_the_file(experiment, capsys):
    experiment.write_text(EXPERIMENT.replace("batch_size: 8", "batch_size: -8"))
    rc = main(
        [
            "validate",
            str(experiment),
            "--set",
            "pretrain.epochs=0",
            "--set",
            "pretrain.optimizer.lr=fast",
            "--set",
            "evaluate[1].neighbours=5",
        ]
    )
    _, err = capsys.readouterr()
    assert rc == 2
    lines = err.splitlines()
    assert lines[-1] == "4 problems found"
    assert (
        f"error: {experiment}:4:15: pretrain.batch_size: expected an integer >= 1 and <= 65536, found -8"
        in lines
    )
    assert (
        "error: --set pretrain.epochs=0: pretrain.epochs: expected an integer >= 1 and <= 100000, found 0"
        in lines
    )
    assert any(
        line.startswith("error: --set pretrain.optimizer.lr=fast: pretrain.optimizer.lr: ")
        for line in lines
    ), err
    assert any(
        line.startswith(
            "error: --set evaluate[1].neighbours=5: evaluate[1].neighbours: unknown key"
        )
        for line in lines
    ), err

"""Valid experiments: shipped files validate, defaults are filled, resolved configs round-trip,
and a plugin's parameters are validated exactly like a built-in's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from jigsawkit.cli import main
from jigsawkit.config.core_schema import CORE_SCHEMA
from jigsawkit.config.experiment import dump_yaml, load_experiment
from jigsawkit.registry import registry

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "experiments").glob("*.yaml"))


def _is_sweep(path: Path) -> bool:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return isinstance(data, dict) and "sweep" in data


EXPERIMENTS = [p for p in SHIPPED if not _is_sweep(p)]


def test_experiments_folder_is_not_empty():
    if not SHIPPED:
        pytest.skip("experiments/ holds no YAML files yet")
    assert any(p.name == "quickstart.yaml" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_file_validates(path, capsys, clean_registries):
    rc = main(["validate", str(path), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.strip() == f"{path}: OK"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_resolved_config_round_trips(path, tmp_path, clean_registries):
    resolved = load_experiment(path)
    again = tmp_path / path.name
    again.write_text(dump_yaml(resolved), encoding="utf-8")
    assert load_experiment(again) == resolved
    written = yaml.safe_load(again.read_text(encoding="utf-8"))
    assert written == resolved, "dump_yaml writes plain YAML that reads back the same"


@pytest.fixture
def minimal(tmp_path) -> Path:
    path = tmp_path / "minimal.yaml"
    path.write_text("name: minimal\n")
    return path


def test_defaults_are_filled(minimal):
    resolved = load_experiment(minimal)
    assert list(resolved) == list(CORE_SCHEMA["properties"]), "every core key, in schema order"
    assert resolved["name"] == "minimal"
    for slot in ("backbone", "pretext"):
        entry = registry(slot).get(resolved[slot]["name"])
        params = set(resolved[slot]) - {"name"}
        assert params == set(entry.params_schema["properties"]), f"{slot} defaults filled"
    pretrain = resolved["pretrain"]
    assert set(CORE_SCHEMA["properties"]["pretrain"]["properties"]) == set(pretrain)
    assert pretrain["data"]["name"] == "synthetic" and len(pretrain["data"]) > 1
    assert pretrain["optimizer"], "nested mappings get their own defaults"
    assert all(isinstance(t, dict) and "name" in t for t in resolved["trackers"])


def test_string_shorthand_selects_a_component(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("name: t\nbackbone: cfn\ntrackers: [console]\nevaluate: [knn]\n")
    resolved = load_experiment(path)
    assert resolved["backbone"]["name"] == "cfn" and len(resolved["backbone"]) > 1
    assert resolved["trackers"][0]["name"] == "console"
    assert resolved["evaluate"][0]["name"] == "knn" and "data" in resolved["evaluate"][0]


def test_anchors_and_merge_keys(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(
        "name: t\n"
        "evaluate:\n"
        "  - &probe {name: linear_probe, data: &data {name: synthetic, seed: 1}, image_size: 64}\n"
        "  - {<<: *probe, name: knn, k: 5}\n"
        "pretrain:\n  data: *data\n"
    )
    resolved = load_experiment(path)
    first, second = resolved["evaluate"]
    assert (first["name"], second["name"]) == ("linear_probe", "knn")
    assert second["k"] == 5 and second["image_size"] == 64 and second["data"]["seed"] == 1
    assert resolved["pretrain"]["data"]["seed"] == 1


def test_minimal_round_trip_through_the_cli(minimal, tmp_path, capsys):
    assert main(["validate", str(minimal)]) == 0
    first = capsys.readouterr().out
    again = tmp_path / "again.yaml"
    again.write_text(first)
    assert main(["validate", str(again)]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(first)


def test_checkpoint_instead_of_pretraining(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("name: t\npretrain: null\ncheckpoint: runs/x/feature_extractor.pt\n")
    resolved = load_experiment(path)
    assert resolved["pretrain"] is None and resolved["checkpoint"].endswith(".pt")


PLUGIN = '''\
from jigsawkit import register_backbone


def _even(params):
    if params["width"] % 2:
        return [("width", f"must be even, found {params['width']}")]
    return []


@register_backbone(
    "wide_net",
    schema={
        "properties": {
            "width": {"type": "integer", "minimum": 1, "default": 8},
            "depth": {"type": "integer", "minimum": 1, "default": 2},
        }
    },
    check=_even,
)
def wide_net(width=8, depth=2):
    """A test backbone from a plugin folder."""
    raise AssertionError("validation never builds a component")
'''


@pytest.fixture
def plugin_experiment(tmp_path, clean_registries):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "wide.py").write_text(PLUGIN)
    return tmp_path / "e.yaml"


def test_plugin_parameters_get_defaults(plugin_experiment):
    plugin_experiment.write_text("name: t\nbackbone:\n  name: wide_net\n  width: 4\n")
    resolved = load_experiment(plugin_experiment)
    assert resolved["backbone"] == {"name": "wide_net", "width": 4, "depth": 2}
    entry = registry("backbone").get("wide_net")
    assert entry.origin == str((plugin_experiment.parent / "plugins" / "wide.py").resolve())


def test_plugin_parameters_are_type_checked_with_their_location(plugin_experiment, capsys):
    plugin_experiment.write_text("name: t\nbackbone:\n  name: wide_net\n  width: wide\n  dept: 3\n")
    assert main(["validate", str(plugin_experiment)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"error: {plugin_experiment}:4:10: backbone.width: expected an integer >= 1, found 'wide'",
        f"error: {plugin_experiment}:5:3: backbone.dept: unknown key; did you mean 'depth'?",
        "2 problems found",
    ]


def test_plugin_cross_field_check_is_located(plugin_experiment, capsys):
    plugin_experiment.write_text("name: t\nbackbone:\n  name: wide_net\n  width: 7\n")
    assert main(["validate", str(plugin_experiment)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"error: {plugin_experiment}:4:10: backbone.width: must be even, found 7"


def test_plugin_folders_listed_in_the_experiment(tmp_path, clean_registries):
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "wide.py").write_text(PLUGIN)
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "e.yaml"
    path.write_text("name: t\nplugins: [../extra]\nbackbone: wide_net\n")
    resolved = load_experiment(path)
    assert resolved["backbone"]["width"] == 8
    assert resolved["plugins"] == [str((tmp_path / "extra").resolve())]


# --- docs/experiments.md documents every key ------------------------------------------

DOC = ROOT / "docs" / "experiments.md"
BUILT_IN = [
    entry
    for kind in ("backbone", "pretext", "dataset", "evaluator", "tracker", "search")
    for entry in registry(kind).entries()
    if entry.origin == "built-in"
]


def _dotted_keys(schema: dict, prefix: str = ""):
    for key, sub in (schema.get("properties") or {}).items():
        yield prefix + key
        if isinstance(sub, dict) and "properties" in sub and "x-component" not in sub:
            yield from _dotted_keys(sub, f"{prefix}{key}.")


def test_every_core_key_is_documented():
    text = DOC.read_text(encoding="utf-8")
    missing = [key for key in _dotted_keys(CORE_SCHEMA) if f"`{key}`" not in text]
    assert not missing, f"docs/experiments.md does not document {missing}"


@pytest.mark.parametrize("entry", BUILT_IN, ids=[f"{e.kind}:{e.name}" for e in BUILT_IN])
def test_every_builtin_parameter_is_documented(entry):
    text = DOC.read_text(encoding="utf-8")
    heading = f"#### {entry.kind}: `{entry.name}`\n"
    assert heading in text, f"docs/experiments.md has no section for {entry.kind} {entry.name}"
    section = re.split(r"\n#{2,4} ", text.split(heading, 1)[1], maxsplit=1)[0]
    missing = [key for key in _dotted_keys(entry.params_schema) if f"| `{key}` |" not in section]
    assert not missing, f"{entry.kind} {entry.name}: parameters not documented: {missing}"

"""Plugin discovery: folders, JIGSAWKIT_PLUGINS, plugins/ next to an experiment, entry-point
packages, broken plugins, and the plugin example in docs/plugins.md."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from cli_process import run_jigsawkit

from jigsawkit.cli import main
from jigsawkit.registry import KINDS, REGISTRIES, registry

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''\
from jigsawkit import register_{kind}


@register_{kind}("{name}", schema={{"properties": {{"size": {{"type": "integer", "default": 3}}}}}})
def factory(**params):
    """{description}"""
    raise AssertionError("listing never builds a component")
'''


def write_plugin(folder: Path, filename: str, kind: str, name: str, description: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_text(PLUGIN.format(kind=kind, name=name, description=description))
    return path


def list_json(capsys, *args: str) -> tuple[list[dict], str]:
    rc = main(["list-components", "--json", *args])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out), err


def by_name(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(row["kind"], row["name"]): row for row in rows}


def test_json_lists_every_component_with_its_fields(tmp_path, capsys, clean_registries):
    path = write_plugin(tmp_path / "p", "colours.py", "dataset", "colours", "Solid colours.")
    rows, err = list_json(capsys, "--plugins", str(tmp_path / "p"))
    assert err == ""
    assert all(
        set(row) == {"kind", "name", "origin", "description", "params_schema", "target"}
        for row in rows
    )
    row = by_name(rows)[("dataset", "colours")]
    assert row["origin"] == str(path.resolve())
    assert row["description"] == "Solid colours."
    assert row["params_schema"]["properties"]["size"] == {"type": "integer", "default": 3}
    assert row["params_schema"]["additionalProperties"] is False
    builtin = [r for r in rows if r["origin"] == "built-in"]
    assert {r["kind"] for r in builtin} >= {"backbone", "pretext", "dataset", "evaluator"}
    assert len(rows) == sum(len(registry(kind)) for kind in KINDS)


def test_table_shows_the_plugin_and_its_origin(tmp_path, capsys, monkeypatch, clean_registries):
    monkeypatch.setenv("COLUMNS", "400")  # wide enough that rich wraps no path
    path = write_plugin(tmp_path / "p", "colours.py", "dataset", "colours", "Solid colours.")
    rc = main(["list-components", "--kind", "dataset", "--plugins", str(tmp_path / "p")])
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    row = next(line for line in out.splitlines() if " colours " in line)
    assert str(path.resolve()) in row and "Solid colours." in row and "size: integer = 3" in row
    assert "backbone" not in out, "--kind shows one kind"
    assert "\x1b[" not in out


def test_broken_plugins_are_reported_in_one_line_each(tmp_path, capsys, clean_registries):
    folder = tmp_path / "p"
    write_plugin(folder, "good.py", "evaluator", "good_eval", "Still listed.")
    (folder / "raises.py").write_text('raise RuntimeError("first line\\nsecond line")\n')
    (folder / "syntax.py").write_text("def broken(:\n")
    (folder / "clash.py").write_text(
        PLUGIN.format(kind="backbone", name="cfn", description="Clashes with a built-in.")
    )
    (folder / "_private.py").write_text("raise RuntimeError('never imported')\n")
    (folder / "notes.txt").write_text("not a plugin")
    rows, err = list_json(capsys, "--plugins", str(folder))
    lines = err.splitlines()
    assert len(lines) == 3, err
    for name, fragment in [
        ("clash.py", "DuplicateComponentError"),
        ("raises.py", "RuntimeError: first line second line"),
        ("syntax.py", "SyntaxError"),
    ]:
        (line,) = [line for line in lines if str(folder.resolve() / name) in line]
        assert line.startswith("warning: plugin ") and "failed to import" in line
        assert fragment in line, line
    assert "Traceback" not in err
    names = by_name(rows)
    assert ("evaluator", "good_eval") in names
    assert names[("backbone", "cfn")]["origin"] == "built-in", "the built-in is kept"


def test_missing_plugin_folder_is_an_error(tmp_path, capsys, clean_registries):
    for command in (["list-components"], ["validate", str(ROOT / "experiments/quickstart.yaml")]):
        assert main([*command, "--plugins", str(tmp_path / "nowhere")]) == 2
        out, err = capsys.readouterr()
        assert err == f"error: --plugins: {tmp_path / 'nowhere'}: no such plugin folder\n"
        assert out == ""


def test_package_folder_plugin(tmp_path, capsys, clean_registries):
    package = tmp_path / "p" / "shapes_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from jigsawkit import register_dataset\n"
        "from .names import NAME\n\n"
        "@register_dataset(NAME)\n"
        "def shapes():\n    '''Shapes from a package folder.'''\n"
    )
    (package / "names.py").write_text("NAME = 'pkg_shapes'\n")
    rows, err = list_json(capsys, "--plugins", str(tmp_path / "p"))
    assert err == ""
    assert by_name(rows)[("dataset", "pkg_shapes")]["origin"] == str(package.resolve())


def test_jigsawkit_plugins_environment_variable(tmp_path, capsys, monkeypatch, clean_registries):
    first = write_plugin(tmp_path / "a", "one.py", "tracker", "env_one", "From the first.")
    second = write_plugin(tmp_path / "b", "two.py", "tracker", "env_two", "From the second.")
    monkeypatch.setenv(
        "JIGSAWKIT_PLUGINS", os.pathsep.join([str(first.parent), str(second.parent)])
    )
    rows, _ = list_json(capsys, "--kind", "tracker")
    names = by_name(rows)
    assert names[("tracker", "env_one")]["origin"] == str(first.resolve())
    assert names[("tracker", "env_two")]["origin"] == str(second.resolve())


def test_plugins_folder_next_to_the_experiment(tmp_path, capsys, clean_registries):
    write_plugin(tmp_path / "plugins", "near.py", "evaluator", "near_eval", "Found nearby.")
    experiment = tmp_path / "e.yaml"
    experiment.write_text("name: t\nevaluate:\n  - name: near_eval\n    size: 5\n")
    assert main(["validate", str(experiment)]) == 0
    out = capsys.readouterr().out
    assert "name: near_eval" in out and "size: 5" in out
    experiment.write_text("name: t\nevaluate:\n  - name: near_eval\n    size: five\n")
    assert main(["validate", str(experiment)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {experiment}:4:11: evaluate[0].size: ")


def test_unknown_name_mentions_the_plugin_folders_searched(tmp_path, capsys, clean_registries):
    folder = tmp_path / "p"
    write_plugin(folder, "one.py", "backbone", "plug_one", "One.")
    experiment = tmp_path / "e.yaml"
    experiment.write_text("name: t\nbackbone: plug_onee\n")
    assert main(["validate", str(experiment), "--plugins", str(folder)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "did you mean 'plug_one'" in line and str(folder) in line


def test_empty_kind_says_none_registered(capsys, monkeypatch, clean_registries):
    monkeypatch.setattr(REGISTRIES["search"], "_entries", {})
    assert main(["list-components", "--kind", "search"]) == 0
    assert capsys.readouterr().out.strip() == "search: none registered"
    rows, _ = list_json(capsys, "--kind", "search")
    assert rows == []


ENTRY_POINT_MODULE = '''\
from jigsawkit import register_pretext


@register_pretext("tiny_rotation", schema={"properties": {"angles": {"type": "integer", "default": 4}}})
def tiny_rotation(backbone, angles=4):
    """Rotation prediction from an installed package."""
    raise AssertionError("listing never builds a component")
'''


def _distribution(site: Path, name: str, module: str, source: str) -> None:
    (site / f"{module}.py").write_text(source)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[jigsawkit.plugins]\n{name} = {module}\n")


def test_entry_point_package(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _distribution(site, "tinyplug", "tinyplug", ENTRY_POINT_MODULE)
    _distribution(site, "brokenplug", "brokenplug", "import no_such_module_anywhere\n")
    _distribution(site, "wordyplug", "wordyplug", 'raise RuntimeError("first\\nsecond")\n')
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    proc = run_jigsawkit("list-components", "--json", "--kind", "pretext", env=env)
    assert proc.returncode == 0, proc.stderr
    row = by_name(json.loads(proc.stdout))[("pretext", "tiny_rotation")]
    assert row["origin"] == "package tinyplug"
    assert row["description"] == "Rotation prediction from an installed package."
    broken, wordy = sorted(proc.stderr.splitlines())  # one line each, a long message too
    assert broken.startswith("warning: plugin package brokenplug (brokenplug) failed to import: ")
    assert "ModuleNotFoundError" in broken
    assert wordy.endswith("(wordyplug) failed to import: RuntimeError: first second")


# --- the example in docs/plugins.md ---------------------------------------------------


def extract_example(markdown: Path) -> str:
    text = markdown.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- test: extract -->\n```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "docs/plugins.md has exactly one extracted example"
    return blocks[0]


def test_docs_plugin_example_lists_validates_and_builds(tmp_path, capsys, clean_registries):
    folder = tmp_path / "plugins"
    folder.mkdir()
    path = folder / "example.py"
    path.write_text(extract_example(ROOT / "docs" / "plugins.md"))
    rows, err = list_json(capsys, "--plugins", str(folder))
    assert err == ""
    (row,) = [r for r in rows if r["origin"] == str(path.resolve())]
    assert row["description"]
    entry = registry(row["kind"]).get(row["name"])

    # The documented check fires with the documented message.
    experiment = tmp_path / "e.yaml"
    experiment.write_text(f"name: t\n{row['kind']}: {row['name']}\n")
    assert main(["validate", str(experiment), "--set", f"{row['kind']}.input_size=25"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"error: --set {row['kind']}.input_size=25: {row['kind']}.input_size: "
        "must be even (one 2x2 pooling), found 25"
    )

    torch = pytest.importorskip("torch")
    defaults = {k: s["default"] for k, s in entry.params_schema["properties"].items()}
    model = entry.build(**defaults)
    images = torch.rand(2, 3, model.input_size, model.input_size)
    assert model(images).shape == (2, model.out_dim)
    features = model.probe_features(images, list(model.feature_layers))
    assert {k: v.shape[1] for k, v in features.items()} == model.feature_layers
    assert model.default_probe_layer in model.feature_layers

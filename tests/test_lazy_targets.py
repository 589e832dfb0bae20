"""Lazy registration targets (``target="module:attr"``): imported when the component is
built, relative to the plugin's folder, one-line errors at build time and before a run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from jigsawkit.cli import main
from jigsawkit.errors import PluginError, PluginLoadError
from jigsawkit.plugins import load_plugin_dir
from jigsawkit.registry import registry

REGISTERING = '''\
"""Registers a dataset whose class lives in a sibling module."""
from jigsawkit import register_dataset

register_dataset(
    "{name}",
    schema={{"properties": {{"size": {{"type": "integer", "default": 3}}}}}},
    target="{target}",
    description="A dataset built from a lazy target.",
)
'''

IMPLEMENTATION = '''\
IMPORTED = True


class Colours:
    """The class a registration names; keyword parameters without defaults."""

    def __init__(self, *, size):
        self.size = size
'''


def plugin_folder(tmp_path: Path, target: str, name: str = "colours") -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(REGISTERING.format(name=name, target=target))
    (folder / "_colours_impl.py").write_text(IMPLEMENTATION)
    return folder


def test_a_sibling_module_is_imported_only_when_built(tmp_path, clean_registries):
    folder = plugin_folder(tmp_path, "._colours_impl:Colours")
    load_plugin_dir(folder)
    entry = registry("dataset").get("colours")
    assert entry.origin == str((folder / "colours.py").resolve())
    assert entry.description == "A dataset built from a lazy target."
    assert not any(m.endswith("._colours_impl") for m in sys.modules), "not imported yet"
    assert "_colours_impl" not in registry("dataset"), "a _file is no plugin of its own"
    built = registry("dataset").build("colours")
    assert type(built).__name__ == "Colours" and built.size == 3  # the schema's default
    module = sys.modules[type(built).__module__]
    assert module.IMPORTED and Path(module.__file__) == (folder / "_colours_impl.py").resolve()


def test_a_package_plugin_names_its_submodule(tmp_path, clean_registries):
    package = tmp_path / "plugins" / "paint"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(REGISTERING.format(name="paint", target=".model:Colours"))
    (package / "model.py").write_text(IMPLEMENTATION)
    load_plugin_dir(tmp_path / "plugins")
    assert registry("dataset").build("paint", size=5).size == 5


@pytest.mark.parametrize(
    "target, why",
    [
        ("._missing_module:Colours", "ModuleNotFoundError: No module named"),
        ("._colours_impl:Colurs", "has no attribute 'Colurs'"),
        ("._colours_impl:IMPORTED", "is a bool, not a class or function"),
    ],
)
def test_a_wrong_target_is_one_line_at_build_time(tmp_path, clean_registries, target, why):
    folder = plugin_folder(tmp_path, target)
    load_plugin_dir(folder)  # registering does not import the target: listing still works
    with pytest.raises(PluginError) as caught:
        registry("dataset").build("colours")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"plugin {(folder / 'colours.py').resolve()}: dataset 'colours': target '{target}'"
    )
    assert why in message


@pytest.mark.parametrize(
    "target, why",
    [
        ("..outside:Colours", "cannot be resolved: ImportError: attempted relative import"),
        ("colours_impl.Colours", "is not 'module:attr'"),
    ],
)
def test_a_target_that_leaves_the_folder_or_is_malformed_is_refused(
    tmp_path, clean_registries, target, why
):
    folder = plugin_folder(tmp_path, target)
    with pytest.raises(PluginLoadError) as caught:
        from jigsawkit.plugins import load_plugins

        load_plugins([folder])
    assert "dataset 'colours': target" in str(caught.value) and why in str(caught.value)


def test_a_target_needs_a_description(tmp_path, clean_registries):
    source = REGISTERING.replace('    description="A dataset built from a lazy target.",\n', "")
    (tmp_path / "bare.py").write_text(source.format(name="bare", target="._x:Y"))
    with pytest.raises(PluginLoadError, match="needs a name and a description"):
        from jigsawkit.plugins import load_plugins

        load_plugins([tmp_path])


EXPERIMENT = """\
name: lazy
pretrain: {epochs: 1, data: {name: synthetic, train_size: 8, val_size: 4, test_size: 4}}
backbone: {name: cfn, channels: [4], kernel_sizes: [3], tile_fc: 8, input_size: 16}
pretext: {name: lazy_task}
evaluate: []
"""

TASK_PLUGIN = """\
from jigsawkit import register_pretext

register_pretext("lazy_task", target="._task_impl:Task", description="A misspelled task.")
"""


def test_run_fails_before_the_run_directory_exists(tmp_path, capsys, clean_registries):
    """A run imports every selected component's target first: one line, nothing written."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "task.py").write_text(TASK_PLUGIN)
    experiment = tmp_path / "lazy.yaml"
    experiment.write_text(EXPERIMENT)
    assert main(["validate", str(experiment)]) == 0, "validation does not import targets"
    capsys.readouterr()
    run_dir = tmp_path / "run"
    assert main(["run", str(experiment), "--out", str(run_dir)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    plugin = (tmp_path / "plugins" / "task.py").resolve()
    assert line.startswith(
        f"error: plugin {plugin}: pretext 'lazy_task': target '._task_impl:Task' cannot be "
        "imported: ModuleNotFoundError"
    )
    assert not run_dir.exists()


def test_docs_lazy_target_example_lists_without_torch_and_builds(tmp_path):
    """The two files of docs/plugins.md's lazy-target example, as written."""
    import re
    import subprocess

    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"<!-- test: lazy-target (\S+) -->\n```python\n(.*?)```", text, re.S)
    assert [name for name, _ in blocks] == ["flat_mlp.py", "_flat_mlp_model.py"]
    folder = tmp_path / "plugins"
    folder.mkdir()
    for name, source in blocks:
        (folder / name).write_text(source)
    code = (
        "import sys, jigsawkit\n"
        "from jigsawkit.plugins import load_plugin_dir\n"
        f"load_plugin_dir({str(folder)!r})\n"
        "print(jigsawkit.list_components('backbone', 'flat*'), 'torch' in sys.modules)\n"
        "model = jigsawkit.create_backbone('flat_mlp', hidden=8)\n"
        "import torch\n"
        "x = torch.rand(2, 3, model.input_size, model.input_size)\n"
        "print(tuple(model(x).shape), model.probe_features(x, ['hidden'])['hidden'].shape[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["['flat_mlp'] False", "(2, 8) 8"]

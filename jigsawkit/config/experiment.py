"""Load an experiment file into a validated, default-filled, resolved config (a plain dict)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jigsawkit.config.core_schema import CORE_SCHEMA
from jigsawkit.config.overrides import apply_overrides
from jigsawkit.config.validate import validate_data
from jigsawkit.config.yaml_marks import KeyPath, Marks, load_yaml_mapping
from jigsawkit.errors import ConfigError
from jigsawkit.plugins import load_plugins


def core_checks(config: dict) -> list[tuple[KeyPath, str]]:
    """Cross-field checks of the core keys (components check their own parameters)."""
    problems: list[tuple[KeyPath, str]] = []
    if config.get("pretrain") is None and not config.get("checkpoint"):
        problems.append(
            (
                ("pretrain",),
                "pretrain is null but no checkpoint is given: set pretrain "
                "or `checkpoint: path/to/feature_extractor.pt`",
            )
        )
    seen: dict[str, int] = {}
    for i, evaluator in enumerate(config.get("evaluate") or []):
        name = evaluator.get("name")
        if name in seen:
            problems.append(
                (
                    ("evaluate", i, "name"),
                    f"evaluator '{name}' is listed twice "
                    f"(first at evaluate[{seen[name]}]); results would overwrite each other",
                )
            )
        seen.setdefault(name, i)
    names = [t.get("name") for t in config.get("trackers") or []]
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append((("trackers", i), f"tracker '{name}' is listed twice"))
    return problems


def validate_experiment(data: dict, marks: Marks) -> dict:
    return validate_data(data, marks, CORE_SCHEMA, extra_checks=[core_checks])


def load_experiment(
    path: str | Path,
    overrides: Iterable[str] = (),
    plugin_dirs: Iterable[str | Path] = (),
    loaded: tuple[dict, Marks] | None = None,
) -> dict:
    """Read, override, load plugins for, and validate an experiment file.

    ``loaded``: the file's ``load_yaml_mapping`` result when the caller has parsed it
    already (a file is parsed once per command: a pipe can be read only once).
    Raises ConfigError listing every problem with its file:line:col.
    """
    data, marks = loaded if loaded is not None else load_yaml_mapping(path)
    return resolve_experiment(data, marks, path, overrides, plugin_dirs).config


@dataclass
class ResolvedExperiment:
    """An experiment loaded for a run: ``data`` as written with the ``--set`` overrides
    applied (what a sweep changes per trial), ``config`` validated and default-filled, and
    the ``marks`` that locate both. In both, ``plugins`` lists absolute folders."""

    data: dict
    config: dict
    marks: Marks


def resolve_experiment(
    data: dict,
    marks: Marks,
    path: str | Path,
    overrides: Iterable[str] = (),
    plugin_dirs: Iterable[str | Path] = (),
    within: str | None = None,
) -> ResolvedExperiment:
    """Apply ``overrides``, load the plugins the experiment names, validate, and record
    every plugin folder as an absolute path: the one sequence behind ``jigsawkit run``,
    ``validate`` and a sweep's base experiment (in a file or inline in the sweep file).

    ``path``: the file the experiment's relative ``plugins:`` folders are relative to.
    ``within``: an override prefix to accept (``experiment.`` on a sweep file).
    Raises ConfigError listing every problem with its file:line:col.
    """
    data = apply_overrides(data, list(overrides), marks, within=within)
    named = data.get("plugins")
    if not (isinstance(named, list) and all(isinstance(p, str) for p in named)):
        named = []  # the schema reports a malformed `plugins:`
    check_plugin_folders(path, named, marks)
    folders = load_plugins(list(plugin_dirs), experiment_file=path, experiment_dirs=named)
    config = validate_experiment(data, marks)
    # Every plugin folder this experiment was loaded with (the plugins/ folder next to the
    # file and --plugins folders too), as absolute paths: the run directory's config.yaml
    # then validates and runs from anywhere with no extra option.
    config["plugins"] = [str(folder) for folder in folders]
    data["plugins"] = list(config["plugins"])
    return ResolvedExperiment(data=data, config=config, marks=marks)


def check_plugin_folders(path: str | Path, folders: list[str], marks: Marks) -> None:
    """Every folder the experiment's ``plugins:`` names exists (else file:line:col)."""
    base = Path(path).parent
    problems = []
    for i, folder in enumerate(folders):
        full = base / Path(folder).expanduser()
        if not full.is_dir():
            what = "is not a folder" if full.exists() else "does not exist"
            problems.append(f"{marks.where(('plugins', i))}: plugins[{i}]: {full} {what}")
    if problems:
        raise ConfigError(problems)


def dump_yaml(config: Any) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)

"""Plugin discovery: components that live outside jigsawkit's core.

Plugins are looked for, in this order, only in places the user named:

1. a ``plugins/`` folder next to the experiment file, and the folders the experiment lists
   under ``plugins:`` (relative to the file);
2. folders given with ``--plugins DIR`` (repeatable) or in ``JIGSAWKIT_PLUGINS``
   (a path list, separated like ``PATH``);
3. installed packages exposing the ``jigsawkit.plugins`` entry-point group.

Every ``*.py`` file (and package folder) in a plugin folder is imported; its registrations
record the file as their origin. A plugin that fails to import is reported in one line
naming the file or package, and everything else stays usable.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

from jigsawkit.registry import registering_from

ENTRY_POINT_GROUP = "jigsawkit.plugins"

_searched_dirs: list[Path] = []
_loaded_files: set[Path] = set()
_entry_points_loaded = False
failures: list[str] = []


def env_plugin_dirs() -> list[Path]:
    raw = os.environ.get("JIGSAWKIT_PLUGINS", "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def search_locations_text() -> str:
    dirs = ", ".join(str(d) for d in _searched_dirs) or "none named"
    return (
        f"jigsawkit's built-ins, plugin folders ({dirs}; add one with --plugins DIR or "
        f"JIGSAWKIT_PLUGINS) and packages in the '{ENTRY_POINT_GROUP}' entry-point group"
    )


def _report(message: str) -> None:
    message = " ".join(message.split())  # one line, even for multi-line exception texts
    failures.append(message)
    print(f"warning: {message}", file=sys.stderr)


def _import_file(path: Path) -> None:
    path = path.resolve()
    if path in _loaded_files:
        return
    _loaded_files.add(path)
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"jigsawkit_plugin_{path.stem}_{digest}"
    target = path / "__init__.py" if path.is_dir() else path
    try:
        spec = importlib.util.spec_from_file_location(
            module_name, target, submodule_search_locations=[str(path)] if path.is_dir() else None
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        with registering_from(str(path)):
            spec.loader.exec_module(module)
    except Exception as exc:  # a broken plugin must not break the rest
        sys.modules.pop(module_name, None)
        _report(f"plugin {path} failed to import: {type(exc).__name__}: {exc}")


def load_plugin_dir(directory: Path) -> None:
    """Import every plugin file and package folder in ``directory``."""
    directory = Path(directory).expanduser()
    if directory.resolve() in [d.resolve() for d in _searched_dirs]:
        return
    _searched_dirs.append(directory)
    if not directory.is_dir():
        _report(f"plugin folder {directory} does not exist")
        return
    for item in sorted(directory.iterdir()):
        if item.name.startswith(("_", ".")):
            continue
        if item.suffix == ".py" or (item.is_dir() and (item / "__init__.py").exists()):
            _import_file(item)


def load_entry_points() -> None:
    """Import the packages registered in the ``jigsawkit.plugins`` entry-point group."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        package = getattr(ep.dist, "name", None) or ep.value
        try:
            with registering_from(f"package {package}"):
                ep.load()
        except Exception as exc:
            _report(
                f"plugin package {package} ({ep.value}) failed to import: "
                f"{type(exc).__name__}: {exc}"
            )


def load_plugins(
    cli_dirs: list[str | Path] | None = None,
    experiment_file: str | Path | None = None,
    experiment_dirs: list[str] | None = None,
) -> None:
    """Load built-ins and every plugin from the places the user named."""
    from jigsawkit.registry import load_builtins

    load_builtins()
    if experiment_file is not None:
        base = Path(experiment_file).parent
        if (base / "plugins").is_dir():
            load_plugin_dir(base / "plugins")
        for rel in experiment_dirs or []:
            load_plugin_dir(base / rel)
    for directory in list(cli_dirs or []) + env_plugin_dirs():
        load_plugin_dir(Path(directory))
    load_entry_points()

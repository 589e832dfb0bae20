"""Plugin discovery: components that live outside jigsawkit's core.

Plugins are looked for, in this order, only in places the user named:

1. a ``plugins/`` folder next to the experiment file, and the folders the experiment lists
   under ``plugins:`` (relative to the file);
2. folders given with ``--plugins DIR`` (repeatable) or in ``JIGSAWKIT_PLUGINS``
   (a path list, separated like ``PATH``);
3. installed packages exposing the ``jigsawkit.plugins`` entry-point group.

Every ``*.py`` file (and package folder) in a plugin folder is imported, except names
starting with ``_`` or ``.``; its registrations record the file as their origin. The files of
one folder are modules of one package standing for that folder (``folder_package``), so a
registration's relative lazy target (``target="._impl:Task"``: a ``_impl.py`` the loader
skips) resolves inside the folder the user named, and only there. Registration is transactional per file: a file that fails
half-way leaves none of its components registered. A plugin folder that does not exist is
an error. A plugin file that fails to import is an error for the commands that run or
validate experiments (``strict``), and a one-line warning for ``list-components``, which
lists everything else; an installed package that fails to import is always a warning (the
user did not name it).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path

from jigsawkit.errors import PluginLoadError, one_line
from jigsawkit.registry import registering_from, registration_transaction

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


def _report(message: str, warn: bool = True) -> None:
    message = " ".join(message.split())  # one line, even for multi-line exception texts
    failures.append(message)
    if warn:
        print(f"warning: {message}", file=sys.stderr)


def loaded_files() -> list[Path]:
    """Every plugin file (or package folder) imported so far, as absolute paths."""
    return sorted(_loaded_files)


def folder_package(directory: Path) -> str:
    """The name of a package standing for one plugin folder (created on first use).

    Its plugin files are its modules, so a plugin's relative target
    (``target="._impl:Task"``) or relative import finds a sibling module (a ``_impl.py``
    the loader skips, or a package's submodule) in that folder, and only there: the
    package's search path is the folder the user named.
    """
    directory = directory.resolve()
    digest = hashlib.sha1(str(directory).encode()).hexdigest()[:10]
    name = f"jigsawkit_plugins_{digest}"
    if name not in sys.modules:
        package = types.ModuleType(name, f"jigsawkit plugins in {directory}")
        package.__path__ = [str(directory)]
        package.__package__ = name
        package.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        package.__spec__.submodule_search_locations = [str(directory)]
        sys.modules[name] = package
    return name


def _import_file(path: Path, warn: bool = True) -> None:
    path = path.resolve()
    if path in _loaded_files:
        return
    _loaded_files.add(path)
    module_name = f"{folder_package(path.parent)}.{path.stem}"
    target = path / "__init__.py" if path.is_dir() else path
    try:
        spec = importlib.util.spec_from_file_location(
            module_name, target, submodule_search_locations=[str(path)] if path.is_dir() else None
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        with registering_from(str(path)), registration_transaction():
            spec.loader.exec_module(module)
    except Exception as exc:  # a broken plugin must not break the rest
        sys.modules.pop(module_name, None)
        text = str(exc)
        if text.startswith(f"plugin {path}: "):  # a PluginError already names the file
            text = text[len(f"plugin {path}: ") :]
            _report(f"plugin {path} failed to import: {text}", warn)
        else:
            _report(f"plugin {path} failed to import: {one_line(exc)}", warn)


def load_plugin_dir(directory: Path, where: str = "plugins", warn: bool = True) -> None:
    """Import every plugin file and package folder in ``directory``.

    ``where`` says who named the folder, for the error when it does not exist.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        what = "is not a folder" if directory.exists() else "no such plugin folder"
        raise PluginLoadError(f"{where}: {directory}: {what}")
    if directory.resolve() in [d.resolve() for d in _searched_dirs]:
        return
    _searched_dirs.append(directory)
    for item in sorted(directory.iterdir()):
        if item.name.startswith(("_", ".")):
            continue
        if item.suffix == ".py" or (item.is_dir() and (item / "__init__.py").exists()):
            _import_file(item, warn)


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
            with registering_from(f"package {package}"), registration_transaction():
                ep.load()
        except Exception as exc:
            _report(f"plugin package {package} ({ep.value}) failed to import: {one_line(exc)}")


def load_plugins(
    cli_dirs: list[str | Path] | None = None,
    experiment_file: str | Path | None = None,
    experiment_dirs: list[str] | None = None,
    strict: bool = True,
) -> list[Path]:
    """Load built-ins and every plugin from the places the user named.

    Returns the plugin folders this call named, as absolute paths (the ``plugins/`` folder
    next to ``experiment_file`` when there is one, then ``experiment_dirs``, then
    ``cli_dirs``; not ``JIGSAWKIT_PLUGINS``, which belongs to the shell, not the run).
    ``strict``: a plugin file that fails to import raises ``PluginLoadError`` (one line
    per file) instead of a warning.
    """
    from jigsawkit.registry import load_builtins

    load_builtins()
    before = len(failures)
    named: list[tuple[Path, str]] = []
    if experiment_file is not None:
        base = Path(experiment_file).parent
        if (base / "plugins").is_dir():
            named.append((base / "plugins", f"{experiment_file}"))
        for rel in experiment_dirs or []:
            named.append((base / Path(rel).expanduser(), f"{experiment_file}: plugins"))
    named.extend((Path(d).expanduser(), "--plugins") for d in cli_dirs or [])
    for directory, where in named:
        load_plugin_dir(directory, where, warn=not strict)
    for directory in env_plugin_dirs():
        load_plugin_dir(directory, "JIGSAWKIT_PLUGINS", warn=not strict)
    if strict and len(failures) > before:
        raise PluginLoadError("\n".join(failures[before:]))
    load_entry_points()
    return list(dict.fromkeys(d.resolve() for d, _ in named))

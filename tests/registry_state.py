"""Save and restore the process-global registries and plugin-loader state around a block."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator


@contextlib.contextmanager
def registries_restored() -> Iterator[dict]:
    """Undo every registration and plugin load made inside the block; yields REGISTRIES."""
    from jigsawkit import plugins
    from jigsawkit.registry import REGISTRIES, load_builtins

    load_builtins()
    saved_entries = {kind: dict(reg._entries) for kind, reg in REGISTRIES.items()}
    saved_plugins = (
        list(plugins._searched_dirs),
        set(plugins._loaded_files),
        list(plugins.failures),
        plugins._entry_points_loaded,
    )
    try:
        yield REGISTRIES
    finally:
        for kind, reg in REGISTRIES.items():
            reg._entries = copy.copy(saved_entries[kind])
        plugins._searched_dirs[:] = saved_plugins[0]
        plugins._loaded_files.clear()
        plugins._loaded_files.update(saved_plugins[1])
        plugins.failures[:] = saved_plugins[2]
        plugins._entry_points_loaded = saved_plugins[3]

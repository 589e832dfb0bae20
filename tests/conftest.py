"""Shared test fixtures: every test runs offline, quietly, with caches in a temporary folder."""

from __future__ import annotations

import copy

import pytest


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Caches in a fresh temp folder, no progress bars, W&B never online and never prompting."""
    monkeypatch.setenv("JIGSAWKIT_CACHE", str(tmp_path_factory.mktemp("jigsawkit-cache")))
    monkeypatch.setenv("JIGSAWKIT_NO_PROGRESS", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # A plugin folder named in the developer's shell must not leak into the tests.
    monkeypatch.delenv("JIGSAWKIT_PLUGINS", raising=False)


@pytest.fixture
def clean_registries():
    """Undo every registration and plugin load a test makes (registries are process-global)."""
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
    yield REGISTRIES
    for kind, reg in REGISTRIES.items():
        reg._entries = copy.copy(saved_entries[kind])
    plugins._searched_dirs[:] = saved_plugins[0]
    plugins._loaded_files.clear()
    plugins._loaded_files.update(saved_plugins[1])
    plugins.failures[:] = saved_plugins[2]
    plugins._entry_points_loaded = saved_plugins[3]


@pytest.fixture
def one_torch_thread():
    """One torch thread for tests on tiny tensors: a second one only adds synchronisation,
    badly so on a busy CPU. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

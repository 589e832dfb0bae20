"""Shared test fixtures: every test runs offline, quietly, with caches in a temporary folder."""

from __future__ import annotations

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
    from registry_state import registries_restored

    with registries_restored() as registries:
        yield registries


@pytest.fixture
def one_torch_thread():
    """One torch thread for tests on tiny tensors: a second one only adds synchronisation,
    badly so on a busy CPU. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Shared test fixtures: every test runs offline, quietly, with caches in a temporary folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _isolated_environment(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch, request
) -> Iterator[None]:
    """Caches in a fresh temp folder, no progress bars (unless the test is marked
    ``progress_bars``), W&B never online and never prompting."""
    from jigsawkit.progress import progress_bars

    monkeypatch.setenv("JIGSAWKIT_CACHE", str(tmp_path_factory.mktemp("jigsawkit-cache")))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # A plugin folder named in the developer's shell must not leak into the tests.
    monkeypatch.delenv("JIGSAWKIT_PLUGINS", raising=False)
    with progress_bars(request.node.get_closest_marker("progress_bars") is not None):
        yield


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

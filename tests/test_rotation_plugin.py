"""The rotation plugin (plugins/rotation.py registering, plugins/_rotation_task.py the class):
registered from outside the core through a lazy target, and it works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
SMALL_CFN = {"channels": [8, 16], "kernel_sizes": [3, 3], "tile_fc": 16, "input_size": 16}


@pytest.fixture
def rotation_task(clean_registries):
    from jigsawkit.plugins import load_plugin_dir
    from jigsawkit.registry import registry

    load_plugin_dir(PLUGINS)
    torch.manual_seed(0)
    backbone = registry("backbone").build("cfn", **SMALL_CFN)
    return registry("pretext").build("rotation", backbone=backbone, image_size=16)


def test_registers_without_importing_torch() -> None:
    """Registering names the class; building imports it (and torch), once, at module level."""
    code = (
        "import sys\n"
        "from jigsawkit.plugins import load_plugin_dir\n"
        f"load_plugin_dir({str(PLUGINS)!r})\n"
        "from jigsawkit.registry import registry\n"
        "entry = registry('pretext').get('rotation')\n"
        "print('torch' in sys.modules, entry.params_schema['properties']['image_size']['default'])\n"
        "cls = entry.load()\n"
        "print('torch' in sys.modules, cls.__name__, cls is entry.load())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "64", "True", "RotationTask", "True"]


def test_the_task_class_restates_no_default(rotation_task) -> None:
    import inspect

    from jigsawkit.registry import registry

    entry = registry("pretext").get("rotation")
    parameters = inspect.signature(type(rotation_task).__init__).parameters
    for key in entry.params_schema["properties"]:
        assert parameters[key].default is inspect.Parameter.empty
    assert rotation_task.head.in_features == 16, "head_hidden's default 0: a linear head"


def test_prepare_rotates_and_normalises_each_image_by_its_target(rotation_task) -> None:
    from jigsawkit.normalization import normalize_images

    assert rotation_task.num_classes == 4 and rotation_task.chance == 0.25
    assert rotation_task.image_size == 16
    images = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    inputs, targets = rotation_task.prepare(images, torch.Generator().manual_seed(1), train=True)
    assert inputs.shape == images.shape and targets.shape == (12,)
    assert set(targets.tolist()) <= {0, 1, 2, 3} and len(set(targets.tolist())) > 1
    for image, rotated, k in zip(images, inputs, targets.tolist()):
        expected = normalize_images(torch.rot90(image, k, dims=(-2, -1))[None], "per_image")[0]
        assert torch.allclose(rotated, expected, atol=1e-6)


def test_declares_what_it_feeds(rotation_task) -> None:
    """The probe's default then feeds what the backbone was pretrained on (issue 12)."""
    assert rotation_task.input_normalization == "per_image"
    inputs, _ = rotation_task.prepare(torch.rand(4, 3, 16, 16), torch.Generator(), train=True)
    assert inputs.mean(dim=(-2, -1)).abs().max() < 1e-5
    assert torch.allclose(inputs.std(dim=(-2, -1), unbiased=False), torch.ones(4, 3), atol=1e-3)


def test_prepare_resizes_to_image_size(rotation_task) -> None:
    inputs, _ = rotation_task.prepare(torch.rand(2, 3, 40, 40), torch.Generator(), train=False)
    assert inputs.shape == (2, 3, 16, 16)


def test_forward_loss_and_a_training_step(rotation_task) -> None:
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    inputs, targets = rotation_task.prepare(images, torch.Generator().manual_seed(3), train=True)
    logits = rotation_task(inputs)
    assert logits.shape == (8, 4)
    loss = rotation_task.loss(logits, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert rotation_task.head.weight.grad is not None


def test_is_a_pretext_task_subclass(rotation_task) -> None:
    from jigsawkit.pretext.base import PretextTask

    assert isinstance(rotation_task, PretextTask)
    assert rotation_task.backbone.out_dim == 16

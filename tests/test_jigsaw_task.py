"""The jigsaw pretext task: shapes, one backbone call per batch, cross-field checks, learning."""

from __future__ import annotations

import pytest
import torch

from jigsawkit.registry import registry

SMALL_CFN = {"channels": [8, 16, 32], "kernel_sizes": [3, 3, 3], "tile_fc": 32, "input_size": 12}
SMALL_JIGSAW = {
    "grid": 3,
    "crop": 48,
    "tile": 12,
    "permutations": {"count": 8, "selection": "maximal", "seed": 0},
    "head_hidden": 64,
}


def make_task(**overrides):
    torch.manual_seed(0)
    backbone = registry("backbone").build("cfn", **SMALL_CFN)
    return registry("pretext").build("jigsaw", backbone=backbone, **{**SMALL_JIGSAW, **overrides})


def test_contract_attributes() -> None:
    task = make_task()
    assert task.num_classes == 8 and task.chance == pytest.approx(1 / 8)
    assert task.image_size == 48  # image_size null -> the crop
    assert make_task(image_size=64).image_size == 64
    assert task.permutations.shape == (8, 9)
    assert "permutations" in task.state_dict()
    assert task.backbone.out_dim == 32


def test_forward_shape_and_one_backbone_call_per_batch() -> None:
    task = make_task()
    calls = []
    task.backbone.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    images = torch.rand(5, 3, 56, 56)
    inputs, targets = task.prepare(images, torch.Generator().manual_seed(0), train=True)
    assert inputs.shape == (5, 9, 3, 12, 12) and targets.shape == (5,)
    logits = task(inputs)
    assert logits.shape == (5, 8)
    assert calls == [torch.Size([45, 3, 12, 12])], "tiles must be folded into one batch"
    loss = task.loss(logits, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_eval_puzzles_are_reproducible_from_the_generator() -> None:
    task = make_task()
    images = torch.rand(4, 3, 48, 48)
    first = task.prepare(images, torch.Generator().manual_seed(3), train=False)
    again = task.prepare(images, torch.Generator().manual_seed(3), train=False)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_loss_decreases_when_overfitting_a_tiny_batch() -> None:
    task = make_task()
    images = torch.rand(16, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    inputs, targets = task.prepare(images, torch.Generator().manual_seed(2), train=True)
    optimizer = torch.optim.Adam(task.parameters(), lr=3e-3)
    task.train()
    losses = []
    for _ in range(25):
        loss = task.loss(task(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_dropout_is_optional() -> None:
    assert not any(isinstance(m, torch.nn.Dropout) for m in make_task().head)
    assert any(isinstance(m, torch.nn.Dropout) for m in make_task(dropout=0.5).head)


def check(**params):
    entry = registry("pretext").get("jigsaw")
    defaults = {k: v["default"] for k, v in entry.params_schema["properties"].items()}
    return entry.check({**defaults, **params})


def test_cross_field_checks() -> None:
    assert check() == []
    problems = check(grid=2, permutations={"count": 100, "selection": "maximal", "seed": 0})
    assert problems == [
        ("permutations.count", "a 2x2 jigsaw has 24 permutations; permutations.count is 100")
    ]
    assert check(crop=96, tile=40)[0][0] == "tile"
    assert check(crop=96, tile=24, image_size=90)[0][0] == "image_size"
    assert check(crop=96, tile=24, image_size=128) == []


def test_schema_defaults_match_the_task() -> None:
    props = registry("pretext").get("jigsaw").params_schema["properties"]
    assert props["grid"]["default"] == 3 and props["crop"]["default"] == 255
    assert props["tile"]["default"] == 64 and props["permutations"]["default"]["count"] == 100
    assert registry("pretext").get("jigsaw").params_schema["additionalProperties"] is False

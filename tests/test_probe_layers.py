"""Per-layer probe layers: the pooling rule, declared widths equal actual widths at every
probe size, one forward pass for all layers, ``layers: all`` and unknown names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jigsawkit.backbones.probe_pool import probe_pool, probe_side, probe_width
from jigsawkit.errors import UserError
from jigsawkit.evaluators.features import check_layers
from jigsawkit.registry import registry

SMALL_CFN = {"channels": [8, 16, 24], "kernel_sizes": [3, 3, 3], "tile_fc": 32, "input_size": 24}


def test_pooling_rule_is_exact() -> None:
    # s = max(1, floor(sqrt(9216 / C) + 0.5)); width C * s * s.
    expected = {1: 96, 3: 55, 8: 34, 32: 17, 64: 12, 96: 10, 128: 8, 256: 6, 384: 5, 512: 4}
    assert {c: probe_side(c) for c in expected} == expected
    assert probe_side(10**6) == 1
    assert probe_width(384) == 9600 and probe_width(256) == 9216
    for channels in (3, 32, 96, 256, 384, 2048):
        assert 0.8 * 9216 <= probe_width(channels) <= 1.2 * 9216 or channels > 9216


@pytest.mark.parametrize("side", [1, 3, 6, 40])
def test_pool_width_does_not_depend_on_the_map_size(side: int) -> None:
    x = torch.rand(2, 96, side, side)
    assert probe_pool(x).shape == (2, probe_width(96))
    if side == 1:  # smaller than s x s: values repeat, the width stays
        assert torch.equal(probe_pool(x), x.repeat_interleave(100, dim=-1).flatten(1))


def count_calls(modules: list[nn.Module]) -> list[int]:
    calls = [0] * len(modules)
    for index, module in enumerate(modules):

        def hook(*_, index=index) -> None:
            calls[index] += 1

        module.register_forward_hook(hook)
    return calls


@pytest.mark.parametrize("size", [8, 24, 33, 96])
def test_cfn_declared_widths_at_every_probe_size(size: int) -> None:
    model = registry("backbone").build("cfn", **SMALL_CFN).eval()
    assert list(model.feature_layers) == ["conv1", "conv2", "conv3", "conv", "fc"]
    assert model.feature_layers["conv1"] == probe_width(8)
    calls = count_calls(list(model.stages) + [model.fc])
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        features = model.probe_features(x, list(model.feature_layers))
        assert calls == [1, 1, 1, 1], "layers did not come from one forward pass"
        assert {k: v.shape[1] for k, v in features.items()} == model.feature_layers
        assert torch.equal(features["fc"], model(x))


def test_cfn_stage_layer_is_the_pooled_stage_output() -> None:
    model = registry("backbone").build("cfn", **SMALL_CFN).eval()
    x = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        h = model.pool(model.stages[0](x))  # 24 -> 12 px
        expected = nn.functional.adaptive_avg_pool2d(h, probe_side(8)).flatten(1)
        assert torch.allclose(model.probe_features(x, ["conv1"])["conv1"], expected)


@pytest.mark.parametrize("size", [32, 64])
def test_timm_stages_from_one_pass_with_declared_widths(size: int) -> None:
    model = registry("backbone").build("timm", model="resnet18", input_size=32).eval()
    assert list(model.feature_layers) == ["act1", "layer1", "layer2", "layer3", "layer4", "pooled"]
    calls = count_calls([model.model.conv1, model.model.layer4])
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        features = model.probe_features(x, list(model.feature_layers))
        assert calls == [1, 1], "layers did not come from one forward pass"
        assert {k: v.shape[1] for k, v in features.items()} == model.feature_layers
        assert torch.allclose(features["pooled"], model(x), atol=1e-5)
    with pytest.raises(UserError, match="has no feature layer 'conv5'; layers are act1"):
        model.probe_features(x, ["conv5"])


def test_layers_all_resolves_to_every_declared_layer_in_order() -> None:
    model = registry("backbone").build("cfn", **SMALL_CFN)
    where = "evaluate.linear_probe.layers"
    assert check_layers(model, "all", where) == ["conv1", "conv2", "conv3", "conv", "fc"]
    assert check_layers(model, None, where) == ["conv"]
    assert check_layers(model, ["fc", "conv2", "fc"], where) == ["fc", "conv2"]
    with pytest.raises(UserError, match=f"{where}: the backbone has no feature layer 'conv9'"):
        check_layers(model, ["conv9"], where)


@pytest.mark.parametrize(
    "value,ok",
    [("all", True), (["conv1", "fc"], True), (None, True), ("conv1", False), ([], False)],
)
def test_schema_accepts_all_or_a_list(value, ok: bool) -> None:
    import jsonschema

    from jigsawkit.evaluators import _COMMON

    valid = jsonschema.Draft202012Validator({"properties": {"layers": _COMMON["layers"]}}).is_valid(
        {"layers": value}
    )
    assert valid == ok

"""The paper-faithful CFN (``cfn_alexnet``): Noroozi & Favaro's widths and shapes per tile,
probe layers with their declared widths, and experiments/cfn_paper.yaml wired to it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from jigsawkit.backbones.cfn_alexnet import MIN_INPUT
from jigsawkit.errors import UserError
from jigsawkit.registry import registry

ROOT = Path(__file__).resolve().parents[1]


def conv_specs(model: nn.Module) -> list[tuple]:
    return [
        (m.out_channels, m.kernel_size[0], m.stride[0])
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]


def test_paper_widths_and_tile_shapes() -> None:
    model = registry("backbone").build("cfn_alexnet").eval()
    assert conv_specs(model) == [(96, 11, 2), (256, 5, 1), (384, 3, 1), (384, 3, 1), (256, 3, 1)]
    assert model.map_side == 2  # a 64 px tile ends as a 256 x 2 x 2 map
    fc6 = model.fc6[0]
    assert (fc6.in_features, fc6.out_features) == (256 * 2 * 2, 1024)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.5]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 5
    assert model.out_dim == 1024 and model.input_size == 64
    x = torch.rand(2, 3, 64, 64)
    shapes = []
    h = x
    with torch.no_grad():
        for stage in model.stages:
            h = stage(h)
            shapes.append(tuple(h.shape[1:]))
        assert model(x).shape == (2, 1024)
    assert shapes == [(96, 13, 13), (256, 6, 6), (384, 6, 6), (384, 6, 6), (256, 2, 2)]


@pytest.mark.parametrize("size", [MIN_INPUT, 64, 97])
def test_probe_layers_have_their_declared_widths(size: int) -> None:
    model = registry("backbone").build("cfn_alexnet").eval()
    assert list(model.feature_layers) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6"]
    assert model.feature_layers == {
        "conv1": 9600,
        "conv2": 9216,
        "conv3": 9600,
        "conv4": 9600,
        "conv5": 9216,
        "fc6": 1024,
    }
    assert model.default_probe_layer in model.feature_layers
    calls = [0]
    model.stages[0].register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    with torch.no_grad():
        features = model.probe_features(torch.rand(2, 3, size, size), list(model.feature_layers))
    assert calls == [1], "layers did not come from one forward pass"
    assert {k: v.shape[1] for k, v in features.items()} == model.feature_layers


def test_lrn_variant_and_input_limits() -> None:
    model = registry("backbone").build("cfn_alexnet", batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in model.modules()) == 2
    with pytest.raises(UserError, match=f"at least {MIN_INPUT} px"):
        model.eval()(torch.rand(1, 3, MIN_INPUT - 1, MIN_INPUT - 1))
    with pytest.raises(UserError, match="no feature layer 'conv6'"):
        model.probe_features(torch.rand(1, 3, 64, 64), ["conv6"])


def test_paper_experiment_validates_and_builds_the_paper_head(clean_registries) -> None:
    from jigsawkit.cli import main
    from jigsawkit.config.experiment import load_experiment

    path = ROOT / "experiments" / "cfn_paper.yaml"
    assert main(["validate", str(path), "--quiet"]) == 0
    config = load_experiment(path, ["pretext.permutations.count=10"])
    assert config["evaluate"][0]["layers"] == "all"
    backbone = registry("backbone").build(
        "cfn_alexnet", **{k: v for k, v in config["backbone"].items() if k != "name"}
    )
    params = {k: v for k, v in config["pretext"].items() if k != "name"}
    task = registry("pretext").build("jigsaw", backbone=backbone, **params).eval()
    linears = [m for m in task.head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(9 * 1024, 4096), (4096, 10)]
    assert [m.p for m in task.head.modules() if isinstance(m, nn.Dropout)] == [0.5]
    images = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        inputs, targets = task.prepare(images, torch.Generator().manual_seed(0), train=True)
        assert inputs.shape == (2, 9, 3, 64, 64)
        assert task(inputs).shape == (2, 10)

"""The random-init twin (the probe's fair baseline) never loads weights: ``pretrained`` is
forced off wherever it is built (``random_init_factory``, used by the runner and by probes of
an exported checkpoint)."""

from __future__ import annotations

import pytest
import torch
from fakes import TinyBackbone

from jigsawkit.evaluators.base import EvalContext, probed_backbone, random_init_factory
from jigsawkit.training.export import export_feature_extractor

SPY = "pretrained_spy"
EXPERIMENT = f"""\
name: twin
seed: 3
trackers: []
backbone: {{name: {SPY}, pretrained: true}}
pretext: {{name: jigsaw, grid: 2, crop: 24, tile: 10, permutations: {{count: 4}}}}
pretrain: {{data: {{name: synthetic}}, epochs: 1}}
evaluate: [twin_builder]
"""


class TwinBuilder:
    """An evaluator that only builds the run's random-init twin."""

    def evaluate(self, ctx: EvalContext) -> dict:
        ctx.make_random_backbone()
        return {"built": 1}


@pytest.fixture
def calls(clean_registries) -> list:
    """Registers a backbone that records the ``pretrained`` it was built with."""
    from jigsawkit.registry import register_backbone, register_evaluator

    seen: list = []
    schema = {
        "properties": {
            "pretrained": {"type": "boolean", "default": False},
            "width": {"type": "integer", "default": 4},
        }
    }

    @register_backbone(SPY, schema=schema)
    def spy(pretrained: bool = False, width: int = 4):
        """Records its pretrained argument."""
        seen.append(pretrained)
        return TinyBackbone(width)

    @register_evaluator("twin_builder", schema={"properties": {}})
    def twin_builder():
        """Builds the random-init twin."""
        return TwinBuilder()

    return seen


def test_factory_forces_pretrained_off_and_is_seeded(calls) -> None:
    make = random_init_factory({"name": SPY, "params": {"pretrained": True}}, 5, "cpu")
    state = torch.random.get_rng_state()
    first, second = make(), make()
    assert calls == [False, False]
    assert torch.equal(torch.random.get_rng_state(), state), "global RNG not restored"
    assert torch.equal(first.conv.weight, second.conv.weight)
    # Forced off even when the spec leaves it to the schema's default.
    random_init_factory({"name": SPY, "params": {}}, 5, "cpu")()
    assert calls[-1] is False


def test_runner_twin_is_never_pretrained(calls, tmp_path) -> None:
    from jigsawkit.config.experiment import load_experiment
    from jigsawkit.runner import run_experiment

    path = tmp_path / "twin.yaml"
    path.write_text(EXPERIMENT)
    config = load_experiment(path)
    assert config["backbone"]["pretrained"] is True
    result = run_experiment(
        config, out=tmp_path / "run", progress=False, backbone_override=TinyBackbone(4)
    )
    assert result.summary["probe.twin_builder.built"] == 1
    assert calls == [False]


def test_exported_checkpoint_twin_is_never_pretrained(calls, tmp_path) -> None:
    path = tmp_path / "extractor.pt"
    metadata = {"backbone": {"name": SPY, "params": {"pretrained": True, "width": 4}}}
    export_feature_extractor(TinyBackbone(4), path, metadata)
    ctx = EvalContext(
        backbone=None,
        make_random_backbone=lambda: pytest.fail("the run's twin used for a checkpoint"),
        checkpoint_id="x",
        device="cpu",
        seed=0,
        cache_dir=tmp_path,
        run_dir=tmp_path,
    )
    _, _, make_random = probed_backbone(ctx, str(path))
    assert calls == [False], "the extractor was rebuilt with pretrained weights"
    make_random()
    assert calls == [False, False]


def test_timm_twin_and_reload_take_no_weights_path(monkeypatch, tmp_path) -> None:
    """A timm backbone with ``pretrained: true``: neither its twin nor reloading its export
    touches the hub or a weights loader (the export's weights come from the file)."""
    import timm.models._builder as builder

    import jigsawkit
    from jigsawkit.backbones import timm_backbone

    def forbidden(*args, **kwargs):
        raise AssertionError("the random-init twin took a weights path")

    monkeypatch.setattr(builder, "load_pretrained", forbidden)
    monkeypatch.setattr(timm_backbone, "_hub_offline", forbidden)
    monkeypatch.setattr(timm_backbone, "_hub_reachable", forbidden)
    spec = {"name": "timm", "params": {"model": "resnet18", "pretrained": True, "input_size": 32}}
    twin = random_init_factory(spec, 0, "cpu")().eval()
    with torch.no_grad():
        assert twin(torch.rand(2, 3, 32, 32)).shape == (2, 512)
    path = tmp_path / "timm.pt"
    export_feature_extractor(twin, path, {"backbone": spec})
    loaded = jigsawkit.load_feature_extractor(path)
    assert torch.equal(loaded.model.conv1.weight, twin.model.conv1.weight)

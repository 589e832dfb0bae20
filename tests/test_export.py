"""Exported feature extractors: round trip, frozen and in eval mode, tampered files refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import jigsawkit
from jigsawkit.errors import CheckpointError
from jigsawkit.training.checkpoint import save_checkpoint
from jigsawkit.training.export import EXPORT_FORMAT, export_feature_extractor

NAME = "tiny_export_test"


class TinyBackbone(nn.Module):
    """Conv + BatchNorm + pooling, with the backbone contract's attributes."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out_dim = width
        self.input_size = 12
        self.feature_layers = {"pooled": width}
        self.default_probe_layer = "pooled"

    def probe_features(self, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        return {name: self.body(x) for name in layers}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Custom:
    """Something a weights-only load must never build."""


@pytest.fixture
def registered(clean_registries):
    from jigsawkit.registry import register_backbone

    @register_backbone(NAME, schema={"properties": {"width": {"type": "integer", "default": 8}}})
    def tiny(width: int = 8):
        """A tiny backbone for export tests."""
        return TinyBackbone(width)

    yield
    clean_registries["backbone"].unregister(NAME)


def trained_backbone(width: int = 8) -> TinyBackbone:
    torch.manual_seed(0)
    model = TinyBackbone(width)
    model.train()
    model(torch.rand(4, 3, 12, 12))  # moves the BatchNorm running statistics off their init
    return model


def export(tmp_path, model=None, **extra) -> tuple:
    model = model or trained_backbone()
    path = tmp_path / "feature_extractor.pt"
    metadata = {
        "backbone": {"name": NAME, "params": {"width": 8}},
        "pretext": {"name": "jigsaw", "grid": 3, "tile": (24, 8)},
        "data": {"name": "synthetic", "splits": [0.7, 0.15, 0.15]},
        "metrics": {"test_top1": 0.5},
        **extra,
    }
    export_feature_extractor(model, path, metadata)
    return model, path


def test_round_trip_gives_identical_outputs_frozen_and_in_eval_mode(tmp_path, registered):
    model, path = export(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["feature_extractor.pt"]
    loaded = jigsawkit.load_feature_extractor(path)
    assert isinstance(loaded, TinyBackbone)
    assert not loaded.training and not any(m.training for m in loaded.modules())
    assert not any(p.requires_grad for p in loaded.parameters())
    images = torch.rand(5, 3, 12, 12)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    meta = loaded.metadata
    assert meta["format"] == EXPORT_FORMAT
    assert meta["backbone"] == {"name": NAME, "params": {"width": 8}}
    assert (meta["input_size"], meta["out_dim"]) == (12, 8)
    assert meta["pretext"]["tile"] == [24, 8]  # JSON-like: tuples become lists
    assert meta["metrics"] == {"test_top1": 0.5}
    assert "state_dict" not in meta


def test_file_loads_weights_only_and_holds_cpu_tensors(tmp_path, registered):
    _, path = export(tmp_path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == EXPORT_FORMAT
    assert all(t.device.type == "cpu" for t in raw["state_dict"].values())
    assert "body.1.running_mean" in raw["state_dict"]


def test_metadata_must_be_json_like(tmp_path):
    with pytest.raises(TypeError, match=r"metadata\.data\.thing is a Custom"):
        export(tmp_path, data={"thing": Custom()})
    with pytest.raises(TypeError, match="backbone"):
        export_feature_extractor(trained_backbone(), tmp_path / "x.pt", {"data": {}})
    assert not any(tmp_path.iterdir())


def test_a_tampered_file_with_a_pickled_class_is_refused(tmp_path, registered):
    _, path = export(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["metrics"] = Custom()
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as caught:
        jigsawkit.load_feature_extractor(path)
    message = str(caught.value)
    assert "refused" in message and "Custom" in message and "\n" not in message


def rewrite(path, change) -> None:
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


def test_mismatched_weights_are_one_clear_line(tmp_path, registered):
    _, path = export(tmp_path)
    rewrite(path, lambda p: p["backbone"]["params"].update(width=4))
    with pytest.raises(CheckpointError, match=r"do not fit backbone .*shape .*body\.0\.weight"):
        jigsawkit.load_feature_extractor(path)

    _, path = export(tmp_path)
    rewrite(path, lambda p: p["state_dict"].pop("body.1.running_var"))
    with pytest.raises(CheckpointError, match=r"missing body\.1\.running_var"):
        jigsawkit.load_feature_extractor(path)


def test_unknown_backbone_or_bad_params(tmp_path, registered):
    _, path = export(tmp_path)
    rewrite(path, lambda p: p["backbone"].update(name="not_registered_anywhere"))
    with pytest.raises(CheckpointError, match="cannot rebuild its backbone: unknown backbone"):
        jigsawkit.load_feature_extractor(path)
    _, path = export(tmp_path)
    rewrite(path, lambda p: p["backbone"]["params"].update(depth=3))
    # checked against the backbone's schema, as every build is: the key is named
    wrong = "cannot rebuild its backbone: backbone 'tiny_export_test': depth: unknown key"
    with pytest.raises(CheckpointError, match=wrong):
        jigsawkit.load_feature_extractor(path)


def test_files_that_are_not_feature_extractors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        jigsawkit.load_feature_extractor(tmp_path / "missing.pt")
    weights = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(1)}, weights)
    with pytest.raises(CheckpointError, match="not a jigsawkit feature extractor"):
        jigsawkit.load_feature_extractor(weights)
    ckpt = tmp_path / "last.pt"
    save_checkpoint(ckpt, {"epoch": 1})
    with pytest.raises(CheckpointError, match="training checkpoint"):
        jigsawkit.load_feature_extractor(ckpt)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01not torch")
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        jigsawkit.load_feature_extractor(garbage)
    damaged = tmp_path / "damaged.pt"
    torch.save({"format": EXPORT_FORMAT, "backbone": "cfn"}, damaged)
    with pytest.raises(CheckpointError, match="damaged feature extractor"):
        jigsawkit.load_feature_extractor(damaged)

"""Backbones: the CFN trunk and the timm adapter (shapes, feature layers, clear errors)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from jigsawkit.errors import UserError
from jigsawkit.registry import registry

SMALL_CFN = {"channels": [8, 16, 24], "kernel_sizes": [3, 3, 3], "tile_fc": 32, "input_size": 24}


def test_registration_modules_do_not_import_torch_or_timm() -> None:
    code = (
        "import sys, jigsawkit.backbones, jigsawkit.pretext; "
        "print(sorted(m for m in ('torch', 'timm', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cfn_defaults_shapes_and_layers() -> None:
    model = registry("backbone").build("cfn")
    assert model.out_dim == 1024 and model.input_size == 64
    assert model.feature_layers == {
        "conv1": 9600,
        "conv2": 9216,
        "conv3": 9600,
        "conv": 384,
        "fc": 1024,
    }
    assert model.default_probe_layer == "conv"
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 1024)


@pytest.mark.parametrize("size", [8, 24, 33, 96])
def test_cfn_accepts_any_input_size(size: int) -> None:
    model = registry("backbone").build("cfn", **SMALL_CFN).eval()
    with torch.no_grad():
        features = model.probe_features(torch.rand(3, 3, size, size), ["conv", "fc"])
        out = model(torch.rand(3, 3, size, size))
    assert out.shape == (3, 32)
    assert features["conv"].shape == (3, 24) and features["fc"].shape == (3, 32)


def test_cfn_probe_features_match_forward() -> None:
    model = registry("backbone").build("cfn", **SMALL_CFN).eval()
    x = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        feats = model.probe_features(x, ["fc"])
        assert list(feats) == ["fc"]
        assert torch.allclose(feats["fc"], model(x))
    with pytest.raises(UserError, match="no feature layer 'pool5'"):
        model.probe_features(x, ["pool5"])


def test_cfn_without_batch_norm_and_kernel_check() -> None:
    model = registry("backbone").build("cfn", **{**SMALL_CFN, "batch_norm": False})
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    entry = registry("backbone").get("cfn")
    problems = entry.check({**SMALL_CFN, "kernel_sizes": [3, 3]})
    assert problems and problems[0][0] == "kernel_sizes" and "channels has 3" in problems[0][1]
    assert entry.check(SMALL_CFN) == []
    with pytest.raises(UserError, match="kernel_sizes"):
        registry("backbone").build("cfn", channels=[8, 8], kernel_sizes=[3])


def test_timm_resnet18_small_forward() -> None:
    model = registry("backbone").build("timm", model="resnet18", input_size=32).eval()
    assert model.out_dim == 512 and list(model.feature_layers)[-1] == "pooled"
    assert model.feature_layers["pooled"] == 512
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        assert model(x).shape == (2, 512)
        assert model.probe_features(x, ["pooled"])["pooled"].shape == (2, 512)


def test_timm_fixed_size_model_is_built_for_input_size() -> None:
    model = registry("backbone").build("timm", model="vit_tiny_patch16_224", input_size=32)
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 32, 32)).shape == (1, model.out_dim)


def test_timm_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UserError, match="unknown timm model 'resnet181'.*'resnet18'"):
        registry("backbone").build("timm", model="resnet181")


def test_timm_bad_model_kwargs_are_a_user_error() -> None:
    with pytest.raises(UserError, match="model_kwargs"):
        registry("backbone").build("timm", model="resnet18", model_kwargs={"no_such_arg": 1})


def test_timm_pretrained_offline_fails_fast(monkeypatch, tmp_path) -> None:
    from huggingface_hub import constants

    from jigsawkit.backbones import timm_backbone

    # An empty weights cache and an unreachable hub, whatever the machine has.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(timm_backbone, "_hub_reachable", lambda: False)
    offline_before = constants.HF_HUB_OFFLINE
    started = time.perf_counter()
    with pytest.raises(UserError, match="could not be downloaded.*pretrained_cfg_overlay"):
        registry("backbone").build("timm", model="resnet18", pretrained=True)
    assert time.perf_counter() - started < 10
    assert constants.HF_HUB_OFFLINE == offline_before, "offline switch not restored"


def test_timm_pretrained_from_a_local_file(tmp_path) -> None:
    import timm

    source = timm.create_model("resnet18", num_classes=0)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = registry("backbone").build(
        "timm",
        model="resnet18",
        pretrained=True,
        model_kwargs={"pretrained_cfg_overlay": {"file": str(path)}},
    )
    assert torch.equal(model.model.conv1.weight, source.conv1.weight)


def test_list_timm_models() -> None:
    from jigsawkit.backbones.timm_backbone import list_timm_models

    assert "resnet18" in list_timm_models("resnet1*")
    assert "resnet18" in list_timm_models("resnet1")
    assert list_timm_models("no_such_model_family*") == []

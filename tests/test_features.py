"""Frozen features: extraction leaves the backbone untouched, the on-disk cache, resizing,
BatchNorm recalibration of the random-init baseline, batch augmentation.

The fake backbone and dataset are in fakes.py, shared with test_linear_probe.py and
test_knn.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from fakes import TinyBackbone, assert_identical, make_backbone, quadrant_split, snapshot

from jigsawkit.errors import UserError
from jigsawkit.evaluators.features import (
    augment_batch,
    cached_features,
    check_layers,
    extract_features,
    random_init_source,
    recalibrate_batchnorm,
    state_dict_hash,
)

# Tiny tensors: a second thread only adds synchronisation (fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_state_dict_hash_tracks_every_tensor():
    a = make_backbone()
    b = copy.deepcopy(a)
    assert state_dict_hash(a) == state_dict_hash(b)
    b.bn.running_mean[0] += 1.0  # a buffer, not a parameter
    assert state_dict_hash(a) != state_dict_hash(b)
    assert state_dict_hash(a) != state_dict_hash(make_backbone(seed=1))


def test_extraction_leaves_backbone_bit_identical_and_restores_modes():
    backbone = make_backbone().train()  # as a training loop would leave it
    backbone.drop.eval()  # mixed modes must come back exactly
    before = snapshot(backbone)
    split = quadrant_split(40, seed=0)
    first = extract_features(backbone, split, ["conv", "fc"], 16, "cpu", batch_size=16)
    second = extract_features(backbone, split, ["conv", "fc"], 16, "cpu", batch_size=7)
    assert_identical(before, backbone)
    assert backbone.training and backbone.bn.training and not backbone.drop.training
    assert first["conv"].shape == (40, 32) and first["fc"].shape == (40, 6)
    # Dropout is off and BatchNorm uses running stats: batching does not change features.
    assert torch.allclose(first["conv"], second["conv"], atol=1e-6)


def test_feature_cache_hit_skips_the_backbone(tmp_path):
    backbone = make_backbone()
    split = quadrant_split(30, seed=0)
    kwargs = dict(checkpoint_id="ckpt", cache_dir=tmp_path, batch_size=8, progress=False)
    first = cached_features(backbone, split, ["conv"], 16, "cpu", **kwargs)
    calls = backbone.calls
    assert calls == 4
    assert len(list((tmp_path / "features").glob("*.pt"))) == 1
    second = cached_features(backbone, split, ["conv"], 16, "cpu", **kwargs)
    assert backbone.calls == calls
    assert torch.equal(first["conv"], second["conv"])
    # Anything that changes the features changes the key.
    cached_features(backbone, split, ["conv"], 12, "cpu", **kwargs)
    assert backbone.calls == calls + 4
    cached_features(backbone, split, ["conv"], 16, "cpu", **{**kwargs, "checkpoint_id": "other"})
    assert backbone.calls == calls + 8
    cached_features(backbone, split, ["conv"], 16, "cpu", normalize="imagenet", **kwargs)
    assert backbone.calls == calls + 12


def test_damaged_cache_entry_is_recomputed(tmp_path):
    backbone = make_backbone()
    split = quadrant_split(10, seed=0)
    kwargs = dict(checkpoint_id="ckpt", cache_dir=tmp_path, progress=False)
    first = cached_features(backbone, split, ["conv"], 16, "cpu", **kwargs)
    (path,) = (tmp_path / "features").glob("*.pt")
    path.write_bytes(b"not a torch file")
    again = cached_features(backbone, split, ["conv"], 16, "cpu", **kwargs)
    assert backbone.calls == 2
    assert torch.equal(first["conv"], again["conv"])
    assert torch.load(path, weights_only=True)["features"]["conv"].shape == (10, 32)


def test_split_without_key_is_never_cached(tmp_path):
    backbone = make_backbone()
    split = quadrant_split(10, seed=0, key="")
    for _ in range(2):
        cached_features(backbone, split, ["conv"], 16, "cpu", checkpoint_id="c", cache_dir=tmp_path)
    assert backbone.calls == 2
    assert not (tmp_path / "features").exists()


def test_images_are_resized_to_the_probe_size():
    backbone = make_backbone()
    feats = extract_features(backbone, quadrant_split(6, seed=0, size=20), ["fc"], 12, "cpu")
    assert backbone.sizes == [12] and feats["fc"].shape == (6, 6)


def test_check_layers_defaults_and_refuses_unknown_layers():
    backbone = make_backbone()
    assert check_layers(backbone, None, "evaluate.x.layers") == ["conv"]
    assert check_layers(backbone, ["fc", "conv", "fc"], "w") == ["fc", "conv"]
    with pytest.raises(UserError, match="evaluate.x.layers: .*no feature layer 'pool'.*'conv'"):
        check_layers(backbone, ["pool"], "evaluate.x.layers")


def test_recalibrate_batchnorm_estimates_running_stats():
    backbone = make_backbone()
    params = {k: v.clone() for k, v in backbone.named_parameters()}
    assert torch.equal(backbone.bn.running_mean, torch.zeros(8))
    split = quadrant_split(64, seed=0)
    used = recalibrate_batchnorm(backbone, split, 16, "cpu", batches=2, batch_size=16)
    assert used == 32
    assert not torch.allclose(backbone.bn.running_mean, torch.zeros(8))
    assert not torch.allclose(backbone.bn.running_var, torch.ones(8))
    assert backbone.bn.momentum == 0.1 and not backbone.training and not backbone.drop.training
    for name, value in backbone.named_parameters():
        assert torch.equal(value, params[name]), name
    # The cumulative average is the statistic of the chosen images, whatever the batching.
    again = make_backbone()
    recalibrate_batchnorm(again, split, 16, "cpu", batches=1, batch_size=32)
    assert torch.allclose(again.bn.running_mean, backbone.bn.running_mean, atol=1e-5)


def test_random_init_source_recalibrates_only_on_a_cache_miss(tmp_path):
    made = []

    def make_random() -> TinyBackbone:
        made.append(make_backbone(seed=5))
        return made[-1]

    split = quadrant_split(48, seed=0)
    source = random_init_source(make_random, split, ["conv"], 16, "cpu", tmp_path, seed=0)
    first = source.features(split)["conv"]
    assert made[0].calls > 0 and not torch.allclose(made[0].bn.running_mean, torch.zeros(8))
    second_source = random_init_source(make_random, split, ["conv"], 16, "cpu", tmp_path, 0)
    assert second_source.checkpoint_id == source.checkpoint_id
    assert torch.equal(second_source.features(split)["conv"], first)
    assert made[1].calls == 0  # a cache hit: no recalibration, no extraction
    assert torch.equal(made[1].bn.running_mean, torch.zeros(8))


def test_augment_batch_crops_and_flips_whole_images():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    generator = torch.Generator().manual_seed(0)
    out = augment_batch(x, generator)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x)
    # Full-image "crops": each image comes back as itself or its mirror image.
    same = augment_batch(x, torch.Generator().manual_seed(1), scale=(1.0, 1.0), ratio=(1, 1))
    for original, result in zip(x, same):
        assert torch.allclose(result, original, atol=1e-5) or torch.allclose(
            result, original.flip(-1), atol=1e-5
        )
    repeat = augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, repeat)

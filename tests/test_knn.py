"""Weighted cosine kNN: accuracy on clustered features, temperature-weighted votes, the
evaluator (cache reuse, layer chosen on val)."""

from __future__ import annotations

import pytest
import torch
from fakes import (
    FakeDataset,
    ThreeLayerBackbone,
    assert_identical,
    clusters,
    make_backbone,
    make_context,
    snapshot,
    with_defaults,
)

from jigsawkit.evaluators.features import cached_features
from jigsawkit.evaluators.knn import KNN, knn_predict, knn_top1
from jigsawkit.registry import registry

# Tiny tensors: a second thread only adds synchronisation (fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_knn_on_clustered_features_is_accurate():
    bank, bank_labels = clusters(300, 1, classes=5, spread=1.0)
    queries, labels = clusters(200, 2, classes=5, spread=1.0)
    assert knn_top1(bank, bank_labels, queries, labels, 5, k=20) > 0.9
    # Shuffled bank labels carry no information: accuracy falls to about chance.
    shuffled = bank_labels[torch.randperm(300, generator=torch.Generator().manual_seed(0))]
    assert knn_top1(bank, shuffled, queries, labels, 5, k=20) < 0.5


def test_votes_are_weighted_by_similarity_over_temperature():
    # One bank entry almost identical to the query (class 0), two less similar (class 1).
    bank = torch.tensor([[1.0, 0.05], [1.0, 0.6], [1.0, -0.6]])
    bank_labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    assert knn_predict(bank, bank_labels, query, 2, k=3, temperature=0.01).item() == 0
    assert knn_predict(bank, bank_labels, query, 2, k=3, temperature=100.0).item() == 1
    assert knn_predict(bank, bank_labels, query, 2, k=1, temperature=100.0).item() == 0
    # Cosine similarity: the scale of a feature vector does not matter.
    assert knn_predict(bank * 10, bank_labels, query * 0.1, 2, k=3, temperature=0.01).item() == 0


def test_knn_evaluator_uses_the_feature_cache_and_leaves_the_backbone(tmp_path):
    backbone = make_backbone()
    before = snapshot(backbone)
    made = []
    knn = registry("evaluator").build(
        "knn", data={"name": "synthetic"}, k=5, compare_random_init=True
    )  # the context hands the fake dataset to whatever selection
    results = knn.evaluate(make_context(tmp_path, backbone, FakeDataset(), made))
    assert_identical(before, backbone)
    assert results["test_top1"] > 0.5 and 0.0 <= results["random_init.test_top1"] <= 1.0
    assert results["gain_top1"] == pytest.approx(
        results["test_top1"] - results["random_init.test_top1"]
    )
    assert results["best_layer"] == "conv" and results["num_classes"] == 4
    calls = backbone.calls
    again = knn.evaluate(make_context(tmp_path, backbone, FakeDataset(), made))
    assert backbone.calls == calls and made[-1].calls == 0
    assert again == results


def test_knn_chooses_the_layer_on_val(tmp_path):
    backbone = make_backbone()
    dataset = FakeDataset()
    ctx = make_context(tmp_path, backbone, dataset)
    results = with_defaults(KNN, data={"name": "fake"}, layers=["conv", "fc"], k=5).evaluate(ctx)
    splits = {name: dataset.load(name, 16, None) for name in ("train", "val", "test")}
    feats = {
        name: cached_features(
            backbone,
            split,
            ["conv", "fc"],
            16,
            "cpu",
            checkpoint_id="pretrained-weights",
            cache_dir=tmp_path / "cache",
        )
        for name, split in splits.items()
    }
    labels = {name: torch.from_numpy(split.labels) for name, split in splits.items()}

    def top1(layer: str, split: str) -> float:
        return knn_top1(
            feats["train"][layer], labels["train"], feats[split][layer], labels[split], 4, k=5
        )

    val = {layer: top1(layer, "val") for layer in ("conv", "fc")}
    best = max(val, key=val.get)
    assert results["best_layer"] == best
    assert results["val_top1"] == val[best] and results["test_top1"] == top1(best, "test")


def test_a_tied_vote_counts_as_wrong_like_the_probe():
    # Two bank entries at exactly the same similarity, one per class: the vote is a tie.
    # argmax would give it to class 0 (the lowest); the probe counts a tie as wrong.
    bank = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    query = torch.tensor([[1.0, 0.0]])
    for bank_labels in (torch.tensor([1, 0]), torch.tensor([0, 1])):
        assert knn_predict(bank, bank_labels, query, 2, k=2).item() == -1
        assert knn_top1(bank, bank_labels, query, torch.tensor([0]), 2, k=2) == 0.0
        assert knn_top1(bank, bank_labels, query, torch.tensor([1]), 2, k=2) == 0.0
    # Without the tie the nearest entry's class wins as before.
    assert knn_predict(bank, torch.tensor([1, 0]), query, 2, k=1).item() in (0, 1)


def test_knn_reports_every_layer_with_paired_intervals(tmp_path):
    backbone = make_backbone(cls=ThreeLayerBackbone)
    ctx = make_context(tmp_path, backbone, FakeDataset())
    knn = with_defaults(
        KNN, data={"name": "fake"}, layers=["stem", "conv", "fc"], k=5, compare_random_init=True
    )
    results = knn.evaluate(ctx)
    assert results["layers"] == ["stem", "conv", "fc"]
    vals = {layer: results[f"layer.{layer}.val_top1"] for layer in results["layers"]}
    best = max(vals, key=vals.get)
    assert results["best_layer"] == best
    assert results["test_top1"] == results[f"layer.{best}.test_top1"]
    for layer in results["layers"]:
        key = f"layer.{layer}."
        assert results[f"{key}gain_top1"] == pytest.approx(
            results[f"{key}test_top1"] - results[f"{key}random_init.test_top1"]
        )
        for name in ("test_top1", "random_init.test_top1", "gain_top1"):
            low, high = results[f"{key}{name}_ci95_low"], results[f"{key}{name}_ci95_high"]
            assert low <= results[f"{key}{name}"] <= high, (layer, name)
    # The top-level gain compares the layers each backbone chose on val.
    assert results["gain_top1"] == pytest.approx(
        results["test_top1"] - results["random_init.test_top1"]
    )
    assert results["gain_top1_ci95_low"] <= results["gain_top1"] <= results["gain_top1_ci95_high"]

"""Weighted k-nearest-neighbour classification on frozen features (no training at all).

The train split's features, L2-normalised, are the memory bank. A query votes with its
``k`` most cosine-similar bank entries, each weighted ``exp(similarity / temperature)``;
the class with the largest vote wins. With several layers, the layer is chosen on val
and reported on test, like the linear probe.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from jigsawkit.data.base import ImageSplit
from jigsawkit.evaluators.base import EvalContext, setup_probe
from jigsawkit.evaluators.features import FeatureSource

# Query rows per similarity block: bounds the (rows x bank) matrix in memory.
_QUERY_ELEMENTS = 1 << 24


def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Predicted class ``(Q,)`` of each query by temperature-weighted cosine kNN."""
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float().to(bank.device), dim=1)
    bank_labels = bank_labels.to(bank.device)
    k = min(int(k), bank.shape[0])
    chunk = max(1, _QUERY_ELEMENTS // max(1, bank.shape[0]))
    predictions = []
    for start in range(0, queries.shape[0], chunk):
        sims = queries[start : start + chunk] @ bank.t()
        top_sims, top_idx = sims.topk(k, dim=1)
        weights = (top_sims / temperature).exp()
        votes = torch.zeros(sims.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        predictions.append(votes.argmax(1))
    return torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)


def knn_top1(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy (a fraction) of ``knn_predict`` on labelled queries."""
    predicted = knn_predict(bank, bank_labels, queries, num_classes, k, temperature)
    if predicted.numel() == 0:
        return float("nan")
    return float((predicted.cpu() == query_labels.cpu()).float().mean())


def _splits_for(layers: list[str]) -> tuple[str, ...]:
    # The val split only serves to choose among several layers.
    return ("train", "val", "test") if len(layers) > 1 else ("train", "test")


class KNN:
    """Weighted cosine kNN on frozen features: train split as the bank, top-1 on test."""

    name = "knn"

    def __init__(self, **params: Any):
        from jigsawkit.evaluators import KNN_SCHEMA, defaults

        self.params = {**defaults(KNN_SCHEMA), **params}

    @property
    def where(self) -> str:
        return f"evaluate.{self.name}"

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        probe = setup_probe(ctx, self.params, self.where, _splits_for)
        splits, num_classes = probe.splits, probe.num_classes
        results = self._score(probe.source(), splits, num_classes, "")
        results.update(
            num_classes=num_classes,
            train_images=len(splits["train"]),
            normalize=probe.normalize,
            normalize_from=probe.normalize_from,
        )
        if self.params["compare_random_init"]:
            results.update(self._score(probe.random_source(), splits, num_classes, "random_init."))
            results["gain_top1"] = results["test_top1"] - results["random_init.test_top1"]
        return results

    def _score(
        self, source: FeatureSource, splits: dict[str, ImageSplit], num_classes: int, prefix: str
    ) -> dict[str, Any]:
        k, temperature = int(self.params["k"]), float(self.params["temperature"])
        feats = {split: source.features(data) for split, data in splits.items()}
        labels = {
            split: torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
            for split, data in splits.items()
        }
        device = source.device

        def top1(layer: str, split: str) -> float:
            return knn_top1(
                feats["train"][layer].to(device),
                labels["train"],
                feats[split][layer],
                labels[split],
                num_classes,
                k,
                temperature,
            )

        layer = source.layers[0]
        out: dict[str, Any] = {}
        if "val" in splits:
            # Several layers: the one best on val is reported on test, never chosen on test.
            val = {name: top1(name, "val") for name in source.layers}
            layer = max(source.layers, key=lambda name: val[name])
            out[f"{prefix}val_top1"] = val[layer]
        out[f"{prefix}test_top1"] = top1(layer, "test")
        out[f"{prefix}best_layer"] = layer
        return out

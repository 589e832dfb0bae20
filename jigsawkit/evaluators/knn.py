"""Weighted k-nearest-neighbour classification on frozen features (no training at all).

The train split's features, L2-normalised, are the memory bank. A query votes with its
``k`` most cosine-similar bank entries, each weighted ``exp(similarity / temperature)``;
the class with the largest vote wins; a query whose largest vote is shared by two classes
gets no prediction (``-1``) and counts as wrong, the linear probe's rule for tied logits.
Every layer is scored on test (the per-layer keys); with several layers the top-level
result is the layer best on val, like the linear probe's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from jigsawkit.data.base import ImageSplit
from jigsawkit.evaluators.base import ConfiguredEvaluator, EvalContext, setup_probe
from jigsawkit.evaluators.bootstrap import comparison_summary
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
    """Predicted class ``(Q,)`` of each query by temperature-weighted cosine kNN; ``-1``
    where two classes share the largest vote (never equal to a label: a tie is wrong)."""
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
        predictions.append(_winner(votes))
    return torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)


def _winner(votes: torch.Tensor) -> torch.Tensor:
    """The class with the strictly largest vote per row, ``-1`` on a tie (or a NaN vote):
    argmax alone would hand every tie to the lowest class index."""
    top = votes.max(1)
    shared = (votes >= top.values.unsqueeze(1)).sum(1) != 1
    return torch.where(shared, torch.full_like(top.indices, -1), top.indices)


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


class KNN(ConfiguredEvaluator):
    """Weighted cosine kNN on frozen features: train split as the bank, top-1 on test.

    ``params`` are every parameter of the ``knn`` schema, as the registry resolves them
    (``registry("evaluator").build("knn", ...)`` fills the defaults).
    """

    name = "knn"

    def feature_sources(self, ctx: EvalContext) -> list[tuple[FeatureSource, list[ImageSplit]]]:
        """The cached features ``evaluate`` reads (extracted by every rank of a torchrun job)."""
        probe = setup_probe(ctx, self.params, self.where, _splits_for)
        return probe.feature_sources(bool(self.params["compare_random_init"]))

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        probe = setup_probe(ctx, self.params, self.where, _splits_for)
        splits, num_classes = probe.splits, probe.num_classes
        scored = {"pretrained": self._score(probe.source(), splits, num_classes)}
        if self.params["compare_random_init"]:
            scored["random_init"] = self._score(probe.random_source(), splits, num_classes)
        results: dict[str, Any] = {}
        for tag, layers in scored.items():
            prefix = "" if tag == "pretrained" else "random_init."
            best = _best_layer(layers)
            if layers[best].val_top1 is not None:
                results[f"{prefix}val_top1"] = layers[best].val_top1
            results[f"{prefix}test_top1"] = layers[best].test_top1
            results[f"{prefix}best_layer"] = best
        results.update(
            num_classes=num_classes,
            train_images=len(splits["train"]),
            normalize=probe.normalize,
            normalize_from=probe.normalize_from,
        )
        results["layers"] = list(probe.layers)
        random = scored.get("random_init")
        comparisons = [
            ("", _best_layer(scored["pretrained"]), _best_layer(random) if random else None)
        ]
        comparisons += [
            (f"layer.{layer}.", layer, layer if random else None) for layer in probe.layers
        ]
        for prefix, layer, random_layer in comparisons:
            mine = scored["pretrained"][layer]
            base = random[random_layer] if random_layer is not None else None
            results.update(comparison_summary(prefix, mine, base, seed=probe.seed))
            if prefix and mine.val_top1 is not None:
                results[f"{prefix}val_top1"] = mine.val_top1
                if base is not None:
                    results[f"{prefix}random_init.val_top1"] = base.val_top1
        return results

    def _score(
        self, source: FeatureSource, splits: dict[str, ImageSplit], num_classes: int
    ) -> dict[str, _LayerScore]:
        """Every layer's val top-1 (when there is a val split) and test correctness."""
        k, temperature = int(self.params["k"]), float(self.params["temperature"])
        feats = {split: source.features(data) for split, data in splits.items()}
        labels = {
            split: torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
            for split, data in splits.items()
        }
        device = source.device

        def correct(layer: str, split: str) -> torch.Tensor:
            predicted = knn_predict(
                feats["train"][layer].to(device),
                labels["train"],
                feats[split][layer],
                num_classes,
                k,
                temperature,
            )
            return predicted.cpu() == labels[split]

        scores = {}
        for layer in source.layers:
            test = correct(layer, "test")
            val = float(correct(layer, "val").float().mean()) if "val" in splits else None
            scores[layer] = _LayerScore(float(test.float().mean()), test, val)
        return scores


@dataclass
class _LayerScore:
    """One layer's kNN result: test top-1, per-image test correctness, val top-1 (or None)."""

    test_top1: float
    test_correct: torch.Tensor
    val_top1: float | None


def _best_layer(scores: dict[str, _LayerScore]) -> str:
    """The layer best on val (the first on ties); the only layer when there is no val."""
    layers = list(scores)
    if scores[layers[0]].val_top1 is None:
        return layers[0]
    return max(layers, key=lambda name: scores[name].val_top1)

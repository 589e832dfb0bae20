"""The online kNN monitor (``pretrain.monitor``): are the features getting better for the
downstream task while the pretext task trains?

Every ``every`` epochs (and after the last planned one) the current backbone turns a small,
fixed labelled subset into features — ``bank_images`` of the monitor dataset's train split
as the neighbour bank, ``query_images`` of its val split as queries, never its test split —
and the weighted cosine kNN of the ``knn`` evaluator (``jigsawkit.evaluators.knn``) scores
the queries. The result is logged as ``pretrain/monitor_knn_top1`` in the epoch's metrics
row, with the monitor's own cost as ``pretrain/monitor_seconds``.

What it must not do, and how it does not: features come from ``extract_features`` (eval
mode, ``torch.no_grad()``, every module's train flag restored, BatchNorm buffers checked
unchanged), so BatchNorm running statistics are untouched; the subsets are drawn once, by
NumPy from the monitor's own seed, so the run's torch random streams are not consumed and a
run's numbers are the same with the monitor as without it.

With ``early_stop: {patience, min_delta}`` it asks the engine to end pretraining when the
top-1 has not risen above its best by more than ``min_delta`` for ``patience`` evaluations.
Its history rides in the engine's checkpoint (``state_dict``), so a resumed run stops at the
same epoch as an uninterrupted one and its summary still has the best value.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jigsawkit.callbacks.base import Callback, EpochEnd
from jigsawkit.data.base import ImageSplit

METRIC = "pretrain/monitor_knn_top1"
SECONDS = "pretrain/monitor_seconds"
WHERE = "pretrain.monitor"
# Random streams of the subsets, drawn with NumPy from the monitor's seed.
_BANK_STREAM, _QUERY_STREAM = 11, 12


def fixed_subset(split: ImageSplit, count: int, seed: int, stream: int) -> ImageSplit:
    """``count`` images of ``split`` (all of them when it has fewer), chosen by ``seed``,
    read into memory once, in file order (a memmap is read front to back)."""
    n = len(split)
    count = min(int(count), n)
    chosen = np.sort(np.random.default_rng([int(seed), stream]).permutation(n)[:count])
    return ImageSplit(
        images=np.ascontiguousarray(split.images[chosen]),
        labels=np.asarray(split.labels, dtype=np.int64)[chosen],
        num_classes=split.num_classes,
        class_names=split.class_names,
    )


class KNNMonitor(Callback):
    """kNN top-1 of the current backbone on a fixed labelled subset, every ``every`` epochs;
    optionally asks pretraining to stop when it stops improving (see the module docstring).
    Its settings' defaults live in the ``pretrain.monitor`` schema only (``build_monitor``)."""

    state_key = "knn_monitor"

    def __init__(
        self,
        bank: ImageSplit,
        queries: ImageSplit,
        num_classes: int,
        *,
        layer: str,
        image_size: int,
        normalize: str,
        k: int,
        temperature: float,
        batch_size: int,
        every: int,
        early_stop: dict | None,
        precision: str,
    ):
        self.bank, self.queries, self.num_classes = bank, queries, int(num_classes)
        self.bank_labels = torch.from_numpy(np.asarray(bank.labels, dtype=np.int64))
        self.query_labels = torch.from_numpy(np.asarray(queries.labels, dtype=np.int64))
        self.layer, self.image_size, self.normalize = layer, int(image_size), normalize
        self.k, self.temperature = int(k), float(temperature)
        self.batch_size, self.every = int(batch_size), int(every)
        self.early_stop = dict(early_stop) if early_stop else None
        self.precision = precision
        self.planned_epochs: int | None = None
        # What a checkpoint carries (state_dict): every evaluation, the early-stop reference
        # (the best value that counted as an improvement) and evaluations since it.
        self.history: list[tuple[int, float]] = []
        self.reference = -math.inf
        self.waited = 0
        self.seconds = 0.0

    # -- the callback --------------------------------------------------------------------

    def on_stage_start(self, stage: str, epochs: int) -> None:
        if stage == "pretrain":
            self.planned_epochs = int(epochs)

    def due(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (counting from 1) is evaluated."""
        return epoch % self.every == 0 or epoch == self.planned_epochs

    def on_epoch_end(self, event: EpochEnd) -> None:
        if event.stage != "pretrain" or not self.due(event.epoch):
            return
        started = time.perf_counter()
        backbone = getattr(event.model, "backbone", event.model)
        value = self.measure(backbone, event.device)
        seconds = time.perf_counter() - started
        self.seconds += seconds
        self.history.append((int(event.epoch), value))
        event.metrics[METRIC] = value
        event.metrics[SECONDS] = seconds
        reason = self._early_stop(value)
        if reason is not None:
            event.request_stop(reason)

    def measure(self, backbone: Any, device: Any) -> float:
        """kNN top-1 (a fraction) of ``backbone``'s features, which it leaves untouched."""
        from jigsawkit.evaluators.features import extract_features
        from jigsawkit.evaluators.knn import knn_top1

        device = torch.device(device) if device is not None else torch.device("cpu")
        with self._autocast(device):
            feats = [
                extract_features(
                    backbone,
                    split,
                    [self.layer],
                    self.image_size,
                    device,
                    self.batch_size,
                    self.normalize,
                    progress=False,
                )[self.layer]
                for split in (self.bank, self.queries)
            ]
        bank, queries = (f.to(device) for f in feats)
        return knn_top1(
            bank,
            self.bank_labels,
            queries,
            self.query_labels,
            self.num_classes,
            self.k,
            self.temperature,
        )

    def _autocast(self, device: torch.device) -> Any:
        # The pretraining's own precision: bf16 roughly halves the monitor's cost on CPUs
        # with native bf16, and kNN on L2-normalised features does not need fp32 inputs.
        if self.precision == "bf16":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _early_stop(self, value: float) -> str | None:
        if self.early_stop is None:
            return None
        if value > self.reference + float(self.early_stop["min_delta"]):
            self.reference, self.waited = value, 0
            return None
        self.waited += 1
        patience = int(self.early_stop["patience"])
        if self.waited < patience:
            return None
        best, epoch = self.best()
        return (
            f"{WHERE}.early_stop: kNN top-1 did not improve by more than "
            f"{self.early_stop['min_delta']} for {patience} evaluation(s) "
            f"(best {best:.4f} after epoch {epoch})"
        )

    # -- results and state ---------------------------------------------------------------

    def best(self) -> tuple[float, int]:
        """The highest top-1 so far and its epoch (the first on ties); (nan, 0) before any."""
        finite = [(value, epoch) for epoch, value in self.history if math.isfinite(value)]
        if not finite:
            return math.nan, 0
        value, epoch = max(finite, key=lambda item: (item[0], -item[1]))
        return value, epoch

    def summary(self) -> dict[str, Any]:
        """What goes to ``summary.json`` under ``pretrain.``: best and last value, the best's
        epoch, how many evaluations, their total seconds and the subset sizes."""
        best, epoch = self.best()
        return {
            "monitor_knn_top1_best": best,
            "monitor_best_epoch": epoch,
            "monitor_knn_top1_last": self.history[-1][1] if self.history else math.nan,
            "monitor_evaluations": len(self.history),
            "monitor_seconds": round(self.seconds, 3),
            "monitor_bank_images": len(self.bank),
            "monitor_query_images": len(self.queries),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [[epoch, value] for epoch, value in self.history],
            "reference": self.reference,
            "waited": self.waited,
            "seconds": self.seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [(int(epoch), float(value)) for epoch, value in state.get("history", [])]
        self.reference = float(state.get("reference", -math.inf))
        self.waited = int(state.get("waited", 0))
        self.seconds = float(state.get("seconds", 0.0))


def build_monitor(
    params: dict,
    backbone: Any,
    *,
    normalization: str | None,
    precision: str,
    seed: int,
    cache_dir: str | Path,
    build_dataset: Callable[[dict], Any],
) -> KNNMonitor:
    """The monitor ``pretrain.monitor`` (validated, defaults filled) describes, its subsets
    loaded now (through the image cache), so a bad dataset or layer fails before the run
    directory exists. ``normalization`` is the pretext task's declared input normalisation
    (``None``: the probes' fallback, ``per_image``)."""
    from jigsawkit.evaluators.base import load_labelled, num_classes_of
    from jigsawkit.evaluators.features import check_layers
    from jigsawkit.normalization import FALLBACK_NORMALIZATION

    layer = check_layers(
        backbone, [params["layer"]] if params["layer"] else None, f"{WHERE}.layer"
    )[0]
    image_size = int(params["image_size"] or backbone.input_size)
    dataset, splits = load_labelled(
        build_dataset, cache_dir, params["data"], image_size, f"{WHERE}.data", ("train", "val")
    )
    subset_seed = int(seed if params["seed"] is None else params["seed"])
    return KNNMonitor(
        fixed_subset(splits["train"], params["bank_images"], subset_seed, _BANK_STREAM),
        fixed_subset(splits["val"], params["query_images"], subset_seed, _QUERY_STREAM),
        num_classes_of(dataset, splits),
        layer=layer,
        image_size=image_size,
        normalize=normalization or FALLBACK_NORMALIZATION,
        k=params["k"],
        temperature=params["temperature"],
        batch_size=params["batch_size"],
        every=params["every"],
        early_stop=params["early_stop"],
        precision=precision,
    )

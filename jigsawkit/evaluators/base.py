"""What an evaluator receives: ``EvalContext``, and helpers shared by evaluators."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jigsawkit.callbacks import EpochEnd
from jigsawkit.data.base import ensure_present
from jigsawkit.errors import CheckpointError, UserError


@dataclass
class EvalContext:
    """Everything an evaluator needs from the run that calls it.

    ``backbone`` is the pretrained feature extractor (on ``device``); evaluators must leave
    its weights and BatchNorm buffers untouched. ``make_random_backbone()`` builds the same
    architecture with random weights (the baseline); ``checkpoint_id`` identifies the
    pretrained weights (``features.state_dict_hash``) and keys the feature cache.
    ``tracker`` receives per-epoch curves: an object with ``log(metrics, step)`` or a
    callable ``(metrics, step)``; ``None`` drops them. ``input_normalization`` is how
    ``backbone``'s inputs were normalised during pretraining (``None``: unknown); probes
    feed the same unless their ``normalize`` says otherwise. ``callbacks``: the run's
    (a ``jigsawkit.callbacks.CallbackList``), called by :meth:`epoch_end`;
    ``run_stop`` is set (``{"reason", "by"}``) once one asked to end the run.
    """

    backbone: Any
    make_random_backbone: Callable[[], Any]
    checkpoint_id: str
    device: Any
    seed: int
    cache_dir: Path
    run_dir: Path
    tracker: Any = None
    build_dataset: Callable[[dict], Any] | None = None
    backbone_spec: dict = field(default_factory=dict)
    input_normalization: str | None = None
    callbacks: Any = None
    run_stop: dict | None = None

    def epoch_end(
        self,
        stage: str,
        epoch: int,
        metrics: dict[str, float],
        step: int | None = None,
        model: Any = None,
    ) -> EpochEnd:
        """What an evaluator that trains per epoch calls after each: the run's callbacks
        see the epoch's ``metrics`` (they may add to them, or ask to stop), then the
        metrics are logged at ``step`` (default: ``epoch``). ``stage`` names the
        evaluator's stage (``probe/<evaluator>``). Returns the event: when
        ``event.stop_requested``, stop training after this epoch; when ``run_stop`` is
        set, the run ends after this evaluator (skip whatever else is optional)."""
        event = EpochEnd(
            stage=stage,
            epoch=int(epoch),
            step=int(epoch if step is None else step),
            metrics=dict(metrics),
            model=model,
            device=self.device,
        )
        if self.callbacks is not None:
            self.callbacks.on_epoch_end(event)
        if event.end_run and self.run_stop is None:
            self.run_stop = {"reason": event.stop_reason, "by": event.stopped_by or "a callback"}
        self.log(event.metrics, event.step)
        return event

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Send per-step metrics to the tracker, whichever form it takes."""
        if self.tracker is None:
            return
        log = getattr(self.tracker, "log", None)
        if callable(log):
            log(metrics, step)
        elif callable(self.tracker):
            self.tracker(metrics, step)


def freeze(backbone: Any) -> Any:
    """Eval mode and no gradients: what a frozen feature extractor must be. Returns it."""
    backbone.eval()
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    return backbone


def labelled_dataset(build_dataset: Callable[[dict], Any], data_cfg: dict, where: str) -> Any:
    """Build the dataset ``data_cfg`` selects, check its contract; refuse one without labels."""
    from jigsawkit.contracts import check_dataset

    name = data_cfg.get("name", "?")
    dataset = check_dataset(build_dataset(data_cfg), f"{where}: dataset '{name}'")
    if not dataset.has_labels:
        raise UserError(
            f"{where}: dataset '{name}' has no labels; a probe needs a labelled dataset"
        )
    return dataset


def check_evaluator_inputs(selection: dict, build_dataset: Callable[[dict], Any]) -> None:
    """Fail now, before any pretraining, on what an evaluator would only find missing at
    the end of a run: its dataset (not on disk, not fetchable, or unlabelled) and an
    exported ``checkpoint`` that is not there. Fetches the data when it may."""
    where = f"evaluate.{selection.get('name', '?')}"
    data = selection.get("data")
    if isinstance(data, dict) and "name" in data:
        dataset = labelled_dataset(build_dataset, data, f"{where}.data")
        ensure_present(dataset, f"{where}.data")
    checkpoint = selection.get("checkpoint")
    if checkpoint and not Path(checkpoint).expanduser().is_file():
        raise CheckpointError(f"{where}.checkpoint: {checkpoint} is not a file")


def check_probe_target(selection: dict, backbone: Any) -> None:
    """Fail now on what a frozen-feature evaluator would find wrong only after pretraining:
    the exported feature extractor it names (read ``weights_only``, its metadata and weights
    checked against the architecture it records) and its ``layers``, resolved against the
    backbone it will really probe (that extractor's, else ``backbone``)."""
    where = f"evaluate.{selection.get('name', '?')}"
    checkpoint = selection.get("checkpoint")
    if checkpoint:
        from jigsawkit import load_feature_extractor
        from jigsawkit.errors import CheckpointError

        try:
            backbone = load_feature_extractor(Path(checkpoint).expanduser())
        except CheckpointError as error:
            raise CheckpointError(f"{where}.checkpoint: {error}") from None
    if "layers" in selection and backbone is not None:
        from jigsawkit.evaluators.features import check_layers

        check_layers(backbone, selection["layers"], f"{where}.layers")


def load_labelled_splits(
    ctx: EvalContext, data_cfg: dict, image_size: int, where: str, splits: tuple[str, ...]
) -> tuple[Any, dict[str, Any]]:
    """Build the evaluator's dataset and load ``splits``; refuse unlabelled or empty ones.

    ``where`` names the config key in error messages (``evaluate.linear_probe.data``).
    """
    if ctx.build_dataset is None:
        raise UserError(f"{where}: this run cannot build datasets (no build_dataset given)")
    return load_labelled(ctx.build_dataset, ctx.cache_dir, data_cfg, image_size, where, splits)


def load_labelled(
    build_dataset: Callable[[dict], Any],
    cache_dir: str | Path,
    data_cfg: dict,
    image_size: int,
    where: str,
    splits: tuple[str, ...],
) -> tuple[Any, dict[str, Any]]:
    """``load_labelled_splits`` without an ``EvalContext``: the dataset ``data_cfg``
    selects, and its ``splits`` through the image cache under ``cache_dir``."""
    dataset = labelled_dataset(build_dataset, data_cfg, where)
    name = data_cfg.get("name", "?")
    loaded = {}
    for split in splits:
        data = dataset.load(split, image_size, Path(cache_dir) / "images")
        if len(data) == 0:
            raise UserError(f"{where}: the {split} split of dataset '{name}' is empty")
        if data.labels is None:
            raise UserError(f"{where}: the {split} split of dataset '{name}' has no labels")
        loaded[split] = data
    return dataset, loaded


def num_classes_of(dataset: Any, splits: dict[str, Any]) -> int:
    """The dataset's class count, else the split's, else the largest label + 1."""
    for count in (dataset.num_classes, *(split.num_classes for split in splits.values())):
        if count:
            return int(count)
    return int(max(int(s.labels.max()) for s in splits.values()) + 1)


def random_init_factory(spec: dict, seed: int, device: Any) -> Callable[[], Any]:
    """A function building the random-init twin of the backbone ``spec`` names
    (``{"name": ..., "params": {...}}``): the same architecture with fresh random weights.

    It never loads weights (``build_untrained``: a timm backbone with ``pretrained: true``
    would otherwise come back with supervised weights and the "random-init" baseline
    would not be random). Weights are drawn with the global torch
    RNG seeded with ``seed + 1``, which is left as it was. The one place that builds the
    twin, for the runner and for probes of an exported checkpoint alike.
    """

    def make_random() -> Any:
        import torch

        from jigsawkit.backbones.untrained import build_untrained

        state = torch.random.get_rng_state()
        torch.manual_seed(int(seed) + 1)
        try:
            model = build_untrained(spec)
        finally:
            torch.random.set_rng_state(state)
        return model.to(device)

    return make_random


def probed_backbone(ctx: EvalContext, checkpoint: str | None) -> tuple[Any, str, Callable]:
    """(backbone, checkpoint_id, make_random_backbone) to probe: the run's own, or the
    exported feature extractor at ``checkpoint`` (loaded lazily, ``weights_only=True``)
    with a random twin built from the architecture recorded in its metadata."""
    if not checkpoint:
        return ctx.backbone, ctx.checkpoint_id, ctx.make_random_backbone
    from jigsawkit import load_feature_extractor
    from jigsawkit.evaluators.features import state_dict_hash

    backbone = freeze(load_feature_extractor(checkpoint).to(ctx.device))
    metadata = getattr(backbone, "metadata", None)
    spec = metadata.get("backbone") if isinstance(metadata, dict) else None
    if not (isinstance(spec, dict) and "name" in spec):
        return backbone, state_dict_hash(backbone), ctx.make_random_backbone

    make_random = random_init_factory(spec, ctx.seed, ctx.device)
    return backbone, state_dict_hash(backbone), make_random


class ConfiguredEvaluator:
    """Base of the built-in evaluators: holds every parameter of the evaluator's schema as
    the registry resolved them (defaults filled) and names its place in the experiment."""

    name = "evaluator"

    def __init__(self, **params: Any):
        self.params = params

    @property
    def where(self) -> str:
        return f"evaluate.{self.name}"


@dataclass
class ProbeSetup:
    """What a frozen-feature evaluator resolves from its params before it scores anything:
    the probed backbone, its layers, the image size, the seed and the labelled splits."""

    ctx: EvalContext
    backbone: Any
    checkpoint_id: str
    make_random: Callable[[], Any]
    layers: list[str]
    image_size: int
    seed: int
    dataset: Any
    splits: dict[str, Any]
    num_classes: int
    batch_size: int
    normalize: str
    normalize_from: str  # "config", "pretraining" or "fallback" (pretraining unknown)

    def source(self) -> Any:
        """The probed backbone's features (a ``FeatureSource``, through the feature cache)."""
        from jigsawkit.evaluators.features import FeatureSource

        return FeatureSource(
            self.backbone,
            self.checkpoint_id,
            self.layers,
            self.image_size,
            self.ctx.device,
            self.ctx.cache_dir,
            batch_size=self.batch_size,
            normalize=self.normalize,
        )

    def random_source(self) -> Any:
        """The random-init baseline's features (BatchNorm recalibrated on the train split)."""
        from jigsawkit.evaluators.features import random_init_source

        return random_init_source(
            self.make_random,
            self.splits["train"],
            self.layers,
            self.image_size,
            self.ctx.device,
            self.ctx.cache_dir,
            self.seed,
            self.batch_size,
            self.normalize,
        )

    def feature_sources(self, compare_random_init: bool) -> list[tuple[Any, list[Any]]]:
        """What the evaluator reads through the feature cache: ``(FeatureSource, splits)``
        for the probed backbone and, when compared, its random-init twin. A torchrun job's
        ranks extract these together before rank 0 evaluates
        (``jigsawkit.evaluators.across_ranks``)."""
        sources = [self.source()]
        if compare_random_init:
            sources.append(self.random_source())
        return [(source, list(self.splits.values())) for source in sources]


def probe_normalization(
    requested: str | None, pretrained: str | None, where: str
) -> tuple[str, str]:
    """The normalisation a probe feeds and where it came from: an explicit ``normalize``
    (``"config"``), else the one the backbone was pretrained with (``"pretraining"``), else
    ``per_image`` with a warning (``"fallback"``). The random-init baseline gets the same."""
    import sys

    from jigsawkit.normalization import FALLBACK_NORMALIZATION

    if requested is not None:
        return requested, "config"
    if pretrained is not None:
        return pretrained, "pretraining"
    print(
        f"warning: {where}: the feature extractor does not record how its inputs were "
        f"normalised in pretraining; feeding {FALLBACK_NORMALIZATION} (set {where}.normalize "
        "to choose)",
        file=sys.stderr,
    )
    return FALLBACK_NORMALIZATION, "fallback"


def setup_probe(
    ctx: EvalContext,
    params: dict,
    where: str,
    splits_for: Callable[[list[str]], tuple[str, ...]],
) -> ProbeSetup:
    """Resolve a probe's ``checkpoint``, ``layers``, ``image_size``, ``seed``, ``data``,
    ``batch_size`` and ``normalize`` (``probe_normalization``) params; ``splits_for(layers)``
    names the splits to load.

    ``where`` is the evaluator's config key (``evaluate.knn``) for error messages.
    """
    from jigsawkit.evaluators.features import check_layers

    backbone, checkpoint_id, make_random = probed_backbone(ctx, params["checkpoint"])
    if params["checkpoint"]:
        from jigsawkit.training.export import recorded_normalization

        pretrained = recorded_normalization(backbone)
    else:
        pretrained = ctx.input_normalization
    normalize, normalize_from = probe_normalization(params["normalize"], pretrained, where)
    layers = check_layers(backbone, params["layers"], f"{where}.layers")
    image_size = int(params["image_size"] or backbone.input_size)
    seed = ctx.seed if params["seed"] is None else int(params["seed"])
    dataset, splits = load_labelled_splits(
        ctx, params["data"], image_size, f"{where}.data", splits_for(layers)
    )
    return ProbeSetup(
        ctx=ctx,
        backbone=backbone,
        checkpoint_id=checkpoint_id,
        make_random=make_random,
        layers=layers,
        image_size=image_size,
        seed=seed,
        dataset=dataset,
        splits=splits,
        num_classes=num_classes_of(dataset, splits),
        batch_size=int(params["batch_size"]),
        normalize=normalize,
        normalize_from=normalize_from,
    )

"""The contract of every component kind, in one module: what a plugin must provide.

Each kind is a :class:`typing.Protocol` (structural: a plugin need not subclass anything)
with one checking function that the core calls where it builds or uses a component::

    from jigsawkit.contracts import Backbone, check_backbone

    trunk = my_factory(...)
    check_backbone(trunk, "backbone 'mine'")   # one-line PluginError if a member is wrong

| kind | protocol | built by | checked by |
| --- | --- | --- | --- |
| backbone | :class:`Backbone` | ``registry("backbone").build(name, **params)`` | :func:`check_backbone` |
| pretext | :class:`PretextTask` | ``registry("pretext").build(name, backbone=module, **params)`` | :func:`check_pretext` |
| dataset | :class:`Dataset` | ``registry("dataset").build(name, **params)`` | :func:`check_dataset` |
| evaluator | :class:`Evaluator` | ``registry("evaluator").build(name, **params)`` | :func:`check_evaluator` |
| tracker | :class:`Tracker` | ``registry("tracker").build(name, run_dir=Path, experiment=str, **params)`` | :func:`check_tracker` |
| search | :class:`SearchStrategy` | ``registry("search").build(name, **params)`` | :func:`check_search_strategy` |

:func:`check_component` dispatches on the kind; the runner calls it on everything it builds
(``jigsawkit.runner.build_component``), the sweep on its strategy, ``create_backbone`` and
``create_pretext`` on what they return. A check looks at members and their types only: it
runs no forward pass and reads no data (a dataset's ``class_names`` may be a property that
reads files, so its value is not touched). ``tests/test_contracts.py`` builds every
registered component and checks the behaviour too (shapes, widths, target ranges).

Implementation bases that conform and save work: ``jigsawkit.pretext.base.PretextTask``
(an ``nn.Module`` with ``chance``, ``normalize`` and a cross-entropy ``loss``),
``jigsawkit.tracking.base.Tracker`` (every method a no-op),
``jigsawkit.data.base.ImageSplit`` (what ``Dataset.load`` returns) and
``jigsawkit.callbacks.Callback`` (re-exported here; the hooks of the engine, the
evaluators and the run).

Tensors are on the run's device. Images reach components as float tensors ``(B, 3, H, W)``
in ``[0, 1]`` unless stated. This module is cheap to import (no torch): registering plugin
files may import it at module level.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from jigsawkit.callbacks.base import Callback
from jigsawkit.errors import PluginError

if TYPE_CHECKING:
    import torch

    from jigsawkit.data.base import ImageSplit
    from jigsawkit.evaluators.base import EvalContext
    from jigsawkit.search.storage import TrialRecord
    from jigsawkit.search.sweep_runner import SweepSession, TrialContext, TrialOutcome

__all__ = [
    "Backbone",
    "Callback",
    "Dataset",
    "Evaluator",
    "PretextTask",
    "SearchStrategy",
    "Tracker",
    "check_backbone",
    "check_component",
    "check_dataset",
    "check_evaluator",
    "check_pretext",
    "check_search_strategy",
    "check_tracker",
    "component_where",
    "optional_method",
]


@runtime_checkable
class Backbone(Protocol):
    """A feature extractor (an ``nn.Module``); the pretext task trains it, probes read it.

    - ``out_dim``: size of the vector ``forward`` returns (an int > 0).
    - ``input_size``: side of the square input it is meant for (a jigsaw tile; probes
      resize images to it unless their ``image_size`` says otherwise; an int > 0).
    - ``forward(x)``: ``x`` float ``(B, 3, H, W)`` -> ``(B, out_dim)``.
    - ``feature_layers``: ``{name: width}``, the layers a probe may read, shallow to deep
      (``layers: all`` probes them in this order). Each width is exact and must not depend
      on the probe's image size: pool conv maps with
      ``jigsawkit.backbones.probe_pool.probe_pool`` (its side depends only on the channels).
    - ``default_probe_layer``: the layer a probe reads when ``layers`` is not set; one of
      ``feature_layers`` (or ``None``: a probe must then name its layers).
    - ``probe_features(x, layers)``: every requested layer from ONE forward pass, as
      ``{name: (B, feature_layers[name])}``; an unknown name is a ``UserError`` naming the
      known ones. (Not timm's ``forward_features(x)``, which returns the unpooled last map.)

    Probes call ``probe_features`` in eval mode under ``torch.no_grad()`` and must find the
    weights and BatchNorm buffers unchanged afterwards.
    """

    out_dim: int
    input_size: int
    feature_layers: Mapping[str, int]
    default_probe_layer: str | None

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def probe_features(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class PretextTask(Protocol):
    """A self-supervised task (an ``nn.Module``) that owns its head and its ``backbone``.

    Subclass ``jigsawkit.pretext.base.PretextTask(backbone, image_size, num_classes)`` to get
    ``chance``, ``normalize`` and the cross-entropy ``loss``. The engine, per batch:
    ``inputs, targets = task.prepare(images, generator, train)``, then
    ``logits = task(inputs)`` and ``task.loss(logits, targets)`` (backward on ``train``).

    - ``backbone``: the :class:`Backbone` it trains (exported after pretraining).
    - ``image_size``: side of the square images it wants from the data (int > 0).
    - ``num_classes`` (int >= 1) and ``chance`` (= 1 / num_classes, the accuracy of a
      uniform guess; the run reports it next to the task's accuracy).
    - ``input_normalization``: how the inputs ``prepare`` builds are normalised, named as a
      probe would for whole images: ``"per_image"``, ``"imagenet"``, ``"none"`` or ``None``
      (undeclared: the run warns and the probes fall back to ``per_image``). Recorded in
      the exported feature extractor; the probes feed the same by default.
    - ``prepare(images, generator, train)``: ``images`` float ``(B, 3, S, S)`` in ``[0, 1]``
      on the device, ``S = image_size``; ``generator`` a ``torch.Generator`` (or ``None``)
      for every random draw, so a batch is reproducible; returns ``(inputs, targets)`` for
      the whole batch, tensor ops on the device; ``targets`` int64 ``(B,)`` in
      ``[0, num_classes)``.
    - ``forward(inputs)``: logits ``(B, num_classes)``.
    - ``loss(logits, targets)``: a scalar tensor.
    """

    backbone: Any
    image_size: int
    num_classes: int
    chance: float
    input_normalization: str | None

    def prepare(
        self, images: torch.Tensor, generator: torch.Generator | None, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward(self, inputs: torch.Tensor) -> torch.Tensor: ...

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Dataset(Protocol):
    """A cheap handle on images: building it reads nothing; ``load`` decodes.

    - ``has_labels``: a bool; a probe refuses a dataset without labels.
    - ``num_classes``: an int, or ``None`` without labels (may be a property).
    - ``class_names``: a list of strings indexed by label, or ``None`` (may be a property
      that reads an index file: the core reads it only after the data is present).
    - ``load(split, image_size, cache_dir)``: ``split`` one of ``"train"``, ``"val"``,
      ``"test"``; returns a ``jigsawkit.data.base.ImageSplit``: ``images`` uint8
      ``(N, image_size, image_size, 3)`` (usually a read-only ``np.memmap`` from the
      decoded-image cache under ``cache_dir``), ``labels`` int64 ``(N,)`` in
      ``[0, num_classes)`` or ``None``, ``num_classes``, ``class_names``, ``skipped``
      (unreadable images left out) and ``key`` (a cache key naming exactly these images).
      The same arguments give the same images every time (seeded splits).
    - Data that is missing and cannot be fetched raises ``jigsawkit.DataMissingError``
      saying what to download and where to put it.

    Optional: ``ensure_present()``, which fetches the data when allowed or raises
    ``DataMissingError``, checking everything ``load`` will read without decoding. A run
    calls it for its pretraining data and every evaluator's data before it writes
    anything (``jigsawkit.preflight``).
    """

    has_labels: bool
    num_classes: int | None
    class_names: list[str] | None

    def load(self, split: str, image_size: int, cache_dir: Path) -> ImageSplit: ...


@runtime_checkable
class Evaluator(Protocol):
    """Measures a pretrained backbone; built per run, after pretraining.

    - ``evaluate(ctx)``: ``ctx`` a ``jigsawkit.evaluators.base.EvalContext`` (the frozen
      ``backbone``, ``make_random_backbone()``, ``checkpoint_id``, ``device``, ``seed``,
      ``cache_dir``, ``run_dir``, ``build_dataset(selection)``, ``input_normalization``;
      an evaluator that trains per epoch reports each with
      ``event = ctx.epoch_end(stage, epoch, metrics)``, which runs the run's callbacks
      and logs the metrics, and stops training when ``event.stop_requested``; other
      metrics go to ``ctx.log(metrics, step)``). Returns a flat ``{key: value}``
      (numbers, strings, ``None`` or lists of them; no nested mapping), recorded in
      ``summary.json`` as ``probe.<evaluator name>.<key>``.
      It must leave the backbone's weights and BatchNorm buffers untouched.
    - ``feature_sources(ctx)`` (optional member): the cached frozen features ``evaluate``
      will read, as ``[(jigsawkit.evaluators.features.FeatureSource, [ImageSplit, ...])]``.
      In a data-parallel job every rank extracts its share of them before rank 0 evaluates
      (``jigsawkit.evaluators.across_ranks``); without it the evaluator extracts on rank 0
      alone (docs/distributed.md).
    """

    def evaluate(self, ctx: EvalContext) -> dict[str, float]: ...


@runtime_checkable
class Tracker(Protocol):
    """An extra sink for what a run produces (the run directory is written by the core).

    Called in this order: ``preflight()`` (optional member: before the run directory
    exists, checks a key or a package in one ``UserError`` line, starts nothing), then
    ``start(config)`` once with the resolved experiment, ``log(metrics, step)`` per step
    (``pretrain/train_loss``, ``pretrain/train_top1``, ``pretrain/val_loss``,
    ``pretrain/val_top1``, ``pretrain/lr``, ``pretrain/images_per_second``,
    ``probe/<evaluator>/<metric>`` such as ``probe/linear_probe/val_top1``), ``summary(values)``
    (flat dotted keys, may be called often), ``artifact(path, name, type)``, and
    ``finish(ok)`` once at the end (``ok`` False when the run failed). An exception after
    ``start`` drops the tracker for the rest of the run, with one warning.
    ``jigsawkit.tracking.base.Tracker`` implements every method as a no-op.
    """

    def start(self, config: dict) -> None: ...

    def log(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def artifact(self, path: str | Path, name: str, type: str) -> None: ...

    def finish(self, ok: bool) -> None: ...


@runtime_checkable
class SearchStrategy(Protocol):
    """Proposes a sweep's trials and keeps them (``jigsawkit.search.sweep_runner.run_sweep``).

    The sweep calls, in this order:

    1. ``check_credentials()``: before the sweep folder exists; raise a one-line
       ``UserError`` when a key or server the strategy needs is missing.
    2. ``online``: a bool. ``False``: the sweep is checked to end (``run_cap``, a grid or
       ``--count``) before it starts.
    3. ``open(session)``: create or attach to the sweep's trials (``session``: a
       ``SweepSession``: ``spec``, ``sweep_dir``, ``sweep_id``, ``worker``,
       ``storage_url``, and the ``on_start``/``on_report``/``on_finish`` callbacks the
       strategy calls for every trial it starts, reports and ends).
    4. ``trial_options()``: keyword arguments for the experiment trials,
       ``{"online", "log_trials", "project", "entity"}``.
    5. ``run(session, trial, count)``: run trials until the sweep ends or ``count`` trials
       of this worker ended; each is ``outcome = trial(TrialContext(...))``, whose
       ``reporter(step, value)`` (the strategy's) stores the value and returns a reason
       to stop the trial there (hyperband, pruning) or ``None``.
    6. ``records(session)``: every trial of the sweep (all workers) as ``TrialRecord`` objects.
    """

    online: bool

    def check_credentials(self) -> None: ...

    def open(self, session: SweepSession) -> None: ...

    def trial_options(self) -> dict[str, Any]: ...

    def run(
        self,
        session: SweepSession,
        trial: Callable[[TrialContext], TrialOutcome],
        count: int | None = None,
    ) -> None: ...

    def records(self, session: SweepSession) -> list[TrialRecord]: ...


# -- checks ----------------------------------------------------------------------------------

PROTOCOLS: dict[str, type] = {
    "backbone": Backbone,
    "pretext": PretextTask,
    "dataset": Dataset,
    "evaluator": Evaluator,
    "tracker": Tracker,
    "search": SearchStrategy,
}

# Members a component may leave out; when present they must be methods.
OPTIONAL_METHODS: dict[str, tuple[str, ...]] = {
    "dataset": ("ensure_present",),
    "tracker": ("preflight",),
}


def component_where(kind: str, name: str) -> str:
    """How errors name a registered component: ``plugin FILE: backbone 'x'`` for a plugin
    (the form of the registry's own plugin errors), ``backbone 'x'`` for a built-in."""
    from jigsawkit.registry import REGISTRIES

    entry = REGISTRIES[kind]._entries.get(name) if kind in REGISTRIES else None
    if entry is None or entry.origin == "built-in":
        return f"{kind} '{name}'"
    return f"plugin {entry.origin}: {kind} '{name}'"


def _fail(where: str, protocol: type, problem: str) -> PluginError:
    return PluginError(f"{where}: {problem} (see jigsawkit.contracts.{protocol.__name__})")


def _members(protocol: type) -> tuple[list[str], list[str]]:
    """(data members, methods) a protocol declares, in declaration order."""
    data = list(protocol.__dict__.get("__annotations__", {}))
    methods = [
        name
        for name, value in protocol.__dict__.items()
        if callable(value) and not name.startswith("_")
    ]
    return data, methods


def _declares(obj: Any, name: str) -> bool:
    """``obj`` has ``name`` without evaluating a property of its class (which may read
    files: a dataset's ``class_names``)."""
    if name in getattr(obj, "__dict__", {}) or hasattr(type(obj), name):
        return True
    return hasattr(obj, name)  # e.g. nn.Module's submodules and buffers


def _check_members(obj: Any, protocol: type, where: str) -> None:
    """Every data member and method ``protocol`` declares is there (methods callable)."""
    if obj is None:
        raise _fail(where, protocol, "the factory returned None")
    data, methods = _members(protocol)
    for name in data:
        if not _declares(obj, name):
            got = type(obj).__name__
            raise _fail(where, protocol, f"{got} has no attribute '{name}'")
    for name in methods:
        if not callable(getattr(obj, name, None)):
            raise _fail(where, protocol, f"{type(obj).__name__} has no method {name}()")


def _check_optional(obj: Any, kind: str, where: str) -> None:
    for name in OPTIONAL_METHODS.get(kind, ()):
        if _declares(obj, name) and not callable(getattr(obj, name, None)):
            raise _fail(where, PROTOCOLS[kind], f"its {name} is not a method")


def _positive_int(obj: Any, name: str, protocol: type, where: str, minimum: int = 1) -> int:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise _fail(where, protocol, f"{name} is {value!r}; expected an int >= {minimum}")
    return int(value)


def optional_method(obj: Any, name: str) -> Callable[..., Any] | None:
    """An optional member of a contract (``Dataset.ensure_present``,
    ``Tracker.preflight``): the bound method, or ``None`` when the object leaves it out."""
    method = getattr(obj, name, None)
    return method if callable(method) else None


def check_backbone(obj: Any, where: str) -> Any:
    """``obj`` if it follows :class:`Backbone`, else a one-line ``PluginError`` naming
    ``where`` and the member that is missing or wrong. Returns ``obj``."""
    _check_members(obj, Backbone, where)
    _positive_int(obj, "out_dim", Backbone, where)
    _positive_int(obj, "input_size", Backbone, where)
    layers = obj.feature_layers
    if not isinstance(layers, Mapping):
        raise _fail(
            where, Backbone, f"feature_layers is {type(layers).__name__}; expected {{name: width}}"
        )
    for name, width in layers.items():
        if not isinstance(name, str) or isinstance(width, bool) or not isinstance(width, int):
            raise _fail(
                where, Backbone, f"feature_layers has {name!r}: {width!r}; expected str: int"
            )
        if width < 1:
            raise _fail(where, Backbone, f"feature_layers['{name}'] is {width}; expected >= 1")
    default = obj.default_probe_layer
    if default is not None and default not in layers:
        known = ", ".join(map(repr, layers)) or "none"
        raise _fail(
            where,
            Backbone,
            f"default_probe_layer {default!r} is not in feature_layers (known: {known})",
        )
    return obj


def check_pretext(obj: Any, where: str) -> Any:
    """``obj`` if it follows :class:`PretextTask` (its ``backbone`` included), else a
    one-line ``PluginError``; a wrong ``input_normalization`` is a ``PluginError`` too.
    Returns ``obj``."""
    _check_members(obj, PretextTask, where)
    _positive_int(obj, "image_size", PretextTask, where)
    _positive_int(obj, "num_classes", PretextTask, where)
    chance = obj.chance
    if isinstance(chance, bool) or not isinstance(chance, numbers.Real) or not 0 < chance <= 1:
        raise _fail(where, PretextTask, f"chance is {chance!r}; expected a number in (0, 1]")
    from jigsawkit.normalization import check_normalization

    try:
        check_normalization(obj.input_normalization, f"{where}: input_normalization")
    except ValueError as error:
        raise PluginError(str(error)) from None
    check_backbone(obj.backbone, f"{where}: its backbone")
    return obj


def check_dataset(obj: Any, where: str) -> Any:
    """``obj`` if it follows :class:`Dataset`; reads no data (``num_classes`` and
    ``class_names`` may be properties that read files: their values are not touched).
    Returns ``obj``."""
    _check_members(obj, Dataset, where)
    _check_optional(obj, "dataset", where)
    if not isinstance(obj.has_labels, bool):
        raise _fail(where, Dataset, f"has_labels is {obj.has_labels!r}; expected a bool")
    return obj


def check_evaluator(obj: Any, where: str) -> Any:
    """``obj`` if it follows :class:`Evaluator`. Returns ``obj``."""
    _check_members(obj, Evaluator, where)
    return obj


def check_tracker(obj: Any, where: str) -> Any:
    """``obj`` if it follows :class:`Tracker` (``preflight`` optional). Returns ``obj``."""
    _check_members(obj, Tracker, where)
    _check_optional(obj, "tracker", where)
    return obj


def check_search_strategy(obj: Any, where: str) -> Any:
    """``obj`` if it follows :class:`SearchStrategy`. Returns ``obj``."""
    _check_members(obj, SearchStrategy, where)
    if not isinstance(obj.online, bool):
        raise _fail(where, SearchStrategy, f"online is {obj.online!r}; expected a bool")
    return obj


CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "backbone": check_backbone,
    "pretext": check_pretext,
    "dataset": check_dataset,
    "evaluator": check_evaluator,
    "tracker": check_tracker,
    "search": check_search_strategy,
}


def check_component(kind: str, obj: Any, name: str) -> Any:
    """Check ``obj``, just built as the registered ``kind`` component ``name``, against its
    contract; errors name the plugin file (see :func:`component_where`). Returns ``obj``."""
    return CHECKS[kind](obj, component_where(kind, name))

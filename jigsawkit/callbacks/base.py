"""The callback interface, in the style of Lightning's callbacks and mmengine's hooks.

A callback is an object with some of the ``on_*`` methods below; the pretraining engine
and the evaluators that train per epoch call them at fixed points of a *stage*
(``"pretrain"``, ``"probe/linear_probe"``, ...), and the run calls ``on_log`` for every
row of metrics it logs. Every method is a no-op on :class:`Callback`, so a callback
overrides only what it needs. Pass callbacks to ``run_experiment(config, callbacks=[...])``
or to ``jigsawkit.training.engine.pretrain(..., callbacks=[...])``.

``on_epoch_end`` receives an :class:`EpochEnd`: the stage, the epoch just finished, the
metrics about to be logged for it (a callback may add its own, e.g. the kNN monitor's
``pretrain/monitor_knn_top1``; they are logged together, after every callback ran) and the
model being trained. A callback asks the stage to stop with ``event.request_stop(reason)``:
the stage finishes that epoch (pretraining: its checkpoint too) and ends normally, so the
run goes on with what it has. ``event.request_stop(reason, end_run=True)`` also ends the
run there: no later stage runs, ``summary.json`` says ``run.state: stopped`` and
``run_experiment`` returns normally (a sweep's early termination is such a callback).

Callbacks run in list order, so a callback that reads a metric another one adds (an early
stop on the monitor's value) comes after it.

A callback with state that must survive a resume (a best value, a patience counter) gives
``state_dict()`` and ``load_state_dict(state)``, as Lightning's callbacks do: the engine
saves the states in its checkpoint under each callback's ``state_key`` (default: its class
name) and hands them back on resume. States are plain values (numbers, strings, lists,
dicts), since checkpoints are read with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EpochEnd:
    """What ``on_epoch_end`` gets: one finished epoch of one stage."""

    stage: str  # "pretrain"
    epoch: int  # epochs finished in this stage, counting from 1
    step: int  # the stage's global optimizer step (what its metrics are logged at)
    metrics: dict[str, float]  # logged after the callbacks ran; callbacks may add to it
    model: Any = None  # what the stage trains (pretrain: the pretext task; .backbone)
    device: Any = None
    stop_reason: str | None = field(default=None)
    end_run: bool = False  # the stop ends the whole run, not only this stage
    stopped_by: str | None = None  # the name of the callback that asked first

    def request_stop(self, reason: str, end_run: bool = False) -> None:
        """Ask the stage to end after this epoch (the first reason given is kept);
        ``end_run=True``: the run ends with this stage (no later stage runs)."""
        if self.stop_reason is None:
            self.stop_reason = " ".join(str(reason).split())
        self.end_run = self.end_run or bool(end_run)

    @property
    def stop_requested(self) -> bool:
        return self.stop_reason is not None


class Callback:
    """Hooks called by the engine, the evaluators and the run; every method is a no-op here.

    An optional ``name`` attribute says who stopped a run in messages (``run stopped
    early by <name>: <reason>``); the class name is used without one.
    """

    def on_stage_start(self, stage: str, epochs: int) -> None:
        """A stage begins (``epochs`` is its planned number of epochs)."""

    def on_epoch_end(self, event: EpochEnd) -> None:
        """An epoch of ``event.stage`` ended; see :class:`EpochEnd`."""

    def on_stage_end(self, stage: str, metrics: dict[str, Any]) -> None:
        """A stage ended normally with its final ``metrics``."""

    def on_log(self, metrics: dict[str, Any], step: int | None) -> None:
        """The run logged a row of ``metrics`` (every row, per step and per epoch alike:
        what ``metrics.jsonl`` and the trackers get). Read-only."""


def callback_name(callback: Any) -> str:
    """How messages name ``callback``: its ``name``, else its class name."""
    name = getattr(callback, "name", None)
    return name if isinstance(name, str) and name else type(callback).__name__


class CallbackList(Callback):
    """Calls every callback in order. A callback that raises ends the run (unlike a tracker,
    a callback can change what the run does, so its failure is not silently dropped)."""

    def __init__(self, callbacks: Iterable[Any] = ()):
        if isinstance(callbacks, CallbackList):
            callbacks = callbacks.callbacks
        self.callbacks: list[Any] = list(callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)

    def _call(self, method: str, *args: Any) -> None:
        for callback in self.callbacks:
            hook = getattr(callback, method, None)
            if hook is not None:
                hook(*args)

    def on_stage_start(self, stage: str, epochs: int) -> None:
        self._call("on_stage_start", stage, epochs)

    def on_epoch_end(self, event: EpochEnd) -> None:
        for callback in self.callbacks:
            hook = getattr(callback, "on_epoch_end", None)
            if hook is None:
                continue
            asked = event.stop_requested
            hook(event)
            if event.stop_requested and not asked:
                event.stopped_by = callback_name(callback)

    def on_stage_end(self, stage: str, metrics: dict[str, Any]) -> None:
        self._call("on_stage_end", stage, metrics)

    def on_log(self, metrics: dict[str, Any], step: int | None) -> None:
        self._call("on_log", metrics, step)

    @staticmethod
    def _key(callback: Any) -> str:
        return str(getattr(callback, "state_key", type(callback).__qualname__))

    def state_dict(self) -> dict[str, Any]:
        """``{state_key: state}`` of every callback that has a ``state_dict()``."""
        return {
            self._key(callback): callback.state_dict()
            for callback in self.callbacks
            if callable(getattr(callback, "state_dict", None))
        }

    def load_state_dict(self, states: dict[str, Any]) -> None:
        """Hand each callback the state saved under its ``state_key`` (if any)."""
        for callback in self.callbacks:
            load = getattr(callback, "load_state_dict", None)
            if callable(load) and self._key(callback) in states:
                load(states[self._key(callback)])

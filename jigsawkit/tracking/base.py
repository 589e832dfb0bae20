"""``Tracker``, a no-op base implementing ``jigsawkit.contracts.Tracker`` (the contract,
with every rule), and ``MultiTracker``, which fans calls out to several trackers.

A tracker is an extra sink for what a run produces: the run directory itself
(``metrics.jsonl``, ``summary.json``) is written by the core, so a tracker that fails
loses nothing that matters. ``MultiTracker`` therefore reports a failing tracker once,
drops it and lets the run go on; only a failure in ``start`` (bad key, bad settings)
stops the run, because the user asked for that tracker and would otherwise not notice.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jigsawkit.errors import one_line


class Tracker:
    """Receives a run's config, metrics per step, summary values and artifacts.

    Every method is a no-op here; a tracker overrides the ones it needs.
    ``name`` is used in warnings (set by subclasses).
    """

    name = "tracker"

    def preflight(self) -> None:
        """Check, before the run writes anything, that ``start`` can succeed (a key, a
        package); raise ``UserError`` in one line if not. Must not start or write anything."""

    def start(self, config: dict) -> None:
        """Called once before anything is logged, with the resolved experiment."""

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Metrics of one step (names like ``pretrain/train_loss``)."""

    def summary(self, values: dict[str, Any]) -> None:
        """Final values as flat dotted keys (``pretrain.test_top1``); may be called often."""

    def artifact(self, path: str | Path, name: str, type: str) -> None:
        """A file worth keeping with the run (e.g. the exported feature extractor)."""

    def finish(self, ok: bool) -> None:
        """Called once at the end; ``ok`` is False when the run failed."""


def _tracker_name(tracker: Any) -> str:
    return str(getattr(tracker, "name", None) or type(tracker).__name__)


class MultiTracker(Tracker):
    """Fans every call out to ``trackers``; a tracker that raises is warned about once and
    dropped for the rest of the run. Errors in ``start`` propagate (after finishing the
    trackers already started, so they can restore what they changed).
    """

    name = "multi"

    def __init__(self, trackers: Iterable[Any] = ()):
        self.trackers: list[Any] = list(trackers)
        self.dropped: list[str] = []

    def __len__(self) -> int:
        return len(self.trackers)

    def start(self, config: dict) -> None:
        started: list[Any] = []
        for tracker in self.trackers:
            try:
                tracker.start(config)
            except BaseException:
                for other in reversed(started):
                    try:
                        other.finish(False)
                    except Exception:  # the start error is the one worth showing
                        pass
                raise
            started.append(tracker)

    def _call(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as error:
                self._drop(tracker, method, error)

    def _drop(self, tracker: Any, method: str, error: Exception) -> None:
        name = _tracker_name(tracker)
        self.trackers.remove(tracker)
        self.dropped.append(name)
        print(
            f"warning: tracker '{name}' failed in {method}() ({one_line(error, first_line=True)}); "
            "it is off for the rest of this run (the run directory keeps every metric)",
            file=sys.stderr,
            flush=True,
        )
        if method != "finish":
            try:  # let it restore what it changed (environment, open files)
                tracker.finish(False)
            except Exception:
                pass

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._call("log", metrics, step)

    def summary(self, values: dict[str, Any]) -> None:
        self._call("summary", values)

    def artifact(self, path: str | Path, name: str, type: str) -> None:
        self._call("artifact", path, name, type)

    def finish(self, ok: bool) -> None:
        self._call("finish", ok)

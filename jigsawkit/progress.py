"""Progress reporting: rich bars on a terminal, plain log lines at a sensible rate otherwise.

Usage::

    with progress_bar("extracting features", total=len(loader), unit="batch") as bar:
        for batch in loader:
            ...
            bar.advance(1, loss=0.12)   # extra fields are shown next to the bar

Whether bars show at all is decided by whoever runs the work, not by each bar:
``with progress_bars(False):`` turns off every bar drawn inside it, in this thread and
whatever it calls (``run_experiment(progress=False)`` runs the whole experiment so, and a
sweep's live table runs its trials so). Scopes nest and only ever turn bars off, so a
quiet caller stays quiet whatever the code inside asks for.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

PLAIN_INTERVAL_S = float(os.environ.get("JIGSAWKIT_PROGRESS_INTERVAL", "10"))

_BARS_ON: contextvars.ContextVar[bool] = contextvars.ContextVar("jigsawkit_bars_on", default=True)


def bars_enabled() -> bool:
    """Whether progress bars may show here (no enclosing ``progress_bars(False)``)."""
    return _BARS_ON.get()


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Inside, bars show only if ``enabled`` and every enclosing scope allows them."""
    token = _BARS_ON.set(_BARS_ON.get() and bool(enabled))
    try:
        yield
    finally:
        _BARS_ON.reset(token)


def is_interactive() -> bool:
    """True when progress may redraw: stderr is a terminal and not CI."""
    if os.environ.get("JIGSAWKIT_PLAIN_PROGRESS"):
        return False
    if os.environ.get("CI"):
        return False
    return sys.stderr.isatty()


def _format_fields(fields: dict[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


class _PlainBar:
    """Log lines to stderr, at most every PLAIN_INTERVAL_S seconds plus the final one."""

    def __init__(self, description: str, total: int | None, unit: str):
        self.description, self.total, self.unit = description, total, unit
        self.done = 0
        self.fields: dict[str, Any] = {}
        self.start = time.perf_counter()
        self.last = self.start

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        now = time.perf_counter()
        if now - self.last >= PLAIN_INTERVAL_S:
            self.last = now
            self._print(now)

    def _print(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        total = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and rate > 0 and not final:
            eta = f" eta {max(self.total - self.done, 0) / rate:.0f}s"
        extra = _format_fields(self.fields)
        print(
            f"{self.description}: {self.done}{total} {self.unit} "
            f"({rate:.1f} {self.unit}/s, {elapsed:.0f}s{eta}) {extra}".rstrip(),
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        self._print(time.perf_counter(), final=True)


class _RichBar:
    def __init__(self, description: str, total: int | None, unit: str):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.unit = unit
        self.fields: dict[str, Any] = {}
        self.start = time.perf_counter()
        self.done = 0
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[extra]}"),
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(description, total=total, rate="", extra="")

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.progress.update(
            self.task,
            advance=n,
            rate=f"{self.done / elapsed:.1f} {self.unit}/s",
            extra=_format_fields(self.fields),
        )

    def close(self) -> None:
        self.progress.stop()


@contextlib.contextmanager
def progress_bar(
    description: str, total: int | None = None, unit: str = "it", enabled: bool = True
) -> Iterator[_PlainBar | _RichBar | _NullBar]:
    """A progress bar for a long step; ``enabled=False`` (or an enclosing
    ``progress_bars(False)``) gives one that shows nothing."""
    if not enabled or not bars_enabled():
        bar: Any = _NullBar()
    elif is_interactive():
        bar = _RichBar(description, total, unit)
    else:
        bar = _PlainBar(description, total, unit)
    try:
        yield bar
    finally:
        bar.close()


class _NullBar:
    def advance(self, n: int = 1, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass

"""The ``console`` tracker: one compact line per logged step, the summary as a table.

Output goes to stdout through rich. When stdout is not a terminal (a pipe, a file, CI
logs) or ``NO_COLOR`` is set, rich is told so explicitly: no colours, no cursor
movement, no markup parsing, nothing but plain text.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from jigsawkit.tracking.base import Tracker

# Evaluation results are rare and are what the user waits for: always shown, whatever
# ``every`` says.
_ALWAYS_SHOWN_PREFIXES = ("val_", "test_")


# Summary keys still written under an old name for old readers (docs/tracking.md): a table
# shows the old key only where the new one is missing, i.e. in an old run directory.
DEPRECATED_KEYS = {"pretrain.num_permutations": "pretrain.num_classes"}


def current_keys(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` without the deprecated aliases whose new key is there too."""
    return {k: v for k, v in summary.items() if DEPRECATED_KEYS.get(k) not in summary}


def format_value(value: Any) -> str:
    """A number in few characters: ints as is, floats to 4 significant digits."""
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:.1f}"
    if 0 < magnitude < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}"


def make_console(stream: Any = None) -> Any:
    """A rich Console on ``stream`` (default stdout) that writes plain text off a terminal."""
    from rich.console import Console

    stream = stream if stream is not None else sys.stdout
    is_tty = bool(getattr(stream, "isatty", lambda: False)())
    plain = not is_tty or bool(os.environ.get("NO_COLOR"))
    return Console(
        file=stream,
        # False (not None) so that FORCE_COLOR / TTY_COMPATIBLE cannot turn escapes on in a log.
        force_terminal=None if is_tty else False,
        no_color=plain,
        color_system=None if plain else "auto",
        markup=False,
        emoji=False,
        highlight=False,
    )


def split_stage(metrics: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``{"pretrain/train_loss": ..}`` -> ``("pretrain", {"train_loss": ..})``.

    The stage is the longest common ``/``-prefix of the names (``probe/linear_probe`` for
    probe metrics); with no common prefix the stage is empty and names stay whole.
    """
    parts = [name.split("/") for name in metrics]
    if not parts:
        return "", {}
    common = parts[0][:-1]
    for name_parts in parts[1:]:
        n = 0
        while n < min(len(common), len(name_parts) - 1) and common[n] == name_parts[n]:
            n += 1
        common = common[:n]
    stage = "/".join(common)
    cut = len(common)
    return stage, {"/".join(p[cut:]): v for p, v in zip(parts, metrics.values())}


class ConsoleTracker(Tracker):
    """Prints each logged step as one line (every ``every`` steps) and the summary table."""

    name = "console"

    def __init__(self, run_dir: str | Path | None = None, experiment: str = "", *, every: int):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.experiment = experiment
        self.every = max(int(every), 1)
        self.values: dict[str, Any] = {}
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            self._console = make_console()
        return self._console

    def start(self, config: dict) -> None:
        self._console = make_console()

    def _wanted(self, metrics: dict[str, Any], step: int | None) -> bool:
        if step is None or self.every == 1 or step % self.every == 0:
            return True
        return any(name.rsplit("/", 1)[-1].startswith(_ALWAYS_SHOWN_PREFIXES) for name in metrics)

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not metrics or not self._wanted(metrics, step):
            return
        from rich.text import Text

        stage, short = split_stage(metrics)
        line = Text()
        if stage:
            line.append(stage, style="bold cyan")
            line.append("  ")
        if step is not None:
            line.append("step ", style="dim")
            line.append(str(step))
            line.append("  ")
        for i, (name, value) in enumerate(short.items()):
            if i:
                line.append("  ")
            line.append(f"{name} ", style="dim")
            line.append(format_value(value))
        self.console.print(line, soft_wrap=True)

    def summary(self, values: dict[str, Any]) -> None:
        self.values.update(values)

    def finish(self, ok: bool) -> None:
        from rich.table import Table

        from jigsawkit.tracking.probe_layers import is_layer_key

        shown = {k: v for k, v in sorted(current_keys(self.values).items()) if not is_layer_key(k)}
        if shown:
            title = f"summary: {self.experiment}" if self.experiment else "summary"
            table = Table(title=title, title_justify="left")
            table.add_column("key", overflow="fold")
            table.add_column("value", justify="right", overflow="fold")
            for key, value in shown.items():
                table.add_row(key, format_value(value))
            self.console.print(table)
        tables = probe_tables(self.values)
        if tables:
            # Off a terminal nothing limits the width: keep each row on one line in a log.
            width = self.console.width
            if not self.console.is_terminal:
                self.console.width = max(width, 120)
            try:
                for layer_table in tables:
                    self.console.print(layer_table)
            finally:
                self.console.width = width
        where = f" ({self.run_dir})" if self.run_dir is not None else ""
        outcome = "finished" if ok else "FAILED"
        if ok and self.values.get("run.state") == "stopped":  # a callback ended the run
            by = self.values.get("run.stopped_by") or "a callback"
            reason = self.values.get("run.stop_reason")
            outcome = f"stopped early by {by}" + (f": {reason}" if reason else "")
        self.console.print(f"run {outcome}{where}", soft_wrap=True)


def probe_tables(summary: dict[str, Any]) -> list[Any]:
    """One rich Table per evaluator: test top-1 per layer, pretrained and random init, and
    the gain, in percent with their paired-bootstrap 95% intervals; the last row is the
    layer chosen on val."""
    from rich.table import Table

    from jigsawkit.tracking.probe_layers import format_estimate, probe_layer_tables

    tables = []
    for found in probe_layer_tables(summary):
        table = Table(
            title=f"{found.evaluator}: test top-1 % per layer [95% interval, paired bootstrap]",
            title_justify="left",
        )
        for name in ("layer", "pretrained", "random init", "gain (points)"):
            table.add_column(name, justify="left" if name == "layer" else "right")
        rows = list(found.rows)
        if len(rows) > 1:
            rows.append(replace(found.best, layer=f"best on val: {found.best.layer}"))
        for row in rows:
            table.add_row(
                row.layer,
                format_estimate(row.pretrained),
                format_estimate(row.random_init),
                format_estimate(row.gain, signed=True),
            )
        tables.append(table)
    return tables

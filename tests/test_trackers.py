"""Tracker fan-out (MultiTracker) and the console tracker's plain-text output."""

from __future__ import annotations

import io
import re

import pytest

from jigsawkit.registry import registry
from jigsawkit.tracking.base import MultiTracker, Tracker
from jigsawkit.tracking.console import ConsoleTracker, format_value, make_console, split_stage

CONTROL = re.compile(r"\x1b|\x9b|\r")


class Recorder(Tracker):
    def __init__(self, name: str, fail_in: str | None = None):
        self.name = name
        self.fail_in = fail_in
        self.calls: list[tuple] = []

    def _record(self, method: str, *args) -> None:
        self.calls.append((method, *args))
        if method == self.fail_in:
            raise RuntimeError(f"{self.name} broke in {method}\nsecond line")

    def start(self, config):
        self._record("start", config)

    def log(self, metrics, step=None):
        self._record("log", metrics, step)

    def summary(self, values):
        self._record("summary", values)

    def artifact(self, path, name, type):
        self._record("artifact", path, name, type)

    def finish(self, ok):
        self._record("finish", ok)


def test_multi_tracker_fans_out_every_call_in_order():
    a, b = Recorder("a"), Recorder("b")
    multi = MultiTracker([a, b])
    multi.start({"name": "x"})
    multi.log({"pretrain/train_loss": 1.5}, 3)
    multi.summary({"pretrain.test_top1": 0.5})
    multi.artifact("f.pt", "model", "model")
    multi.finish(True)
    expected = [
        ("start", {"name": "x"}),
        ("log", {"pretrain/train_loss": 1.5}, 3),
        ("summary", {"pretrain.test_top1": 0.5}),
        ("artifact", "f.pt", "model", "model"),
        ("finish", True),
    ]
    assert a.calls == expected and b.calls == expected
    assert len(multi) == 2 and multi.dropped == []


def test_failing_tracker_is_warned_once_dropped_and_the_run_goes_on(capsys):
    bad, good = Recorder("bad", fail_in="log"), Recorder("good")
    multi = MultiTracker([bad, good])
    multi.start({})
    for step in range(3):
        multi.log({"pretrain/train_loss": 1.0}, step)
    multi.summary({"k": 1.0})
    multi.finish(True)

    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert "'bad'" in warnings[0] and "log()" in warnings[0] and "second line" not in err
    assert multi.dropped == ["bad"]
    # the bad tracker saw one log, then was finished (to clean up) and never called again
    assert [c[0] for c in bad.calls] == ["start", "log", "finish"]
    assert bad.calls[-1] == ("finish", False)
    assert [c[0] for c in good.calls] == ["start", "log", "log", "log", "summary", "finish"]


def test_error_in_start_propagates_and_finishes_the_started_ones():
    first, broken, never = Recorder("first"), Recorder("broken", "start"), Recorder("never")
    multi = MultiTracker([first, broken, never])
    with pytest.raises(RuntimeError, match="broken broke in start"):
        multi.start({})
    assert first.calls[-1] == ("finish", False)
    assert never.calls == []


def test_split_stage_and_format_value():
    assert split_stage({"pretrain/train_loss": 1, "pretrain/lr": 2}) == (
        "pretrain",
        {"train_loss": 1, "lr": 2},
    )
    assert split_stage({"probe/linear_probe/val_top1": 1, "probe/linear_probe/epoch": 2})[0] == (
        "probe/linear_probe"
    )
    assert split_stage({"pretrain/a": 1, "probe/b": 2}) == ("", {"pretrain/a": 1, "probe/b": 2})
    assert format_value(12) == "12"
    assert format_value(0.123456) == "0.1235"
    assert format_value(0.0001) == "1.00e-04"
    assert format_value(1234.56) == "1234.6"
    assert format_value("runs/x") == "runs/x"
    import numpy as np

    assert format_value(np.float32(0.25)) == "0.25"


def run_console(every: int = 1) -> ConsoleTracker:
    tracker = registry("tracker").build("console", run_dir="runs/x", experiment="demo", every=every)
    tracker.start({"name": "demo"})
    for step in range(1, 7):
        tracker.log({"pretrain/train_loss": 2.0 / step, "pretrain/lr": 1e-3}, step)
    tracker.log({"pretrain/val_top1": 0.4321, "pretrain/val_loss": 1.25}, 5)
    tracker.log({"probe/linear_probe/val_top1": 0.61}, 0)
    tracker.summary({"pretrain.test_top1": 0.55})
    tracker.summary({"run.wall_seconds": 12.5, "pretrain.export_path": "runs/x/[fe].pt"})
    tracker.finish(True)
    return tracker


def test_console_output_is_plain_text_when_captured(capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # must not turn escapes on in a log
    monkeypatch.delenv("NO_COLOR", raising=False)
    run_console()
    out = capsys.readouterr().out
    assert not CONTROL.search(out), repr(out[:200])
    lines = out.splitlines()
    step_lines = [line for line in lines if line.startswith("pretrain  step")]
    assert len(step_lines) == 7
    assert "pretrain  step 2  train_loss 1  lr 0.001" in lines
    assert "pretrain  step 5  val_top1 0.4321  val_loss 1.25" in lines
    assert any(line.startswith("probe/linear_probe  step 0  val_top1 0.61") for line in lines)
    # the summary table: every key, markup-looking text kept as is
    assert re.search(r"pretrain\.test_top1\s.*0\.55", out)
    assert "run.wall_seconds" in out and "[fe].pt" in out
    assert lines[-1] == "run finished (runs/x)"


def test_console_every_n_steps_keeps_evaluation_lines(capsys):
    run_console(every=3)
    lines = capsys.readouterr().out.splitlines()
    steps = [int(line.split()[2]) for line in lines if line.startswith("pretrain  step")]
    assert steps == [3, 6, 5]  # 3 and 6 by `every`, 5 because it holds validation metrics


def test_console_on_a_terminal_uses_colour_unless_no_color(monkeypatch):
    class FakeTerminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    stream = FakeTerminal()
    console = make_console(stream)
    from rich.text import Text

    console.print(Text("stage", style="bold cyan"))
    assert re.search(r"\x1b\[[0-9;]*36m", stream.getvalue())  # cyan

    monkeypatch.setenv("NO_COLOR", "1")
    stream = FakeTerminal()
    make_console(stream).print(Text("stage", style="bold cyan"))
    assert not re.search(r"\x1b\[[0-9;]*3[0-9]m", stream.getvalue())  # no colour code


def test_failed_run_says_so(capsys):
    tracker = registry("tracker").build("console", experiment="demo")
    tracker.start({})
    tracker.finish(False)
    assert capsys.readouterr().out.strip().endswith("run FAILED")


def layer_summary(evaluator: str = "linear_probe") -> dict:
    """Summary keys of a probe over three layers, the middle one chosen on val."""
    base = f"probe.{evaluator}."
    values = {f"{base}layers": ["conv1", "conv2", "fc"], f"{base}best_layer": "conv2"}
    for layer, top1 in (("conv1", 0.55), ("conv2", 0.71), ("fc", 0.6)):
        for prefix in (f"{base}layer.{layer}.", base if layer == "conv2" else None):
            if prefix is None:
                continue
            values[f"{prefix}test_top1"] = top1
            values[f"{prefix}test_top1_ci95_low"] = top1 - 0.03
            values[f"{prefix}test_top1_ci95_high"] = top1 + 0.03
            values[f"{prefix}random_init.test_top1"] = 0.5
            values[f"{prefix}gain_top1"] = top1 - 0.5
            values[f"{prefix}gain_top1_ci95_low"] = top1 - 0.52
            values[f"{prefix}gain_top1_ci95_high"] = top1 - 0.48
    return values


def test_console_shows_the_per_layer_table_with_intervals(capsys):
    tracker = registry("tracker").build("console", experiment="demo")
    tracker.start({})
    tracker.summary({**layer_summary(), "pretrain.test_top1": 0.5})
    tracker.finish(True)
    out = capsys.readouterr().out
    assert "linear_probe: test top-1 % per layer" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 4}
    assert list(rows) == ["conv1", "conv2", "fc", "best on val: conv2"]
    assert "55.0 [52.0, 58.0]" in rows["conv1"] and "+5.0 [+3.0, +7.0]" in rows["conv1"]
    assert "71.0 [68.0, 74.0]" in rows["best on val: conv2"]
    assert "+21.0 [+19.0, +23.0]" in rows["best on val: conv2"]
    # Per-layer keys live in the layer table, not in the key/value table.
    assert "layer.conv1" not in out and "probe.linear_probe.gain_top1_ci95_low" in out


def test_console_summary_shows_num_classes_and_the_old_key_only_in_old_runs(capsys):
    """``pretrain.num_permutations`` (jigsaw words) is a deprecated alias of
    ``pretrain.num_classes``: the table shows the new key, the old one only alone."""
    for values, shown, hidden in (
        ({"pretrain.num_classes": 4, "pretrain.num_permutations": 4}, "num_classes", "num_perm"),
        ({"pretrain.num_permutations": 64}, "num_permutations", "num_classes"),
    ):
        tracker = ConsoleTracker(run_dir="runs/x", every=1)
        tracker.summary(values)
        tracker.finish(True)
        out = capsys.readouterr().out
        assert f"pretrain.{shown}" in out and hidden not in out, out

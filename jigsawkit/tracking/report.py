"""``jigsawkit report``: PNG figures and a ``report.md`` from run (and sweep) directories.

Everything comes from the local files, no W&B needed:

- ``metrics.jsonl`` -> the online kNN monitor (``pretrain/monitor_knn_top1``) next to the
  pretext task's val top-1 per epoch, when the run logged it; and loss / accuracy
  (/ learning-rate) curves per stage. A stage is the
  first part of a metric name (``pretrain/val_top1`` -> ``pretrain``), or the first two
  for probes (``probe/linear_probe/val_top1`` -> ``probe/linear_probe``). Curves are drawn
  against ``<stage>/epoch`` when every row of the stage has one, else against ``step``.
- probe results per learning rate, pretrained vs random-init, from the
  ``probe_<evaluator>.json`` files the linear probe writes: ``{"pretrained": [head, ...],
  "random_init": [head, ...]}``, a head being ``{"layer", "lr", "weight_decay",
  "val_top1", "test_top1", "diverged", ...}``;
- ``summary.json`` -> a table with one column per run; ``config.yaml`` -> the resolved
  config of each run and, for several runs, the keys in which they differ;
- sweep directories (``trials.jsonl``: ``{"params": {..}, "metric": .., "state": ..}`` per
  trial; the metric's name and goal from the resolved sweep file ``sweep.yaml``,
  ``sweep: {metric: {name, goal}}``) -> the metric against each swept parameter and the
  best trials.

Only what jigsawkit writes is read; a file in another shape is an error, not a guess.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jigsawkit.errors import UserError

RUN_FILES = ("metrics.jsonl", "summary.json", "config.yaml")
SWEEP_FILE = "trials.jsonl"
SWEEP_SPEC = "sweep.yaml"
PRETRAINED, RANDOM_INIT = "pretrained", "random-init"
# probe_<evaluator>.json: the key of each backbone's heads -> how the report names it
PROBE_VARIANTS = {"pretrained": PRETRAINED, "random_init": RANDOM_INIT}
MAX_TOP_TRIALS = 10


# -- loading -----------------------------------------------------------------------------


def as_float(value: Any) -> float | None:
    """A finite-or-not number, or None (bools and non-numeric strings are not numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf", "infinity"):
        return float(value)
    return None


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a ``.jsonl`` file; a damaged line (e.g. a crash mid-write) is skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


@dataclass
class GridPoint:
    """One probe result at one learning rate (and weight decay)."""

    evaluator: str
    variant: str
    lr: float
    weight_decay: float | None
    metrics: dict[str, float]
    layer: str = ""
    diverged: bool = False


@dataclass
class RunData:
    """What a report needs from one run directory."""

    path: Path
    label: str
    rows: list[dict] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict | None = None
    config_text: str = ""
    grid: list[GridPoint] = field(default_factory=list)


@dataclass
class SweepData:
    """What a report needs from one sweep directory."""

    path: Path
    label: str
    trials: list[dict]
    metric_name: str
    goal: str


@dataclass
class ReportResult:
    """Where the report went."""

    report: Path
    figures: list[Path]


def _grid_from_file(path: Path, evaluator: str) -> list[GridPoint]:
    """The heads of a ``probe_<evaluator>.json`` (see the module's docstring)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a probe results file ({error})") from None
    points = []
    for key, variant in PROBE_VARIANTS.items():
        heads = data.get(key) if isinstance(data, dict) else None
        for head in heads if isinstance(heads, list) else []:
            lr = as_float(head.get("lr")) if isinstance(head, dict) else None
            if lr is None:
                raise UserError(f"{path}: {key}: a head without a learning rate: {head!r:.80}")
            metrics = {
                k: v
                for k, v in ((k, as_float(v)) for k, v in head.items())
                if v is not None and k not in ("lr", "weight_decay")
            }
            points.append(
                GridPoint(
                    evaluator,
                    variant,
                    lr,
                    as_float(head.get("weight_decay")),
                    metrics,
                    layer=str(head.get("layer") or ""),
                    diverged=head.get("diverged") is True,
                )
            )
    return points


def load_grid(path: Path) -> list[GridPoint]:
    """Per-lr probe results from the run's ``probe_<evaluator>.json`` files."""
    points: list[GridPoint] = []
    for file in sorted(path.glob("probe_*.json")):
        points.extend(_grid_from_file(file, file.stem[len("probe_") :]))
    return points


def load_run(path: Path, label: str) -> RunData:
    """Read a run directory's metrics, summary, config and probe grid files."""
    import yaml

    run = RunData(path=path, label=label)
    if (path / "metrics.jsonl").is_file():
        run.rows = read_jsonl(path / "metrics.jsonl")
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise UserError(f"{path / 'summary.json'}: not valid JSON ({error})") from error
        run.summary = summary if isinstance(summary, dict) else {}
    if (path / "config.yaml").is_file():
        run.config_text = (path / "config.yaml").read_text(encoding="utf-8")
        try:
            config = yaml.safe_load(run.config_text)
        except yaml.YAMLError:
            config = None
        run.config = config if isinstance(config, dict) else None
    run.grid = load_grid(path)
    return run


def load_sweep(path: Path, label: str) -> SweepData:
    """Read a sweep directory's ``trials.jsonl`` and, from ``sweep.yaml`` (the resolved
    sweep file the runner writes first), the metric's name and goal."""
    import yaml

    spec = path / SWEEP_SPEC
    try:
        data = yaml.safe_load(spec.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"{spec}: cannot read the sweep's metric ({error})") from None
    sweep = data.get("sweep") if isinstance(data, dict) else None
    metric = sweep.get("metric") if isinstance(sweep, dict) else None
    if not (isinstance(metric, dict) and metric.get("name") and metric.get("goal")):
        raise UserError(f"{spec}: no `sweep: {{metric: {{name, goal}}}}` (not jigsawkit's)")
    trials = read_jsonl(path / SWEEP_FILE)
    return SweepData(path, label, trials, metric_name=str(metric["name"]), goal=metric["goal"])


def directory_kind(path: Path) -> str:
    """``"sweep"`` or ``"run"``; ``UserError`` (one line) for anything else."""
    if not path.exists():
        raise UserError(f"{path}: no such directory")
    if not path.is_dir():
        raise UserError(f"{path}: not a directory (expected a jigsawkit run or sweep directory)")
    if (path / SWEEP_FILE).is_file():
        return "sweep"
    if any((path / name).is_file() for name in RUN_FILES):
        return "run"
    raise UserError(
        f"{path}: not a jigsawkit run directory (no {', '.join(RUN_FILES)}) "
        f"nor a sweep directory (no {SWEEP_FILE})"
    )


def _labels(paths: list[Path]) -> list[str]:
    """Directory names, with the parent added where two names clash."""
    names = [p.resolve().name or str(p) for p in paths]
    return [
        f"{path.resolve().parent.name}/{name}" if names.count(name) > 1 else name
        for path, name in zip(paths, names)
    ]


# -- series ------------------------------------------------------------------------------


def stage_of(name: str) -> tuple[str, str]:
    """``pretrain/val_top1`` -> (``pretrain``, ``val_top1``); probes keep two parts."""
    parts = name.split("/")
    if len(parts) >= 3 and parts[0] == "probe":
        return "/".join(parts[:2]), "/".join(parts[2:])
    if len(parts) >= 2:
        return parts[0], "/".join(parts[1:])
    return "", name


def panel_of(metric: str) -> str | None:
    """Which panel a metric is drawn in, or None (throughput, counters, ...)."""
    last = metric.rsplit("/", 1)[-1].lower()
    if "loss" in last:
        return "loss"
    if "top1" in last or "top5" in last or "acc" in last:
        return "accuracy"
    if last in ("lr", "learning_rate"):
        return "learning rate"
    return None


PANELS = ("loss", "accuracy", "learning rate")


def stage_series(rows: list[dict]) -> dict[str, tuple[str, dict[str, list[tuple[float, float]]]]]:
    """``{stage: (x label, {metric: [(x, y), ...]})}`` from metrics.jsonl rows."""
    by_stage: dict[str, list[tuple[dict, dict[str, float]]]] = {}
    for index, row in enumerate(rows):
        for key, value in row.items():
            if key in ("step", "time"):
                continue
            number = as_float(value)
            if number is None:
                continue
            stage, metric = stage_of(key)
            entries = by_stage.setdefault(stage, [])
            if not entries or entries[-1][0] is not row:
                entries.append((row, {"_index": float(index)}))
            entries[-1][1][metric] = number
    result = {}
    for stage, entries in by_stage.items():
        use_epoch = all("epoch" in values for _, values in entries)
        series: dict[str, list[tuple[float, float]]] = {}
        for row, values in entries:
            step = as_float(row.get("step"))
            x = values["epoch"] if use_epoch else (step if step is not None else values["_index"])
            for metric, y in values.items():
                if metric in ("_index", "epoch") or panel_of(metric) is None:
                    continue
                series.setdefault(metric, []).append((x, y))
        if series:
            result[stage] = ("epoch" if use_epoch else "step", series)
    return result


def split_restarts(points: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """Split where x goes back (a stage logged twice, e.g. a probe rerun)."""
    segments: list[list[tuple[float, float]]] = [[]]
    for point in points:
        if segments[-1] and point[0] < segments[-1][-1][0]:
            segments.append([])
        segments[-1].append(point)
    return segments


# -- figures -----------------------------------------------------------------------------

LINESTYLES = ("-", "--", ":", "-.")


def _figure(width: float, height: float) -> Any:
    # The object API with an Agg canvas: no pyplot, no global backend, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _legend(axis: Any) -> None:
    handles, _ = axis.get_legend_handles_labels()
    if handles:
        axis.legend(fontsize="small", ncol=1 if len(handles) <= 8 else 2)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def plot_stage_curves(runs: list[RunData], stage: str, out: Path) -> Path | None:
    """One figure per stage: loss, accuracy (and learning rate) panels, runs overlaid."""
    per_run = []
    for run in runs:
        found = stage_series(run.rows).get(stage)
        if found:
            per_run.append((run, found))
    panels = [p for p in PANELS if any(panel_of(m) == p for _, (_, s) in per_run for m in s)]
    if not panels:
        return None
    figure = _figure(5.5 * len(panels), 4.2)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    xlabels = {xlabel for _, (xlabel, _) in per_run}
    xlabel = xlabels.pop() if len(xlabels) == 1 else "step / epoch"
    for axis, panel in zip(axes, panels):
        for color, (run, (_, series)) in enumerate(per_run):
            names = [m for m in series if panel_of(m) == panel]
            for style, metric in enumerate(names):
                segments = split_restarts(series[metric])
                for n, segment in enumerate(segments):
                    label = metric if len(runs) == 1 else f"{run.label}: {metric}"
                    if len(segments) > 1:
                        label += f" ({n + 1})"
                    xs, ys = zip(*segment)
                    axis.plot(
                        xs,
                        ys,
                        color=f"C{color % 10}",
                        linestyle=LINESTYLES[style % len(LINESTYLES)],
                        marker="o" if len(xs) <= 40 else None,
                        markersize=3,
                        label=label,
                    )
        axis.set_title(f"{stage}: {panel}")
        axis.set_xlabel(xlabel)
        if panel == "learning rate":
            axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        axis.grid(alpha=0.3)
        _legend(axis)
    path = out / f"curves_{_slug(stage)}.png"
    figure.savefig(path)
    return path


MONITOR_METRIC = "pretrain/monitor_knn_top1"
PRETEXT_METRIC = "pretrain/val_top1"


def epoch_values(rows: list[dict], metric: str) -> list[tuple[float, float]]:
    """``(pretrain/epoch, value)`` of every row with both, sorted by epoch; an epoch logged
    twice (a resumed run redoes the epoch it was killed in) keeps its last value."""
    values: dict[float, float] = {}
    for row in rows:
        epoch, value = as_float(row.get("pretrain/epoch")), as_float(row.get(metric))
        if epoch is not None and value is not None:
            values[epoch] = value
    return sorted(values.items())


def plot_monitor(runs: list[RunData], out: Path) -> Path | None:
    """The online kNN monitor (``pretrain/monitor_knn_top1``) next to the pretext task's val
    top-1, per epoch: whether a better puzzle solver also makes better features. None when
    no run logged the monitor."""
    found = [(run, epoch_values(run.rows, MONITOR_METRIC)) for run in runs]
    found = [(run, monitor) for run, monitor in found if monitor]
    if not found:
        return None
    figure = _figure(6.5, 4.2)
    axis = figure.subplots()
    for color, (run, monitor) in enumerate(found):
        prefix = "" if len(runs) == 1 else f"{run.label}: "
        pretext = epoch_values(run.rows, PRETEXT_METRIC)
        for values, label, style in (
            (pretext, "pretext val top-1", "--"),
            (monitor, "kNN monitor top-1", "-"),
        ):
            if values:
                xs, ys = zip(*values)
                axis.plot(
                    xs,
                    ys,
                    color=f"C{color % 10}",
                    linestyle=style,
                    marker="o" if len(xs) <= 40 else None,
                    markersize=3,
                    label=prefix + label,
                )
    axis.set_xlabel("epoch")
    axis.set_ylabel("top-1")
    axis.set_title("pretraining: pretext accuracy and kNN monitor")
    axis.grid(alpha=0.3)
    _legend(axis)
    path = out / "pretrain_monitor.png"
    figure.savefig(path)
    return path


def selected_points(points: list[GridPoint]) -> list[GridPoint]:
    """The head the probe selects in each (evaluator, variant, layer): best val top-1, then
    lowest val loss, diverged heads never (the evaluator's own rule, from val alone)."""
    groups: dict[tuple[str, str, str], list[GridPoint]] = {}
    for point in points:
        if not point.diverged and "val_top1" in point.metrics:
            groups.setdefault((point.evaluator, point.variant, point.layer), []).append(point)

    def key(point: GridPoint) -> tuple[float, float]:
        loss = point.metrics.get("val_loss", math.inf)
        return (-point.metrics["val_top1"], loss if math.isfinite(loss) else math.inf)

    return [min(group, key=key) for group in groups.values()]


def plot_probe_grid(runs: list[RunData], evaluator: str, out: Path) -> Path | None:
    """Val top-1 against learning rate (log scale) for every head, pretrained vs random init,
    one panel per layer; test top-1 only for the head selected on val (a star): the other
    heads' test accuracies played no part and are not shown."""
    points = [(run, p) for run in runs for p in run.grid if p.evaluator == evaluator]
    points = [(run, p) for run, p in points if "val_top1" in p.metrics]
    if not points:
        return None
    layers = list(dict.fromkeys(p.layer for _, p in points))
    columns = min(3, len(layers))
    rows = math.ceil(len(layers) / columns)
    figure = _figure(5.5 * columns, 4.2 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, layer in zip(axes, layers):
        for color, run in enumerate(runs):
            mine = [p for r, p in points if r is run and p.layer == layer]
            lines: dict[tuple[str, float | None], list[tuple[float, float]]] = {}
            for point in mine:
                key = (point.variant, point.weight_decay)
                lines.setdefault(key, []).append((point.lr, point.metrics["val_top1"]))
            decays = {wd for _, wd in lines}
            for (variant, wd), values in sorted(lines.items(), key=lambda kv: str(kv[0])):
                xs, ys = zip(*sorted(values))
                label = variant if len(runs) == 1 else f"{run.label}: {variant}"
                if len(decays) > 1:
                    label += f", wd {wd:g}" if wd is not None else ""
                axis.plot(
                    xs,
                    ys,
                    color=f"C{color % 10}",
                    linestyle="-" if variant == PRETRAINED else "--",
                    marker="o" if variant == PRETRAINED else "s",
                    label=f"{label}: val",
                )
            for point in selected_points(mine):
                if "test_top1" not in point.metrics:
                    continue
                label = point.variant if len(runs) == 1 else f"{run.label}: {point.variant}"
                axis.plot(
                    [point.lr],
                    [point.metrics["test_top1"]],
                    linestyle="none",
                    color=f"C{color % 10}",
                    marker="*" if point.variant == PRETRAINED else "P",
                    markersize=13,
                    markeredgecolor="black",
                    label=f"{label}: test (selected on val)",
                )
        axis.set_xscale("log")
        axis.set_xlabel("learning rate")
        axis.set_ylabel("top-1")
        where = f"{evaluator}, layer {layer}" if layer else evaluator
        axis.set_title(f"{where}: val top-1 per learning rate")
        axis.grid(alpha=0.3)
        _legend(axis)
    for axis in axes[len(layers) :]:
        axis.set_visible(False)
    path = out / f"probe_lr_{_slug(evaluator)}.png"
    figure.savefig(path)
    return path


def plot_probe_layers(runs: list[RunData], evaluator: str, out: Path) -> Path | None:
    """Grouped bars per layer, pretrained vs random init, with 95% intervals as error bars:
    one panel per run."""
    from jigsawkit.tracking.probe_layers import probe_layer_tables

    found = [
        (run, t)
        for run in runs
        for t in probe_layer_tables(run.summary)
        if t.evaluator == evaluator
    ]
    if not found:
        return None
    width_per_layer = max(len(t.rows) for _, t in found)
    figure = _figure(max(5.0, 1.1 * width_per_layer + 2), 4.2 * len(found))
    axes = figure.subplots(len(found), 1, squeeze=False).ravel()
    for axis, (run, table) in zip(axes, found):
        centres = list(range(len(table.rows)))
        variants = [(PRETRAINED, "pretrained", "C0")]
        if any(row.random_init is not None for row in table.rows):
            variants.append((RANDOM_INIT, "random_init", "C1"))
        bar = 0.8 / len(variants)
        for n, (label, attribute, color) in enumerate(variants):
            estimates = [getattr(row, attribute) for row in table.rows]
            xs = [c + (n - (len(variants) - 1) / 2) * bar for c in centres]
            ys = [e.value if e is not None else math.nan for e in estimates]
            errors = [
                [
                    e.value - e.low if e is not None and e.low is not None else 0.0
                    for e in estimates
                ],
                [
                    e.high - e.value if e is not None and e.high is not None else 0.0
                    for e in estimates
                ],
            ]
            axis.bar(xs, ys, bar, yerr=errors, capsize=3, color=color, label=label)
        names = [row.layer for row in table.rows]
        axis.set_xticks(centres, [f"{n}*" if n == table.best.layer else n for n in names])
        axis.set_ylabel("test top-1")
        axis.set_xlabel("layer (* chosen on val; error bars: 95% intervals)")
        title = f"{evaluator}: test top-1 per layer"
        axis.set_title(title if len(runs) == 1 else f"{run.label}: {title}")
        axis.grid(alpha=0.3, axis="y")
        _legend(axis)
    path = out / f"probe_layers_{_slug(evaluator)}.png"
    figure.savefig(path)
    return path


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted keys (lists stay values)."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def finished_trials(sweep: SweepData) -> list[tuple[dict[str, Any], float, dict]]:
    """(flat params, metric, trial) of the trials with a finite metric, best first."""
    done = []
    for trial in sweep.trials:
        metric = as_float(trial.get("metric"))
        if metric is None or not math.isfinite(metric):
            continue
        done.append((flatten(trial.get("params") or {}), metric, trial))
    done.sort(key=lambda t: t[1], reverse=sweep.goal == "maximize")
    return done


def plot_sweep(sweep: SweepData, out: Path) -> Path | None:
    """The metric against each swept parameter, one panel per parameter; best marked."""
    done = finished_trials(sweep)
    params = sorted({k for flat, _, _ in done for k in flat})
    if not params:
        return None
    columns = min(3, len(params))
    rows = math.ceil(len(params) / columns)
    figure = _figure(4.5 * columns, 3.6 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    best = done[0]
    for axis, param in zip(axes, params):
        values = [(flat.get(param), metric) for flat, metric, _ in done if param in flat]
        numbers = [as_float(v) for v, _ in values]
        if all(n is not None for n in numbers):
            xs = numbers
            positive = [x for x in xs if x > 0]
            if len(positive) == len(xs) and max(xs) / min(xs) >= 100:
                axis.set_xscale("log")
            best_x = as_float(best[0].get(param))
        else:
            categories = sorted({json.dumps(v) for v, _ in values})
            xs = [categories.index(json.dumps(v)) for v, _ in values]
            axis.set_xticks(range(len(categories)), [c.strip('"') for c in categories])
            axis.set_xlim(-0.5, len(categories) - 0.5)
            best_x = categories.index(json.dumps(best[0][param])) if param in best[0] else None
        axis.scatter(xs, [m for _, m in values], color="C0", alpha=0.7, label="trials")
        if best_x is not None:
            axis.scatter([best_x], [best[1]], color="C3", marker="*", s=160, label="best")
        axis.set_xlabel(param)
        axis.set_ylabel(sweep.metric_name)
        axis.grid(alpha=0.3)
    for axis in axes[len(params) :]:
        axis.set_visible(False)
    axes[0].legend(fontsize="small")
    figure.suptitle(f"sweep {sweep.label}: {sweep.metric_name} ({sweep.goal}) per parameter")
    path = out / f"sweep_{_slug(sweep.label)}.png"
    figure.savefig(path)
    return path


# -- markdown ----------------------------------------------------------------------------


def _cell(value: Any) -> str:
    from jigsawkit.tracking.console import format_value

    if value is None:
        return "—"
    if isinstance(value, list | dict):
        value = json.dumps(value)
    return format_value(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join(" --- " for _ in header) + "|")
    lines.extend("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)
    return lines + [""]


def summary_table(runs: list[RunData]) -> list[str]:
    """One row per summary key, one column per run (per-layer keys are left to the layer
    tables)."""
    from jigsawkit.tracking.console import current_keys
    from jigsawkit.tracking.probe_layers import is_layer_key

    keys = sorted({k for run in runs for k in current_keys(run.summary) if not is_layer_key(k)})
    if not keys:
        return ["(no summary.json)", ""]
    return _table(
        ["key"] + [r.label for r in runs], [[k] + [r.summary.get(k) for r in runs] for k in keys]
    )


def probe_layer_section(runs: list[RunData], figures: list[tuple[str, Path]]) -> list[str]:
    """Per evaluator: the bar chart and, per run, the table of test top-1 per layer with
    paired-bootstrap 95% intervals."""
    from jigsawkit.tracking.probe_layers import format_estimate, probe_layer_tables

    lines: list[str] = []
    for evaluator, figure in figures:
        lines += [f"### {evaluator}", "", f"![{evaluator} per layer]({figure.name})", ""]
        for run in runs:
            for table in probe_layer_tables(run.summary):
                if table.evaluator != evaluator:
                    continue
                if len(runs) > 1:
                    lines += [f"`{run.label}`:", ""]
                shown = [(row.layer, row) for row in table.rows]
                if len(shown) > 1:  # each backbone at its layer best on val: the headline
                    shown.append((f"**best on val: {table.best.layer}**", table.best))
                rows = [
                    [
                        name,
                        format_estimate(row.pretrained),
                        format_estimate(row.random_init),
                        format_estimate(row.gain, signed=True),
                    ]
                    for name, row in shown
                ]
                lines += _table(["layer", "pretrained", "random init", "gain (points)"], rows)
    return lines


def config_differences(runs: list[RunData]) -> list[str]:
    flats = [flatten(run.config or {}) for run in runs]
    keys = sorted({k for flat in flats for k in flat})
    missing = object()
    differing = [
        k for k in keys if len({json.dumps(f.get(k, missing), default=str) for f in flats}) > 1
    ]
    if not differing:
        return ["The runs' configs are identical.", ""]
    return _table(
        ["key"] + [r.label for r in runs], [[k] + [f.get(k) for f in flats] for k in differing]
    )


def sweep_section(sweep: SweepData, figure: Path | None) -> list[str]:
    done = finished_trials(sweep)
    states: dict[str, int] = {}
    for trial in sweep.trials:
        state = str(trial.get("state", "unknown"))
        states[state] = states.get(state, 0) + 1
    counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    lines = [
        f"### Sweep `{sweep.label}`",
        "",
        f"`{sweep.path}`: {len(sweep.trials)} trials ({counts}); "
        f"metric `{sweep.metric_name}`, goal {sweep.goal}.",
        "",
    ]
    if figure is not None:
        lines += [f"![{sweep.label}: metric per parameter]({figure.name})", ""]
    if done:
        params = sorted({k for flat, _, _ in done for k in flat})
        rows = [
            [i + 1, metric] + [flat.get(p) for p in params]
            for i, (flat, metric, _) in enumerate(done[:MAX_TOP_TRIALS])
        ]
        lines += [f"Best {min(len(done), MAX_TOP_TRIALS)} trials:", ""]
        lines += _table(["rank", sweep.metric_name] + params, rows)
    return lines


def write_markdown(
    out: Path,
    runs: list[RunData],
    sweeps: list[SweepData],
    stage_figures: list[tuple[str, Path]],
    grid_figures: list[tuple[str, Path]],
    sweep_figures: dict[str, Path | None],
    layer_figures: list[tuple[str, Path]] | None = None,
    monitor_figure: Path | None = None,
) -> Path:
    lines = ["# jigsawkit report", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from:", ""]
    lines += [f"- `{item.label}`: `{item.path}`" for item in [*runs, *sweeps]]
    lines.append("")
    if runs:
        lines += ["## Summary", ""] + summary_table(runs)
        if len(runs) > 1:
            lines += ["## Config differences", ""] + config_differences(runs)
    if stage_figures:
        lines += ["## Curves", ""]
        for stage, figure in stage_figures:
            lines += [f"### {stage}", "", f"![{stage} curves]({figure.name})", ""]
    if monitor_figure is not None:
        lines += [
            "## Pretraining: pretext accuracy and kNN monitor",
            "",
            "Per epoch: the pretext task's val top-1 and the online kNN monitor's top-1 "
            "(`pretrain.monitor`: the current backbone's features on a small labelled subset).",
            "",
            f"![pretext accuracy and kNN monitor]({monitor_figure.name})",
            "",
        ]
    if layer_figures:
        lines += [
            "## Probe: test top-1 per layer, pretrained vs random init",
            "",
            "Percent, with 95% intervals from a paired bootstrap over the test images; "
            "the gain is in points. The top-level result is the layer chosen on val.",
            "",
        ]
        lines += probe_layer_section(runs, layer_figures)
    if grid_figures:
        lines += [
            "## Probe: val top-1 per learning rate, pretrained vs random-init",
            "",
            "Every head's val top-1; test top-1 only for the head selected on val.",
            "",
        ]
        for evaluator, figure in grid_figures:
            lines += [
                f"### {evaluator}",
                "",
                f"![{evaluator} per learning rate]({figure.name})",
                "",
            ]
    if sweeps:
        lines += ["## Sweeps", ""]
        for sweep in sweeps:
            lines += sweep_section(sweep, sweep_figures.get(sweep.label))
    configs = [run for run in runs if run.config_text]
    if configs:
        lines += ["## Resolved configs", ""]
        for run in configs:
            lines += [
                f"<details><summary>{run.label}: config.yaml</summary>",
                "",
                "```yaml",
                run.config_text.rstrip("\n"),
                "```",
                "",
                "</details>",
                "",
            ]
    from jigsawkit.atomic import atomic_write_text

    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


# -- entry point -------------------------------------------------------------------------


def _layer_evaluators(runs: list[RunData]) -> list[str]:
    from jigsawkit.tracking.probe_layers import probe_layer_tables

    return sorted({t.evaluator for run in runs for t in probe_layer_tables(run.summary)})


def build_report(directories: list[str | Path], out: str | Path) -> ReportResult:
    """Write figures and ``report.md`` for run/sweep ``directories`` into ``out``.

    Raises ``UserError`` (one line) for a missing directory or one that is neither a run
    nor a sweep directory.
    """
    paths = [Path(d) for d in directories]
    kinds = [directory_kind(p) for p in paths]
    labels = _labels(paths)
    runs = [load_run(p, lab) for p, lab, k in zip(paths, labels, kinds) if k == "run"]
    sweeps = [load_sweep(p, lab) for p, lab, k in zip(paths, labels, kinds) if k == "sweep"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    stages = sorted({stage for run in runs for stage in stage_series(run.rows)})
    stages.sort(key=lambda s: (not s.startswith("pretrain"), s))  # pretraining first
    stage_figures = [(s, f) for s in stages if (f := plot_stage_curves(runs, s, out)) is not None]
    evaluators = sorted({p.evaluator for run in runs for p in run.grid})
    grid_figures = [(e, f) for e in evaluators if (f := plot_probe_grid(runs, e, out)) is not None]
    layer_figures = [
        (e, f)
        for e in _layer_evaluators(runs)
        if (f := plot_probe_layers(runs, e, out)) is not None
    ]
    sweep_figures = {sweep.label: plot_sweep(sweep, out) for sweep in sweeps}
    monitor_figure = plot_monitor(runs, out)
    report = write_markdown(
        out,
        runs,
        sweeps,
        stage_figures,
        grid_figures,
        sweep_figures,
        layer_figures,
        monitor_figure,
    )
    figures = [f for _, f in stage_figures] + ([monitor_figure] if monitor_figure else [])
    figures += [f for _, f in layer_figures]
    figures += [f for _, f in grid_figures]
    figures += [f for f in sweep_figures.values() if f is not None]
    return ReportResult(report=report, figures=figures)

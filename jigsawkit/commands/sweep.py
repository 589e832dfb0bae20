"""``jigsawkit sweep FILE``: run, resume or join a hyperparameter sweep (W&B Sweeps, Optuna)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jigsawkit.commands.validate import add_experiment_options
from jigsawkit.errors import UserError

EXAMPLES = (
    "jigsawkit sweep experiments/quickstart_sweep.yaml",
    "jigsawkit sweep experiments/quickstart_sweep.yaml --out sweeps/qs --count 2",
    "jigsawkit sweep experiments/quickstart_sweep.yaml --out sweeps/qs       # resume it",
    "jigsawkit sweep --join sweeps/qs                                      # a second worker",
    "jigsawkit sweep experiments/quickstart_sweep.yaml --storage postgresql://me@db/sweeps",
    "jigsawkit sweep --join postgresql://me@db/sweeps                      # from any machine",
    "jigsawkit sweep experiments/probe_sweep.yaml --set strategy.mode=online",
    "jigsawkit sweep experiments/probe_sweep.yaml --set strategy.mode=online --sweep-id abc123",
    "jigsawkit sweep experiments/quickstart_sweep.yaml --set 'strategy={name: optuna}'",
)
NOTES = """\
The trials live in Optuna's RDB storage: optuna.db in the sweep folder, or --storage URL.
The sweep folder holds sweep.json, optuna.db, trials/<id>/ (one run directory per
trial), trials.jsonl, best.yaml (the best trial's experiment) and summary.json. See
docs/sweeps.md.
"""


HELP = "run a hyperparameter sweep (W&B Sweeps online or offline, Optuna)"

DESCRIPTION = (
    "Run the sweep a sweep file describes: trials of its experiment with "
    "parameters chosen by W&B's sweep engine (offline by default, or W&B's server) or "
    "by Optuna. An interrupted sweep resumes when run again with the same --out; "
    "more workers join it with --join."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", metavar="FILE", nargs="?", help="sweep YAML file (optional with --join)"
    )
    add_experiment_options(parser)
    parser.add_argument(
        "--out", metavar="SWEEP_DIR", help="the sweep folder (an existing one is resumed)"
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="keep the trials in this Optuna RDB storage (sqlite:///PATH, "
        "postgresql://USER@HOST/DB, mysql+pymysql://USER@HOST/DB) so that workers on other "
        "machines can --join it; default: optuna.db in the sweep folder",
    )
    parser.add_argument(
        "--join",
        metavar="SWEEP_DIR_OR_URL",
        help="work on an existing sweep: its folder, or the storage URL it lives in",
    )
    parser.add_argument(
        "--sweep-id",
        metavar="ID",
        help="online: join this W&B sweep as another agent; with a storage URL holding "
        "several sweeps: which one",
    )
    parser.add_argument(
        "--count", type=_positive, metavar="N", help="run at most N trials in this worker"
    )
    parser.add_argument("--no-progress", action="store_true", help="plain lines, no live table")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {value}")
    return value


# -- where the sweep lives --------------------------------------------------------------------


def _join_target(target: str, sweep_id: str | None, out: str | None) -> tuple[dict, Path, str]:
    """The sweep description (sweep.json content), folder and storage URL behind ``--join``.

    A storage URL is all a worker on another machine needs: the study holds the sweep's
    description (resolved sweep file, strategy, folder). Its folder is ``--out``, else
    the one the sweep was started in.
    """
    from jigsawkit.search.storage import (
        check_storage,
        open_storage,
        shown_url,
        study_names,
        sweep_info,
    )
    from jigsawkit.search.sweep_runner import read_sweep_info

    if "://" not in target:
        folder = Path(target)
        if not folder.is_dir():
            raise UserError(f"--join {target}: no such sweep folder")
        info = read_sweep_info(folder)
        if info is None:
            raise UserError(f"--join {target}: no sweep.json there; is it a sweep folder?")
        url = info.get("storage")
        if url:
            check_storage(url, must_exist=True, where=f"--join {target}: its storage")
        return info, Path(out) if out else folder, url
    check_storage(target, must_exist=True, where="--join")
    storage = open_storage(target, heartbeat_interval=None, create=False)
    names = study_names(storage)
    name = _pick(names, sweep_id, target)
    info = sweep_info(storage, name)
    folder = Path(out) if out else Path(info.get("sweep_dir") or ".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"--join {shown_url(target)}: cannot use the sweep's folder {folder} on this "
            f"machine ({error.strerror}); give this worker one with --out DIR"
        ) from None
    return info, folder, target


def _pick(names: list[str], sweep_id: str | None, target: str) -> str:
    if sweep_id is not None:
        if sweep_id not in names:
            raise UserError(
                f"--join {target}: no sweep '{sweep_id}' (it has: {', '.join(names) or 'none'})"
            )
        return sweep_id
    if len(names) != 1:
        raise UserError(
            f"--join {target}: it holds {len(names)} sweeps ({', '.join(names) or 'none'}); "
            "choose one with --sweep-id"
        )
    return names[0]


# -- the live table ---------------------------------------------------------------------------


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class TrialTable:
    """Shows trials as they run: a live rich table on a terminal, plain lines otherwise."""

    def __init__(self, spec: Any, interactive: bool):
        self.spec = spec
        self.interactive = interactive
        # constants are the same in every trial: not worth a column
        self.columns = [n for n in spec.parameters if n not in spec.constants]
        self.rows: dict[str, dict[str, Any]] = {}
        self.live: Any = None

    # hooks called by the strategies
    def on_start(self, record: Any) -> None:
        self.rows[record.id] = {
            "params": record.params,
            "state": "running",
            "metric": None,
            "step": None,
            "started": time.time(),
            "seconds": None,
        }
        if not self.interactive:
            print(f"trial {record.id} started: {self._params(record.params)}", flush=True)
        self._refresh()

    def on_report(self, trial_id: str, step: int, value: float) -> None:
        row = self.rows.get(trial_id)
        if row is not None:
            row["metric"], row["step"] = value, step
        self._refresh()

    def on_finish(self, record: Any) -> None:
        row = self.rows.setdefault(record.id, {"params": record.params, "started": time.time()})
        row.update(state=record.state, metric=record.metric)
        row["seconds"] = time.time() - row.get("started", time.time())
        if not self.interactive:
            metric = "-" if record.metric is None else f"{record.metric:.6g}"
            extra = f" ({record.error})" if record.error else ""
            print(
                f"trial {record.id} {record.state}: {self._params(record.params)} -> "
                f"{self.spec.metric_name}={metric} [{row['seconds']:.1f}s]{extra}",
                flush=True,
            )
        self._refresh()

    def _params(self, params: dict) -> str:
        return ", ".join(
            f"{k}={_format_value(v)}" for k, v in params.items() if k not in self.spec.constants
        )

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(
            title=f"sweep: {self.spec.metric_name} ({self.spec.goal})", title_justify="left"
        )
        table.add_column("trial")
        for name in self.columns:
            table.add_column(name, justify="right")
        table.add_column(self.spec.metric_name.split(".")[-1], justify="right")
        table.add_column("step", justify="right")
        table.add_column("state")
        table.add_column("time", justify="right")
        best = None
        for trial_id, row in self.rows.items():
            if row["state"] == "finished" and row["metric"] is not None:
                if best is None or self.spec.better(row["metric"], self.rows[best]["metric"]):
                    best = trial_id
        for trial_id, row in self.rows.items():
            seconds = row["seconds"] if row["seconds"] is not None else time.time() - row["started"]
            style = "bold green" if trial_id == best else None
            table.add_row(
                trial_id,
                *(_format_value(row["params"].get(n, "")) for n in self.columns),
                "" if row["metric"] is None else f"{row['metric']:.4g}",
                "" if row["step"] is None else str(row["step"]),
                row["state"],
                f"{seconds:.0f}s",
                style=style,
            )
        return table

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._table())

    @contextlib.contextmanager
    def running(self, session: Any) -> Iterator[None]:
        print(f"sweep {session.sweep_id} in {session.sweep_dir}", file=sys.stderr, flush=True)
        if not self.interactive:
            yield
            return
        from rich.live import Live

        from jigsawkit.progress import progress_bars

        # One live display at a time: the trials' own progress bars stay off meanwhile.
        try:
            with progress_bars(False), Live(self._table(), refresh_per_second=2) as live:
                self.live = live
                yield
        finally:
            self.live = None


def print_result(result: Any) -> None:
    summary = result.summary
    folder = result.session.sweep_dir
    print(
        f"sweep {summary['sweep.id']}: {summary['sweep.trials']} trials "
        f"({summary['sweep.finished']} finished, {summary['sweep.stopped']} stopped, "
        f"{summary['sweep.failed']} failed) in {folder}"
    )
    if summary.get("sweep.best_trial") is None:
        print("no trial finished: no best trial")
        return
    test_keys = [k for k in summary if k.startswith("sweep.best_test_")]
    for key in test_keys:
        print(f"best trial, held-out test: {key.removeprefix('sweep.best_')} = {summary[key]:.4f}")
    if not test_keys:
        print("best trial: its run has no held-out test metric")
    print(
        f"best trial {summary['sweep.best_trial']} (selected on {summary['sweep.metric']} "
        f"= {summary['sweep.best_value']:.6g}): "
        + ", ".join(f"{k}={_format_value(v)}" for k, v in summary["sweep.best_params"].items())
    )
    print(f"its experiment: {folder / 'best.yaml'}  (jigsawkit run {folder / 'best.yaml'})")


# -- the command ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from jigsawkit.paths import check_writable_dir
    from jigsawkit.progress import is_interactive
    from jigsawkit.rundir import new_run_dir
    from jigsawkit.search.storage import check_storage, shown_url
    from jigsawkit.search.sweep_file import load_sweep_file
    from jigsawkit.search.sweep_runner import (
        build_strategy,
        compare_specs,
        read_sweep_info,
        run_sweep,
    )
    from jigsawkit.search.sweep_spec import SweepSpec

    if not args.file and not args.join:
        raise UserError(
            "jigsawkit sweep: give a sweep FILE, or --join SWEEP_DIR_OR_URL (see --help)"
        )
    if args.join and args.out and "://" not in args.join:
        raise UserError("--join DIR works in DIR itself; --out goes only with a storage URL")
    if args.join and args.storage:
        raise UserError("--join names the sweep's storage already; leave out --storage")
    spec = None
    if args.file:
        spec = load_sweep_file(args.file, overrides=args.overrides, plugin_dirs=args.plugins)
    elif args.overrides:
        raise UserError("--set needs the sweep FILE (a joined sweep is used as it was started)")
    info: dict | None = None
    if args.join:
        info, sweep_dir, storage = _join_target(args.join, args.sweep_id, args.out)
        if spec is not None:
            compare_specs(info["spec"], spec, f"--join {args.join}")
        spec = SweepSpec.from_record(info["spec"])
        sweep_id = info.get("id")
    else:
        assert spec is not None
        sweep_dir = Path(args.out) if args.out else new_run_dir(spec.output_dir, spec.name)
        check_writable_dir(sweep_dir, "--out" if args.out else "output_dir")
        info = read_sweep_info(sweep_dir)
        storage = args.storage or spec.strategy.get("storage")
        if info is not None:
            compare_specs(info["spec"], spec, str(sweep_dir))
            if args.sweep_id and args.sweep_id != info.get("id"):
                raise UserError(
                    f"{sweep_dir} holds sweep {info.get('id')}, not {args.sweep_id}; "
                    "use another --out folder"
                )
            stored = info.get("storage")
            if args.storage and stored and shown_url(args.storage) != stored:
                raise UserError(
                    f"{sweep_dir} keeps its trials in {stored}, not {shown_url(args.storage)}; "
                    "leave out --storage to resume it"
                )
            storage = storage or stored
            print(f"resuming sweep {info.get('id')} in {sweep_dir}", file=sys.stderr)
        sweep_id = args.sweep_id or (info or {}).get("id")
        if storage:  # a server or a file elsewhere: check it before the sweep folder exists
            check_storage(storage)
    strategy = build_strategy(spec)
    strategy.check_credentials()  # online without a key: one line, now
    interactive = is_interactive() and not args.no_progress
    table = TrialTable(spec, interactive)
    result = run_sweep(
        spec,
        sweep_dir,
        sweep_id=sweep_id,
        info=info,
        count=args.count,
        progress=not args.no_progress,
        hooks=table,
        strategy=strategy,
        storage=storage,
    )
    print_result(result)
    return 0

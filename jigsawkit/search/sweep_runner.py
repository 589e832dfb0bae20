"""Running a sweep: trials, the experiment behind each trial, the sweep folder and outputs.

A *trial function* takes a :class:`TrialContext` (parameters, run folder, a ``report``
callback) and returns a :class:`TrialOutcome`. Strategies call it; they never run
experiments themselves, so tests drive them with a fake trial function.

:class:`ExperimentTrials` is the real trial function: it builds the trial's experiment
from the sweep file and runs it with :func:`jigsawkit.runner.run_experiment`. When every
swept key is under ``evaluate`` (a *probe sweep*), the backbone is pretrained once in
``<sweep dir>/base`` (or loaded from the experiment's ``checkpoint``) and handed to every
trial, whose frozen features then come from the probe's on-disk feature cache.

Per-epoch metrics reach the strategy through a callback the runner gives each trial
(``run_experiment(callbacks=[...])``, see ``jigsawkit.search.trial_callbacks``); when the
strategy stops a trial (hyperband, pruning), that callback asks the run to end at that
epoch, the run returns with ``run.state: stopped`` and the trial is recorded ``stopped``
with its last reported value.

Sweep folder::

    sweep.json        the sweep (id, strategy, storage URL, resolved sweep file): --join reads it
    sweep.yaml        the resolved sweep file, readable (jigsawkit report reads its metric)
    optuna.db         the trials (both strategies), unless the storage is a database server
    base/             the backbone pretrained once for a probe sweep
    trials/<id>/      each trial's run directory
    trials.jsonl      one line per ended trial: {"params", "metric", "state", "run_dir"}
    best.yaml         the best trial's experiment (jigsawkit run/validate accept it)
    summary.json      sweep.best_value, sweep.best_params, sweep.best_test_top1, ...
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jigsawkit.atomic import atomic_write_text
from jigsawkit.errors import UserError, one_line
from jigsawkit.search.storage import TrialRecord, default_worker_id, file_lock
from jigsawkit.search.sweep_spec import SweepSpec

SWEEP_JSON = "sweep.json"


class TrialStopped(Exception):
    """Raised by :meth:`TrialContext.report` in a hand-written trial function when the
    strategy stopped the trial (hyperband, pruning); the trial is recorded ``stopped``."""


@dataclass
class TrialContext:
    """What a trial function gets: its parameters, its run folder and ``report``.

    ``record(step, value)`` records the sweep metric at an epoch and returns the
    strategy's reason to stop the trial there (``None``: go on); ``report(step, value)``
    does the same but raises :class:`TrialStopped` with that reason. ``reporter`` is the
    strategy's side: it stores the value and returns a reason to stop, or ``None``.
    """

    trial_id: str
    params: dict[str, Any]
    run_dir: Path
    reporter: Callable[[int, float], str | None] = field(
        default=lambda step, value: None, repr=False
    )
    history: list[tuple[int, float]] = field(default_factory=list)

    def record(self, step: int, value: float) -> str | None:
        self.history.append((int(step), float(value)))
        return self.reporter(int(step), float(value))

    def report(self, step: int, value: float) -> None:
        reason = self.record(step, value)
        if reason is not None:
            raise TrialStopped(reason)

    @property
    def last_value(self) -> float | None:
        return self.history[-1][1] if self.history else None


@dataclass
class TrialOutcome:
    """How a trial ended: ``finished`` (with ``metric``), ``stopped`` or ``failed``."""

    metric: float | None
    summary: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    state: str = "finished"
    error: str | None = None


TrialFunction = Callable[[TrialContext], TrialOutcome]


def execute_trial(function: TrialFunction, ctx: TrialContext) -> TrialOutcome:
    """Run one trial; a stop or a failure becomes an outcome (Ctrl-C propagates)."""
    run_dir = ctx.run_dir if ctx.run_dir.exists() else None
    try:
        outcome = function(ctx)
    except TrialStopped as stop:
        return TrialOutcome(
            metric=ctx.last_value,
            run_dir=ctx.run_dir if ctx.run_dir.exists() else run_dir,
            state="stopped",
            error=str(stop) or None,
        )
    except Exception as error:  # one trial failing must not end the sweep
        user_error = isinstance(error, UserError)  # its whole message is for the user
        if ctx.run_dir.exists():
            atomic_write_text(ctx.run_dir / "error.txt", traceback.format_exc())
        return TrialOutcome(
            metric=None,
            run_dir=ctx.run_dir if ctx.run_dir.exists() else None,
            state="failed",
            error=one_line(error, first_line=not user_error, typed=not user_error),
        )
    if outcome.state == "finished" and outcome.metric is None:
        outcome.state = "failed"
        outcome.error = outcome.error or "the trial reported no metric"
    return outcome


def run_worker(
    claim: Callable[[], Any],
    run_one: Callable[[Any], None],
    running: Callable[[], bool],
    count: int | None,
    poll_s: float,
) -> None:
    """One worker's loop: claim a trial, run it, until ``count`` trials or the sweep's end.

    When nothing is left to claim but trials still run elsewhere, the worker waits: one
    may belong to a dead worker, and once its heartbeat is stale the next claim re-runs it.
    """
    done = 0
    while count is None or done < count:
        claimed = claim()
        if claimed is None:
            if not running():
                return
            time.sleep(poll_s)
            continue
        done += 1
        run_one(claimed)


# -- the sweep folder -----------------------------------------------------------------------


@dataclass
class SweepSession:
    """One worker's view of a sweep: the spec, the folder, the id and its callbacks."""

    spec: SweepSpec
    sweep_dir: Path
    sweep_id: str = ""
    worker: str = field(default_factory=default_worker_id)
    info: dict = field(default_factory=dict)
    storage_url: str | None = None  # None: a SQLite file in the sweep folder
    on_start: Callable[[TrialRecord], None] = field(default=lambda record: None, repr=False)
    on_report: Callable[[str, int, float], None] = field(
        default=lambda trial_id, step, value: None, repr=False
    )
    on_finish: Callable[[TrialRecord], None] = field(default=lambda record: None, repr=False)

    def trial_dir(self, trial_id: str) -> Path:
        return self.sweep_dir / "trials" / str(trial_id)

    def fresh_trial_dir(self, trial_id: str) -> Path:
        """The trial's run folder, free for a new attempt: the folder of an earlier one (a
        dead worker's, an interrupted one) is kept beside it as ``<id>.attempt<k>``."""
        path = self.trial_dir(trial_id)
        if path.exists():
            k = 1
            while path.with_name(f"{path.name}.attempt{k}").exists():
                k += 1
            path.rename(path.with_name(f"{path.name}.attempt{k}"))
        return path

    def choose_storage(self, configured: str | None) -> str:
        """The storage URL this worker uses: the one the sweep already has (``--join``), the
        strategy's configured one, or a SQLite file in the sweep folder."""
        from jigsawkit.search.storage import default_storage_url

        self.storage_url = self.storage_url or configured or default_storage_url(self.sweep_dir)
        return self.storage_url

    def record_opened(self) -> None:
        """Name a new sweep (``<name>-<8 hex>``) unless it has an id, and write ``sweep.json``
        with its strategy and storage, what ``--join`` reads."""
        import uuid

        from jigsawkit.search.storage import shown_url

        if not self.sweep_id:
            self.sweep_id = f"{self.spec.name}-{uuid.uuid4().hex[:8]}"
        self.write_info(
            id=self.sweep_id,
            strategy=self.spec.strategy,
            storage=shown_url(self.storage_url or ""),
            sweep_dir=str(self.sweep_dir.resolve()),
        )

    def write_info(self, **values: Any) -> None:
        from jigsawkit.rundir import write_json

        self.info.update(values)
        self.info.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.info["spec"] = self.spec.to_record()
        write_json(self.sweep_dir / SWEEP_JSON, self.info)
        if not (self.sweep_dir / "sweep.yaml").exists():
            from jigsawkit.config.experiment import dump_yaml

            # The resolved sweep file, for people and for `jigsawkit report`.
            atomic_write_text(self.sweep_dir / "sweep.yaml", dump_yaml(self.spec.as_dict()))


def read_sweep_info(sweep_dir: Path) -> dict | None:
    path = Path(sweep_dir) / SWEEP_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: cannot read the sweep description: {error}") from None


def compare_specs(stored: dict, spec: SweepSpec, where: str) -> None:
    """A sweep resumed or joined with a sweep file must be the same sweep."""
    mine = json.loads(json.dumps(spec.to_record(), default=str))
    keys = ("experiment", "sweep", "strategy")
    differing = [k for k in keys if stored.get(k) != mine.get(k)]
    if differing:
        raise UserError(
            f"{where} holds a different sweep (differs in: {', '.join(differing)}); "
            "use the same file and --set options, or another --out folder"
        )


# -- the experiment behind a trial ----------------------------------------------------------


class ExperimentTrials:
    """The trial function that runs the sweep file's experiment with the trial's parameters.

    ``online``: the trial runs inside a W&B agent's run, so the experiment's own ``wandb``
    trackers are removed and every metric goes to that run instead. Offline, with
    ``log_trials``, each trial is an offline W&B run grouped by the sweep id.
    """

    def __init__(
        self,
        spec: SweepSpec,
        session: SweepSession,
        online: bool = False,
        log_trials: bool = True,
        project: str | None = None,
        entity: str | None = None,
        progress: bool = True,
    ):
        self.spec, self.session = spec, session
        self.online, self.log_trials = online, log_trials
        self.project, self.entity = project, entity
        self.progress = progress
        self.backbone: Any = None
        self.prepared = False

    # -- backbone, once --------------------------------------------------------------------

    def prepare(self) -> None:
        """For a probe sweep: pretrain the backbone once (or load the checkpoint)."""
        if self.prepared:
            return
        self.prepared = True
        if not self.spec.probe_only:
            return
        from jigsawkit import load_feature_extractor

        checkpoint = self.spec.base_experiment().get("checkpoint")
        if checkpoint:
            self.backbone = load_feature_extractor(checkpoint)
            return
        base_dir = self.session.sweep_dir / "base"
        with file_lock(self.session.sweep_dir / ".base.lock"):
            export = _finished_export(base_dir)
            if export is None:
                export = self._pretrain_base(base_dir)
        self.backbone = load_feature_extractor(export)

    def _pretrain_base(self, base_dir: Path) -> Path:
        from jigsawkit.runner import run_experiment

        data = self.spec.trial_data(self.spec.constants)
        data["evaluate"] = []
        trackers = data.get("trackers", self.spec.experiment.get("trackers") or [])
        data["trackers"] = self._trackers(trackers, "base")
        config = self.spec.validated(data)
        resume = None
        if (base_dir / "config.yaml").exists() and (base_dir / "checkpoints" / "last.pt").exists():
            resume = base_dir
        print(f"sweep: pretraining the backbone once in {base_dir}", file=sys.stderr, flush=True)
        result = run_experiment(
            config, out=None if resume else base_dir, resume=resume, progress=self.progress
        )
        export = _finished_export(Path(result.run_dir))
        if export is None:
            raise UserError(f"{base_dir}: the base run exported no feature extractor")
        return export

    # -- one trial -------------------------------------------------------------------------

    def _trackers(self, trackers: list, label: str) -> list[dict]:
        """The trial's trackers: W&B runs grouped by the sweep."""
        out: list[dict] = []
        has_wandb = False
        for tracker in trackers:
            selection = {"name": tracker} if isinstance(tracker, str) else dict(tracker)
            if selection.get("name") == "wandb":
                if self.online or not self.log_trials:
                    continue  # online: the agent's run gets the metrics (see _online_*)
                has_wandb = True
                if selection.get("mode") != "disabled":
                    selection["mode"] = "offline"
                selection["group"] = self.session.sweep_id
                selection["tags"] = list(dict.fromkeys([*selection.get("tags", []), label]))
                if _tracker_accepts("wandb", "run_name"):
                    selection["run_name"] = f"{self.session.sweep_id}-{label}"
            out.append(selection)
        if not has_wandb and self.log_trials and not self.online and _has_tracker("wandb"):
            selection = {
                "name": "wandb",
                "mode": "offline",
                "group": self.session.sweep_id,
                "tags": [label],
            }
            if self.project:
                selection["project"] = self.project
            if _tracker_accepts("wandb", "run_name"):
                selection["run_name"] = f"{self.session.sweep_id}-{label}"
            out.append(selection)
        return out

    def __call__(self, ctx: TrialContext) -> TrialOutcome:
        from jigsawkit.runner import run_experiment
        from jigsawkit.search.trial_callbacks import SweepMetricReporter, WandbRunForwarder

        self.prepare()
        data = self.spec.trial_data(ctx.params)
        forwarder = WandbRunForwarder() if self.online else None
        callbacks = [SweepMetricReporter(ctx, self.spec.metric_name)]
        callbacks += [forwarder] if forwarder is not None else []
        trackers = data.get("trackers", self.spec.experiment.get("trackers") or [])
        data["trackers"] = self._trackers(trackers, ctx.trial_id)
        config = self.spec.validated(data)
        result = run_experiment(
            config,
            out=ctx.run_dir,
            progress=self.progress,
            backbone_override=self.backbone,
            callbacks=callbacks,
        )
        summary = dict(result.summary)
        if forwarder is not None:
            forwarder.summary(summary)
        if summary.get("run.state") == "stopped":  # ended at an epoch (the strategy's stop)
            return TrialOutcome(
                metric=ctx.last_value,
                summary=summary,
                run_dir=Path(result.run_dir),
                state="stopped",
                error=summary.get("run.stop_reason"),
            )
        value = summary.get(self.spec.metric_name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            keys = ", ".join(sorted(k for k in summary if k.startswith(("probe.", "pretrain."))))
            raise UserError(
                f"the trial's summary has no number '{self.spec.metric_name}' "
                f"(it has: {keys or 'nothing'}); check sweep.metric.name"
            )
        return TrialOutcome(metric=float(value), summary=summary, run_dir=Path(result.run_dir))


def _has_tracker(name: str) -> bool:
    from jigsawkit.registry import registry

    return name in registry("tracker")


def _tracker_accepts(name: str, key: str) -> bool:
    from jigsawkit.registry import registry

    trackers = registry("tracker")
    return name in trackers and key in trackers.get(name).params_schema.get("properties", {})


def _finished_export(run_dir: Path) -> Path | None:
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        return None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    export = summary.get("pretrain.export_path")
    if not export or "run.wall_seconds" not in summary:
        return None
    path = Path(export)
    if not path.is_absolute() and not path.exists():
        path = run_dir / path.name
    return path if path.exists() else None


# -- outputs --------------------------------------------------------------------------------


def best_trial(records: list[TrialRecord], spec: SweepSpec) -> TrialRecord | None:
    """The finished trial with the best metric (stopped and failed trials never win)."""
    best = None
    for record in records:
        if record.state != "finished" or record.metric is None:
            continue
        if best is None or spec.better(record.metric, best.metric):
            best = record
    return best


def held_out_metrics(spec: SweepSpec, summary: dict) -> dict[str, Any]:
    """The held-out test figures of a trial's run, next to the selection metric."""
    out: dict[str, Any] = {}
    parts = spec.metric_name.split(".")
    if len(parts) >= 3 and parts[0] == "probe":
        prefix = ".".join(parts[:-1])
        last = parts[-1]
        test_name = last.replace("val_", "test_", 1) if last.startswith("val_") else None
        if test_name and f"{prefix}.{test_name}" in summary:
            out[f"sweep.best_{test_name}"] = summary[f"{prefix}.{test_name}"]
        if f"{prefix}.test_top1" in summary:
            out["sweep.best_test_top1"] = summary[f"{prefix}.test_top1"]
    if "sweep.best_test_top1" not in out and "probe.linear_probe.test_top1" in summary:
        out["sweep.best_test_top1"] = summary["probe.linear_probe.test_top1"]
    return out


def append_trial_line(sweep_dir: Path, record: TrialRecord, spec: SweepSpec) -> None:
    """One line per ended trial; appends are atomic enough for lines this short."""
    row = {**record.as_line(), "metric_name": spec.metric_name, "goal": spec.goal}
    line = json.dumps(row, sort_keys=True, default=str) + "\n"
    path = Path(sweep_dir) / "trials.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def write_outputs(session: SweepSession, records: list[TrialRecord]) -> dict[str, Any]:
    """``best.yaml`` and ``summary.json`` from every trial of the sweep (all workers)."""
    from jigsawkit.config.experiment import dump_yaml
    from jigsawkit.rundir import write_json

    spec = session.spec
    states = [r.state for r in records]
    summary: dict[str, Any] = {
        "sweep.id": session.sweep_id,
        "sweep.metric": spec.metric_name,
        "sweep.goal": spec.goal,
        "sweep.method": spec.method,
        "sweep.strategy": spec.strategy.get("name"),
        "sweep.trials": len(records),
        "sweep.finished": states.count("finished"),
        "sweep.failed": states.count("failed"),
        "sweep.stopped": states.count("stopped"),
        "sweep.best_value": None,
        "sweep.best_params": None,
        "sweep.best_run_dir": None,
        "sweep.best_trial": None,
    }
    best = best_trial(records, spec)
    if best is not None:
        summary.update(
            {
                "sweep.best_value": best.metric,
                "sweep.best_params": best.params,
                "sweep.best_run_dir": best.run_dir,
                "sweep.best_trial": best.id,
            }
        )
        summary.update(held_out_metrics(spec, best.summary))
        experiment = spec.trial_experiment(best.params)
        header = [
            f"# best trial {best.id} of sweep {session.sweep_id}: "
            f"{spec.metric_name} = {best.metric:.6g} ({spec.goal})",
            "# parameters: " + ", ".join(f"{k}={v}" for k, v in best.params.items()),
            f"# its run: {best.run_dir}",
        ]
        base_export = _finished_export(session.sweep_dir / "base")
        if spec.probe_only and base_export is not None:
            header.append(
                f"# backbone pretrained once in {session.sweep_dir / 'base'}; to reuse it: "
                f"--set checkpoint={base_export.resolve()} --set pretrain=null"
            )
        atomic_write_text(
            session.sweep_dir / "best.yaml", "\n".join(header) + "\n" + dump_yaml(experiment)
        )
    write_json(session.sweep_dir / "summary.json", summary)
    return summary


# -- the whole sweep ------------------------------------------------------------------------


@dataclass
class SweepResult:
    """What a worker leaves behind: the session, every trial (all workers), the summary."""

    session: SweepSession
    records: list[TrialRecord]
    summary: dict[str, Any]

    @property
    def best(self) -> TrialRecord | None:
        return best_trial(self.records, self.session.spec)


def build_strategy(spec: SweepSpec) -> Any:
    """The search strategy the sweep file selects, built from the registry and checked
    against ``jigsawkit.contracts.SearchStrategy``."""
    from jigsawkit.contracts import check_component
    from jigsawkit.registry import registry

    selection = spec.strategy
    params = {k: v for k, v in selection.items() if k != "name"}
    built = registry("search").build(selection["name"], **params)
    return check_component("search", built, selection["name"])


def run_sweep(
    spec: SweepSpec,
    sweep_dir: str | Path,
    *,
    sweep_id: str | None = None,
    info: dict | None = None,
    count: int | None = None,
    trial_function: TrialFunction | None = None,
    progress: bool = True,
    hooks: Any = None,
    worker: str | None = None,
    strategy: Any = None,
    storage: str | None = None,
) -> SweepResult:
    """Run (or resume, or join) a sweep in ``sweep_dir``; write its outputs there.

    ``info``: the sweep's ``sweep.json`` when resuming or joining. ``storage``: the
    storage URL (default: the strategy's ``storage``, else a SQLite file in
    ``sweep_dir``); check it first with :func:`~jigsawkit.search.storage.check_storage`.
    ``trial_function``:
    replaces the experiment trials (tests). ``hooks``: an object with ``on_start``,
    ``on_report``, ``on_finish`` and optionally ``running()`` (a context manager around
    the trials, e.g. a live table).
    """
    from jigsawkit.search.sweep_spec import check_runnable

    strategy = strategy or build_strategy(spec)
    strategy.check_credentials()
    if not strategy.online:
        check_runnable(spec, count)
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    info = dict(info or {})
    session = SweepSession(
        spec=spec,
        sweep_dir=sweep_dir,
        sweep_id=sweep_id or info.get("id", ""),
        worker=worker or default_worker_id(),
        info=info,
        storage_url=storage or spec.strategy.get("storage"),
    )

    def on_finish(record: TrialRecord) -> None:
        append_trial_line(sweep_dir, record, spec)
        if hooks is not None:
            hooks.on_finish(record)

    if hooks is not None:
        session.on_start = hooks.on_start
        session.on_report = hooks.on_report
    session.on_finish = on_finish
    strategy.open(session)
    function = trial_function
    if function is None:
        function = ExperimentTrials(spec, session, progress=progress, **strategy.trial_options())
        function.prepare()  # pretrain the shared backbone before the trial table starts
    running = getattr(hooks, "running", None)
    with running(session) if running else contextlib.nullcontext():
        strategy.run(session, function, count)
    records = strategy.records(session)
    summary = write_outputs(session, records)
    return SweepResult(session=session, records=records, summary=summary)

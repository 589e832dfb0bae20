"""The ``optuna`` search strategy: the sweep file's W&B parameters, searched by Optuna.

- Samplers: ``tpe`` (with the constant liar, for parallel workers), ``grid``, ``random``;
  by default the one matching ``sweep.method`` (bayes -> tpe).
- Parameters convert from W&B's format: ``values`` -> categorical, ``value`` -> fixed,
  ``uniform`` -> float, ``log_uniform_values`` -> float on a log scale, ``int_uniform``
  -> int, ``q_uniform`` -> float (or int) with a step, ``q_log_uniform_values`` -> log
  float rounded to ``q``. Other W&B distributions have no Optuna counterpart and are
  refused when the sweep file is validated.
- Storage: the sweep's study in Optuna's RDB storage (:mod:`jigsawkit.search.storage`), by
  default a SQLite file in the sweep folder; a server URL (``postgresql://user@host/db``)
  lets workers on many machines share it. Workers send heartbeats; a trial of a dead
  worker is marked failed and queued again (``RetryHeartbeatStaleTrialCallback``), as is
  a trial interrupted with Ctrl-C; the copy keeps the trial's id.
- Pruning: per-epoch ``trial.report`` and ``trial.should_prune`` with ``HyperbandPruner``
  or ``MedianPruner`` (by default hyperband when ``sweep.early_terminate`` asks for it).
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

from jigsawkit.errors import UserError
from jigsawkit.json_values import jsonable
from jigsawkit.search.storage import (
    TrialRecord,
    fail_stale_trials,
    open_storage,
    open_study,
    outcome_attrs,
    records_from_trials,
    running_trial,
    sweep_lock,
    trial_number,
)
from jigsawkit.search.sweep_runner import (
    SweepSession,
    TrialContext,
    TrialFunction,
    execute_trial,
    run_worker,
)

SAMPLER_FOR_METHOD = {"bayes": "tpe", "grid": "grid", "random": "random"}


# -- W&B parameters -> Optuna ----------------------------------------------------------------


def _primitive(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def convert_parameter(name: str, config: dict, grid: bool = False) -> tuple:
    """One W&B parameter as an Optuna search-space entry; ValueError when there is none.

    Entries: ``("constant", value)``, ``("categorical", choices, encoded)``,
    ``("float", low, high, log, step, round_q)``, ``("int", low, high, step)``.
    Non-primitive choices (lists, mappings) are JSON-encoded for Optuna's storage.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sweeps.params import HyperParameter

    try:
        param = HyperParameter(name, dict(config))
    except Exception as error:
        raise ValueError(f"not a W&B parameter: {error}") from None
    kind, cfg = param.type, param.config
    if kind == HyperParameter.CONSTANT:
        return ("constant", cfg["value"])
    if kind in (HyperParameter.CATEGORICAL, HyperParameter.CATEGORICAL_PROB):
        return _categorical(cfg["values"])
    if kind == HyperParameter.INT_UNIFORM:
        if grid:
            return _categorical(list(range(cfg["min"], cfg["max"] + 1)))
        return ("int", int(cfg["min"]), int(cfg["max"]), 1)
    if kind == HyperParameter.Q_UNIFORM:
        low, high, q = cfg["min"], cfg["max"], cfg["q"]
        if grid:
            import numpy as np

            return _categorical(np.arange(low, high, q).tolist())
        if all(isinstance(v, int) for v in (low, high, q)):
            return ("int", low, high, q)
        return ("float", float(low), float(high), False, float(q), None)
    if grid:
        raise ValueError(
            "grid sampling needs `values`, `value`, int_uniform or q_uniform, found "
            f"{kind.removeprefix('param_')}"
        )
    if kind == HyperParameter.UNIFORM:
        return ("float", float(cfg["min"]), float(cfg["max"]), False, None, None)
    if kind == HyperParameter.LOG_UNIFORM_V2:
        return ("float", float(cfg["min"]), float(cfg["max"]), True, None, None)
    if kind == HyperParameter.LOG_UNIFORM_V1:
        return ("float", math.exp(cfg["min"]), math.exp(cfg["max"]), True, None, None)
    if kind == HyperParameter.Q_LOG_UNIFORM_V2:
        return ("float", float(cfg["min"]), float(cfg["max"]), True, None, cfg["q"])
    raise ValueError(
        f"Optuna has no counterpart of W&B's {config.get('distribution', kind)!r}; use values, "
        "uniform, log_uniform_values, int_uniform, q_uniform or q_log_uniform_values"
    )


def _categorical(values: list) -> tuple:
    if all(_primitive(v) for v in values):
        return ("categorical", list(values), False)
    return ("categorical", [json.dumps(v, sort_keys=True) for v in values], True)


def convert_space(parameters: dict[str, dict], grid: bool = False) -> dict[str, tuple]:
    """Every parameter converted (UserError naming the first that cannot be)."""
    space = {}
    for name, config in parameters.items():
        try:
            space[name] = convert_parameter(name, config, grid=grid)
        except ValueError as error:
            raise UserError(f"sweep.parameters.{name}: {error}") from None
    return space


def sampler_name(strategy: dict, method: str) -> str:
    return strategy.get("sampler") or SAMPLER_FOR_METHOD.get(method, "tpe")


def _suggest(trial: Any, name: str, entry: tuple) -> Any:
    kind = entry[0]
    if kind == "constant":
        return entry[1]
    if kind == "categorical":
        value = trial.suggest_categorical(name, entry[1])
        return json.loads(value) if entry[2] else value
    if kind == "int":
        return trial.suggest_int(name, entry[1], entry[2], step=entry[3])
    _, low, high, log, step, round_q = entry
    value = trial.suggest_float(name, low, high, log=log, step=step)
    if round_q:
        value = round(value / round_q) * round_q
        if isinstance(round_q, int):
            value = int(value)
    return value


# -- the strategy ------------------------------------------------------------------------


class OptunaStrategy:
    """Optuna study per sweep: a sampler, a pruner, an RDB storage shared by workers."""

    online = False
    poll_s = 2.0

    def __init__(
        self,
        *,
        sampler: str | None,
        pruner: str | None,
        storage: str | None,
        seed: int | None,
        heartbeat_interval: int,
        grace_period: int,
        max_retry: int | None,
    ):
        self.sampler, self.pruner, self.storage_url, self.seed = sampler, pruner, storage, seed
        self.heartbeat = (heartbeat_interval, grace_period, max_retry)
        self.study: Any = None
        self.storage: Any = None
        self.space: dict[str, tuple] = {}

    def trial_options(self) -> dict[str, Any]:
        return {"online": False, "log_trials": True, "project": None, "entity": None}

    def check_credentials(self) -> None:
        pass

    # -- open ------------------------------------------------------------------------------

    def _make_sampler(self, spec: Any) -> Any:
        import optuna

        name = sampler_name({"sampler": self.sampler}, spec.method)
        if name == "grid":
            grid = {n: entry[1] for n, entry in self.space.items() if entry[0] == "categorical"}

            class _Grid(optuna.samplers.GridSampler):
                # Optuna's after_trial stops the study when the grid is done and fails on
                # re-run trials (queued again, so without a grid id). The run loop checks
                # for the end of the grid itself (``_done``), so nothing is needed here.
                def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
                    pass

            return _Grid(grid, seed=self.seed)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        return optuna.samplers.TPESampler(seed=self.seed, constant_liar=True)

    def _make_pruner(self, spec: Any) -> Any:
        import optuna

        early = spec.sweep.get("early_terminate") or {}
        name = self.pruner or ("hyperband" if early.get("type") == "hyperband" else None)
        if name == "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=int(early.get("min_iter", 1)),
                max_resource=int(early["max_iter"]) if "max_iter" in early else "auto",
                reduction_factor=int(early.get("eta", 3)),
            )
        if name == "median":
            return optuna.pruners.MedianPruner()
        return optuna.pruners.NopPruner()

    def open(self, session: SweepSession) -> None:
        spec = session.spec
        grid = sampler_name({"sampler": self.sampler}, spec.method) == "grid"
        self.space = convert_space(spec.sweep["parameters"], grid=grid)
        self.storage = storage = open_storage(
            session.choose_storage(self.storage_url), *self.heartbeat
        )
        session.record_opened()
        self.study = open_study(
            storage,
            session.sweep_id,
            spec.goal,
            session.info,
            sampler=self._make_sampler(spec),
            pruner=self._make_pruner(spec),
        )

    # -- run -------------------------------------------------------------------------------

    def _done(self, session: SweepSession, records: list[TrialRecord]) -> bool:
        """Nothing left to ask: ``run_cap`` trials, ``metric.target`` reached, or every
        grid point taken (finished or running)."""
        spec = session.spec
        if any(r.state == "pending" for r in records):
            return False  # a trial of a dead or interrupted worker, queued again
        if spec.run_cap is not None and len(records) >= spec.run_cap:
            return True
        target = spec.sweep["metric"].get("target")
        if target is not None and any(
            r.state == "finished" and not spec.better(float(target), r.metric) for r in records
        ):
            return True
        if sampler_name({"sampler": self.sampler}, spec.method) == "grid":
            size = 1
            for entry in self.space.values():
                if entry[0] == "categorical":
                    size *= len(entry[1])
            seen = {tuple(sorted((k, json.dumps(v)) for k, v in r.params.items())) for r in records}
            return len(seen) >= size
        return False

    def claim(self, session: SweepSession) -> tuple[Any, TrialRecord] | None:
        """Ask Optuna for the next trial; None when the sweep has none left.

        Under the sweep's lock (all machines): samplers read every trial so far, and two
        workers asking at once would otherwise take the same grid point. Trials of dead
        workers are failed and queued again first; a queued trial is asked first (same
        parameters, same id).
        """
        with sweep_lock(session.storage_url, session.sweep_id):
            fail_stale_trials(self.study)
            records = self.records(session)
            if self._done(session, records):
                return None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # GridSampler's "re-evaluated" notes
                otrial = self.study.ask()
                params = {name: _suggest(otrial, name, e) for name, e in self.space.items()}
            # a queued trial (dead worker, Ctrl-C) keeps its id; a new one takes the next
            number = max((r.number for r in records), default=0) + 1
            trial_id = otrial.user_attrs.get("trial_id") or f"t{number:04d}"
            for key, value in (
                ("trial_id", trial_id),
                ("params", jsonable(params)),
                ("worker", session.worker),
            ):
                otrial.set_user_attr(key, value)
            # Optuna's Trial keeps its storage id private; heartbeats need it.
            self.storage.record_heartbeat(otrial._trial_id)
        record = TrialRecord(
            trial_id,
            session.sweep_id,
            trial_number(trial_id),
            params,
            "running",
            worker=session.worker,
            storage_id=otrial._trial_id,
        )
        return otrial, record

    def run(self, session: SweepSession, trial: TrialFunction, count: int | None = None) -> None:
        run_worker(
            lambda: self.claim(session),
            lambda claimed: self._run_one(session, *claimed, trial),
            lambda: any(r.state == "running" for r in self.records(session)),
            count,
            self.poll_s,
        )

    def _run_one(
        self, session: SweepSession, otrial: Any, record: TrialRecord, trial: TrialFunction
    ) -> None:
        from optuna.trial import TrialState

        spec = session.spec

        def report(step: int, value: float) -> str | None:
            otrial.report(value, step)
            session.on_report(record.id, step, value)
            if otrial.should_prune():
                return f"pruned at step {step} ({spec.metric_name}={value:.6g})"
            return None

        ctx = TrialContext(
            record.id, record.params, session.fresh_trial_dir(record.id), reporter=report
        )
        session.on_start(record)
        with running_trial(
            self.storage,
            self.study,
            record.storage_id,
            every=self.heartbeat[0],
            fail=lambda: self.study.tell(otrial, state=TrialState.FAIL),
        ):
            outcome = execute_trial(trial, ctx)
        for key, value in outcome_attrs(outcome).items():
            otrial.set_user_attr(key, value)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a NaN metric: Optuna fails the trial, says why
            if outcome.state == "stopped":
                self.study.tell(otrial, state=TrialState.PRUNED)
            elif outcome.state == "failed":
                self.study.tell(otrial, state=TrialState.FAIL)
            else:
                self.study.tell(otrial, float(outcome.metric))
        session.on_finish(self._record(session, self.storage.get_trial(record.storage_id)))

    # -- records ---------------------------------------------------------------------------

    def _record(self, session: SweepSession, trial: Any) -> TrialRecord:
        return self._records(session, [trial])[0]

    def _records(self, session: SweepSession, trials: list[Any]) -> list[TrialRecord]:
        return records_from_trials(
            trials,
            session.sweep_id,
            session.spec.metric_name,
            decode=lambda name, value: _suggest_value(self.space.get(name), value),
        )

    def records(self, session: SweepSession) -> list[TrialRecord]:
        return self._records(session, self.study.get_trials(deepcopy=False))


def _suggest_value(entry: tuple | None, value: Any) -> Any:
    if entry and entry[0] == "categorical" and entry[2] and isinstance(value, str):
        return json.loads(value)
    return value

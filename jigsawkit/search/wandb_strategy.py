"""The ``wandb`` search strategy: W&B Sweeps, online or offline.

Online (``mode: online``, a W&B key needed): the sweep is created on W&B's server with
``wandb.sweep`` (or joined with ``--sweep-id``) and this process runs ``wandb.agent``; each
trial calls ``wandb.init()``, reads its parameters from ``wandb.config`` and logs into that
run. W&B's server chooses the parameters and applies early termination.

Offline (the default): W&B's open-source engine (the ``sweeps`` package, the code behind
W&B's own sweep controller) runs here. ``sweeps.next_run`` proposes each trial from the
trials already in the shared SQLite store (:mod:`jigsawkit.search.store`), and
``sweeps.stop_runs`` applies ``early_terminate: {type: hyperband}`` to the per-epoch
history that trials report: a trial told to stop ends at its next epoch. Every trial is
logged as an offline W&B run grouped by the sweep id (``wandb sync`` uploads them later).
"""

from __future__ import annotations

import random
import time
import uuid
import warnings
import zlib
from typing import Any

from jigsawkit.errors import UserError
from jigsawkit.search.store import Heartbeat, TrialRecord, TrialStore
from jigsawkit.search.sweep_runner import (
    SweepSession,
    TrialContext,
    TrialFunction,
    TrialStopped,
    execute_trial,
)

# Store states -> W&B run states. A stopped trial has real metric history: the engine
# sees it as finished (as W&B does for runs its hyperband stopped).
_RUN_STATES = {
    "pending": "pending",
    "running": "running",
    "finished": "finished",
    "stopped": "finished",
    "failed": "failed",
}


def _quiet_sweeps() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic's config-key warning on import
        import sweeps
    return sweeps


def sweep_runs(records: list[TrialRecord], metric: str) -> list[Any]:
    """Trials as ``sweeps.SweepRun`` objects, what W&B's engine reads."""
    sweeps = _quiet_sweeps()
    runs = []
    for record in records:
        summary = {metric: record.metric} if record.metric is not None else {}
        runs.append(
            sweeps.SweepRun(
                name=record.id,
                state=_RUN_STATES.get(record.state, "failed"),
                config={name: {"value": value} for name, value in record.params.items()},
                summary_metrics=summary,
                history=[{metric: row[metric]} for row in record.history if metric in row],
                stopped=record.state == "stopped",
            )
        )
    return runs


def _seed_engine(sweep_id: str, number: int) -> None:
    """Random and bayes draws depend on the sweep and the trial number only: a sweep
    re-run gives the same proposals, and two workers never draw with the same seed."""
    import numpy as np

    seed = zlib.crc32(f"{sweep_id}:{number}".encode())
    random.seed(seed)
    np.random.seed(seed)


class WandbStrategy:
    """W&B Sweeps: ``mode`` online (W&B's server) or offline (W&B's engine + local store)."""

    poll_s = 2.0

    def __init__(
        self,
        mode: str = "offline",
        project: str | None = None,
        entity: str | None = None,
        store: str | None = None,
        log_trials: bool = True,
    ):
        if mode not in ("offline", "online"):
            raise UserError(f"strategy wandb: mode must be offline or online, found {mode!r}")
        self.mode, self.project, self.entity = mode, project, entity
        self.store_location, self.log_trials = store, log_trials
        self.store: TrialStore | None = None

    @property
    def online(self) -> bool:
        return self.mode == "online"

    def trial_options(self) -> dict[str, Any]:
        """How the experiment trials of this strategy are run and logged."""
        return {
            "online": self.online,
            "log_trials": self.log_trials,
            "project": self.project,
            "entity": self.entity,
        }

    # -- open ------------------------------------------------------------------------------

    def check_credentials(self) -> None:
        """Online needs a W&B key: say so at once, before importing wandb or prompting."""
        if self.online:
            from jigsawkit.tracking.wandb_tracker import require_online_credentials

            require_online_credentials("the wandb strategy's mode 'online'")

    def open(self, session: SweepSession) -> None:
        """Create the sweep (or attach to ``session.sweep_id``) and its trial store."""
        self.check_credentials()
        location = self.store_location or session.sweep_dir
        self.store = TrialStore(location)
        if self.online and not session.sweep_id:
            import wandb

            session.sweep_id = wandb.sweep(
                sweep=session.spec.sweep,
                project=self.project or "jigsawkit",
                entity=self.entity,
            )
        if not session.sweep_id:
            session.sweep_id = f"{session.spec.name}-{uuid.uuid4().hex[:8]}"
        session.write_info(
            id=session.sweep_id,
            strategy=session.spec.strategy,
            store=self.store.url,
            sweep_dir=str(session.sweep_dir.resolve()),
        )
        self.store.create_sweep(session.sweep_id, session.info)

    def records(self, session: SweepSession) -> list[TrialRecord]:
        assert self.store is not None
        return self.store.trials(session.sweep_id)

    # -- run -------------------------------------------------------------------------------

    def run(self, session: SweepSession, trial: TrialFunction, count: int | None = None) -> None:
        if self.online:
            self._run_online(session, trial, count)
        else:
            self._run_offline(session, trial, count)

    def _propose(self, session: SweepSession):
        spec = session.spec
        sweeps = _quiet_sweeps()
        target = spec.sweep["metric"].get("target")

        def propose(records: list[TrialRecord]) -> dict | None:
            if target is not None and any(
                r.state == "finished"
                and r.metric is not None
                and not spec.better(float(target), r.metric)
                for r in records
            ):
                return None  # metric.target reached: the sweep is done
            _seed_engine(session.sweep_id, len(records) + 1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                suggestion = sweeps.next_run(
                    spec.sweep, sweep_runs(records, spec.metric_name), validate=True
                )
            if suggestion is None:
                return None  # grid exhausted
            return {name: entry.get("value") for name, entry in suggestion.config.items()}

        return propose

    def _run_offline(self, session: SweepSession, trial: TrialFunction, count: int | None) -> None:
        assert self.store is not None
        propose = self._propose(session)
        done = 0
        while count is None or done < count:
            record = self.store.claim(
                session.sweep_id, session.worker, propose, limit=session.spec.run_cap
            )
            if record is None:
                # Nothing left to propose. Trials still running elsewhere may belong to a
                # dead worker: wait, and re-run any whose heartbeat goes stale.
                if not self.store.running_elsewhere(session.sweep_id, session.worker):
                    return
                time.sleep(self.poll_s)
                continue
            done += 1
            self._run_one(session, record, trial)

    def _reporter(self, session: SweepSession, record: TrialRecord):
        assert self.store is not None
        spec = session.spec
        metric = spec.metric_name
        history: list[dict[str, Any]] = []
        early = spec.sweep.get("early_terminate")
        sweeps = _quiet_sweeps() if early else None

        def report(step: int, value: float) -> None:
            history.append({metric: value, "_step": step})
            self.store.report(session.sweep_id, record.id, history)
            session.on_report(record.id, step, value)
            if sweeps is None:
                return
            runs = sweep_runs(self.store.trials(session.sweep_id), metric)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                to_stop = sweeps.stop_runs(spec.sweep, runs, validate=False)
            if any(run.name == record.id for run in to_stop):
                raise TrialStopped(f"hyperband stopped it at step {step} ({metric}={value:.6g})")

        return report, history

    def _run_one(self, session: SweepSession, record: TrialRecord, trial: TrialFunction) -> None:
        assert self.store is not None
        report, history = self._reporter(session, record)
        ctx = TrialContext(
            trial_id=record.id,
            params=dict(record.params),
            run_dir=session.trial_dir(record.id),
            reporter=report,
        )
        session.on_start(record)
        try:
            with Heartbeat(self.store, session.sweep_id, record.id):
                outcome = execute_trial(trial, ctx)
        except BaseException:
            # Ctrl-C (or a crash of the worker itself): the trial goes back to pending
            # and is run again by the next claim of any worker.
            self.store.release(session.sweep_id, record.id)
            raise
        _record_outcome(self.store, session, record, outcome, history=history)

    # -- online ----------------------------------------------------------------------------

    def _run_online(self, session: SweepSession, trial: TrialFunction, count: int | None) -> None:
        import wandb

        assert self.store is not None
        spec = session.spec
        store = self.store

        def agent_trial() -> None:
            run = wandb.init(mode="online")
            params = _params_from_config(wandb.config, spec.parameters)
            record = store.claim(session.sweep_id, session.worker, lambda _: params)
            assert record is not None
            ctx = TrialContext(
                trial_id=record.id,
                params=params,
                run_dir=session.trial_dir(record.id),
                reporter=lambda step, value: session.on_report(record.id, step, value),
            )
            session.on_start(record)
            try:
                outcome = execute_trial(trial, ctx)
            except BaseException:
                store.release(session.sweep_id, record.id)
                raise
            if outcome.metric is not None:
                run.summary[spec.metric_name] = outcome.metric
            _record_outcome(store, session, record, outcome)
            run.finish(exit_code=0 if outcome.state == "finished" else 1)

        wandb.agent(
            session.sweep_id,
            function=agent_trial,
            count=count if count is not None else spec.run_cap,
            project=self.project or "jigsawkit",
            entity=self.entity,
        )


def _params_from_config(config: Any, names: dict[str, Any]) -> dict[str, Any]:
    """The swept parameters from ``wandb.config`` (keys as dotted names, or nested)."""
    params: dict[str, Any] = {}
    for name in names:
        if name in config:
            params[name] = config[name]
            continue
        node: Any = config
        found = True
        for part in name.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                found = False
                break
        if found:
            params[name] = node
    missing = [n for n in names if n not in params]
    if missing:
        raise UserError(f"wandb.config has no value for {', '.join(missing)}")
    return params


def _record_outcome(
    store: Any, session: Any, record: Any, outcome: Any, history: list | None = None
) -> None:
    """Store a finished trial's outcome and tell the session (offline and online alike)."""
    extra = {} if history is None else {"history": history}
    final = store.finish(
        session.sweep_id,
        record.id,
        outcome.state,
        metric=outcome.metric,
        summary=outcome.summary,
        run_dir=outcome.run_dir,
        error=outcome.error,
        **extra,
    )
    session.on_finish(final)

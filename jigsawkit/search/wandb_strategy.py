"""The ``wandb`` search strategy: W&B Sweeps, online or offline.

Online (``mode: online``, a W&B key needed): the sweep is created on W&B's server with
``wandb.sweep`` (or joined with ``--sweep-id``) and this process runs ``wandb.agent``; each
trial calls ``wandb.init()``, reads its parameters from ``wandb.config`` and logs into that
run. W&B's server chooses the parameters and applies early termination.

Offline (the default): W&B's open-source engine (the ``sweeps`` package, the code behind
W&B's own sweep controller) runs here. ``sweeps.next_run`` proposes each trial from the
trials already in the sweep's Optuna storage (:mod:`jigsawkit.search.storage`: their
parameters, states and metrics), each proposal is written there as a new trial, and
``sweeps.stop_runs`` applies ``early_terminate: {type: hyperband}`` to the per-epoch
history that trials report: a trial told to stop ends at its next epoch. Every trial is
logged as an offline W&B run grouped by the sweep id (``wandb sync`` uploads them later).
"""

from __future__ import annotations

import math
import random
import warnings
import zlib
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
)
from jigsawkit.search.sweep_runner import (
    SweepSession,
    TrialContext,
    TrialFunction,
    execute_trial,
    run_worker,
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
    """W&B Sweeps: ``mode`` online (W&B's server) or offline (W&B's engine here); the
    trials of both are kept in Optuna's RDB storage (:mod:`jigsawkit.search.storage`)."""

    poll_s = 2.0

    def __init__(
        self,
        *,
        mode: str,
        project: str | None,
        entity: str | None,
        storage: str | None,
        log_trials: bool,
        heartbeat_interval: int,
        grace_period: int,
        max_retry: int | None,
    ):
        if mode not in ("offline", "online"):
            raise UserError(f"strategy wandb: mode must be offline or online, found {mode!r}")
        self.mode, self.project, self.entity = mode, project, entity
        self.storage_url, self.log_trials = storage, log_trials
        self.heartbeat = (heartbeat_interval, grace_period, max_retry)
        self.storage: Any = None
        self.study: Any = None

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
        """Create the sweep (or attach to ``session.sweep_id``) and its study in the storage."""
        self.check_credentials()
        url = session.choose_storage(self.storage_url)
        interval, grace, retries = self.heartbeat
        # Online, W&B's server decides what happens to a dead agent's run: no retries here.
        self.storage = open_storage(url, None if self.online else interval, grace, retries)
        if self.online and not session.sweep_id:
            import wandb

            session.sweep_id = wandb.sweep(
                sweep=session.spec.sweep,
                project=self.project or "jigsawkit",
                entity=self.entity,
            )
        session.record_opened()
        self.study = open_study(self.storage, session.sweep_id, session.spec.goal, session.info)

    def records(self, session: SweepSession) -> list[TrialRecord]:
        trials = self.storage.get_all_trials(self.study._study_id, deepcopy=False)
        return records_from_trials(trials, session.sweep_id, session.spec.metric_name)

    # -- run -------------------------------------------------------------------------------

    def run(self, session: SweepSession, trial: TrialFunction, count: int | None = None) -> None:
        if self.online:
            self._run_online(session, trial, count)
        else:
            self._run_offline(session, trial, count)

    def _propose(self, session: SweepSession, records: list[TrialRecord]) -> dict | None:
        """W&B's engine: the next parameters from every trial so far (None: the end)."""
        spec = session.spec
        target = spec.sweep["metric"].get("target")
        if target is not None and any(
            r.state == "finished"
            and r.metric is not None
            and not spec.better(float(target), r.metric)
            for r in records
        ):
            return None  # metric.target reached: the sweep is done
        sweeps = _quiet_sweeps()
        _seed_engine(session.sweep_id, len(records) + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            suggestion = sweeps.next_run(
                spec.sweep, sweep_runs(records, spec.metric_name), validate=True
            )
        if suggestion is None:
            return None  # grid exhausted
        return {name: entry.get("value") for name, entry in suggestion.config.items()}

    def claim(self, session: SweepSession) -> TrialRecord | None:
        """Take the next trial for this worker; None when the sweep has none left.

        Under the sweep's lock (one proposer at a time, all machines): trials of dead
        workers are failed and queued again; a queued trial is taken first (same
        parameters, same id); otherwise W&B's engine proposes the next parameters,
        unless ``run_cap`` trials exist, and they become a new running trial.
        """
        from optuna.trial import TrialState

        with sweep_lock(session.storage_url, session.sweep_id):
            fail_stale_trials(self.study)
            records = self.records(session)
            for record in records:
                if record.state == "pending" and self.storage.set_trial_state_values(
                    record.storage_id, TrialState.RUNNING
                ):
                    self.storage.set_trial_user_attr(record.storage_id, "worker", session.worker)
                    self.storage.record_heartbeat(record.storage_id)
                    record.state, record.worker, record.history = "running", session.worker, []
                    return record
            if session.spec.run_cap is not None and len(records) >= session.spec.run_cap:
                return None
            params = self._propose(session, records)
            if params is None:
                return None
            record = self._new_trial(session, records, params)
            self.storage.record_heartbeat(record.storage_id)  # stale detection needs a beat
            return record

    def _new_trial(self, session: SweepSession, records: list[TrialRecord], params: dict):
        """A running trial with the next id, its parameters in its user attrs."""
        from optuna.trial import TrialState, create_trial

        number = max((r.number for r in records), default=0) + 1
        trial_id = f"t{number:04d}"
        attrs = {"trial_id": trial_id, "params": jsonable(params), "worker": session.worker}
        storage_id = self.storage.create_new_trial(
            self.study._study_id,
            template_trial=create_trial(state=TrialState.RUNNING, user_attrs=attrs),
        )
        return TrialRecord(
            trial_id,
            session.sweep_id,
            number,
            attrs["params"],
            "running",
            worker=session.worker,
            storage_id=storage_id,
        )

    def _run_offline(self, session: SweepSession, trial: TrialFunction, count: int | None) -> None:
        run_worker(
            lambda: self.claim(session),
            lambda record: self._run_one(session, record, trial),
            lambda: any(r.state == "running" for r in self.records(session)),
            count,
            self.poll_s,
        )

    def _reporter(self, session: SweepSession, record: TrialRecord):
        spec = session.spec
        metric = spec.metric_name
        early = spec.sweep.get("early_terminate")
        sweeps = _quiet_sweeps() if early else None

        def report(step: int, value: float) -> str | None:
            self.storage.set_trial_intermediate_value(record.storage_id, step, value)
            session.on_report(record.id, step, value)
            if sweeps is None:
                return None
            runs = sweep_runs(self.records(session), metric)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                to_stop = sweeps.stop_runs(spec.sweep, runs, validate=False)
            if any(run.name == record.id for run in to_stop):
                return f"hyperband stopped it at step {step} ({metric}={value:.6g})"
            return None

        return report

    def _run_one(self, session: SweepSession, record: TrialRecord, trial: TrialFunction) -> None:
        from optuna.trial import TrialState

        ctx = TrialContext(
            trial_id=record.id,
            params=dict(record.params),
            run_dir=session.fresh_trial_dir(record.id),
            reporter=self._reporter(session, record),
        )
        session.on_start(record)
        with running_trial(
            self.storage,
            self.study,
            record.storage_id,
            every=self.heartbeat[0],
            fail=lambda: self.storage.set_trial_state_values(record.storage_id, TrialState.FAIL),
        ):
            outcome = execute_trial(trial, ctx)
        self._record_outcome(session, record, outcome)

    def _record_outcome(self, session: SweepSession, record: TrialRecord, outcome: Any) -> None:
        """Store a trial's end and tell the session (offline and online alike)."""
        from optuna.trial import TrialState

        for key, value in outcome_attrs(outcome).items():
            self.storage.set_trial_user_attr(record.storage_id, key, value)
        metric = outcome.metric
        if outcome.state == "finished" and math.isfinite(metric):
            self.storage.set_trial_state_values(record.storage_id, TrialState.COMPLETE, [metric])
        elif outcome.state == "stopped":
            self.storage.set_trial_state_values(record.storage_id, TrialState.PRUNED)
        else:
            if outcome.state == "finished":  # a NaN or infinite metric cannot be compared
                self.storage.set_trial_user_attr(record.storage_id, "error", f"metric {metric}")
            self.storage.set_trial_state_values(record.storage_id, TrialState.FAIL)
        final = next(r for r in self.records(session) if r.id == record.id)
        session.on_finish(final)

    # -- online ----------------------------------------------------------------------------

    def _run_online(self, session: SweepSession, trial: TrialFunction, count: int | None) -> None:
        import wandb
        from optuna.trial import TrialState

        spec = session.spec

        def agent_trial() -> None:
            run = wandb.init(mode="online")
            params = _params_from_config(wandb.config, spec.parameters)
            with sweep_lock(session.storage_url, session.sweep_id):  # one id per trial
                record = self._new_trial(session, self.records(session), params)
            ctx = TrialContext(
                trial_id=record.id,
                params=params,
                run_dir=session.fresh_trial_dir(record.id),
                reporter=lambda step, value: session.on_report(record.id, step, value),
            )
            session.on_start(record)
            try:
                outcome = execute_trial(trial, ctx)
            except BaseException:
                self.storage.set_trial_state_values(record.storage_id, TrialState.FAIL)
                raise
            if outcome.metric is not None:
                run.summary[spec.metric_name] = outcome.metric
            self._record_outcome(session, record, outcome)
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

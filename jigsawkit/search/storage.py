"""Where a sweep's trials live: one Optuna study in Optuna's RDB storage.

Both strategies keep their trials here (``optuna.storages.RDBStorage``): a SQLite file in
the sweep folder by default, or a database server (``postgresql://``, ``mysql://``) that
workers on many machines share. One study per sweep, named by the sweep id; its user attr
``jigsawkit`` holds the sweep's description (``sweep.json``: the resolved sweep file, the
folder, the strategy), so ``jigsawkit sweep --join URL`` needs nothing else.

Each trial keeps in its user attrs what the sweep folder needs: ``trial_id`` (``t0007``),
``params`` (the W&B-style values, JSON), ``worker`` (``host:pid``), ``run_dir``,
``summary``, ``error`` and ``last_value`` (the metric of a stopped trial). Per-epoch metrics
are Optuna intermediate values.

Workers send heartbeats (``heartbeat_interval``); a running trial without one for
``grace_period`` seconds belongs to a dead worker: the next worker that looks marks it
failed and Optuna's ``RetryHeartbeatStaleTrialCallback`` queues a copy (same parameters,
same ``trial_id``) that the next claim runs. A trial and its retries are one trial of the
sweep: :func:`records_from_trials` shows the latest attempt.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jigsawkit.errors import UserError, one_line
from jigsawkit.json_values import jsonable

DB_FILE = "optuna.db"
HEARTBEAT_S = 15
GRACE_S = 120
MAX_RETRY = 3
INFO_ATTR = "jigsawkit"
CONNECT_TIMEOUT_S = 10

# dialect -> what to install when SQLAlchemy cannot import its driver
_DRIVERS = {
    "sqlite": "nothing (sqlite3 is part of Python)",
    "postgresql": "pip install 'psycopg[binary]'",
    "mysql": "pip install pymysql (and use mysql+pymysql://)",
}


def default_worker_id() -> str:
    """``host:pid``: unique among the live workers of a sweep."""
    return f"{socket.gethostname()}:{os.getpid()}"


def default_storage_url(sweep_dir: str | Path) -> str:
    """A SQLite file in the sweep folder: one machine needs no database server."""
    return f"sqlite:///{(Path(sweep_dir) / DB_FILE).resolve()}"


def shown_url(url: str) -> str:
    """The URL without its password: for messages and for ``sweep.json``.

    Workers then take the password from the driver's own sources (``~/.pgpass``,
    ``PGPASSWORD``), so it is never written into the sweep folder.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)._replace(password=None).render_as_string(hide_password=False)
    except ArgumentError:
        return url


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 120}}  # workers wait for each other's writes
    return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for other databases or in-memory)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def check_storage(url: str, *, must_exist: bool = False, where: str = "--storage") -> None:
    """Refuse, in one line, a storage URL that cannot work: before anything is created.

    Checks the URL's form and dialect, that its driver imports, and (for a server) that it
    answers. ``must_exist``: a SQLite file must already be there (``--join``).
    """
    import sqlalchemy
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    shown = shown_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(
            f"{where} {url}: not a database URL; expected sqlite:///PATH, "
            "postgresql://USER@HOST[:PORT]/DB or mysql+pymysql://USER@HOST/DB"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in _DRIVERS:
        raise UserError(
            f"{where} {shown}: unsupported database '{backend}'; expected sqlite, postgresql "
            "or mysql"
        )
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is None:
            raise UserError(f"{where} {shown}: expected sqlite:///PATH (a file, not in memory)")
        if must_exist and not path.is_file():
            raise UserError(f"{where} {shown}: no such file {path}")
        if not path.parent.is_dir():
            raise UserError(f"{where} {shown}: no such folder {path.parent}")
        return
    try:
        engine = sqlalchemy.create_engine(
            url, poolclass=sqlalchemy.pool.NullPool, **_engine_kwargs(url)
        )
    except (ImportError, NoSuchModuleError) as error:
        raise UserError(
            f"{where} {shown}: the database driver is missing ({one_line(error, first_line=True)}); "
            f"install it: {_DRIVERS[backend]}"
        ) from None
    except (ArgumentError, TypeError) as error:
        raise UserError(f"{where} {shown}: {one_line(error, first_line=True)}") from None
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    except SQLAlchemyError as error:
        cause = error.orig if getattr(error, "orig", None) is not None else error
        raise UserError(
            f"{where} {shown}: cannot connect: {one_line(cause, first_line=True)}"
        ) from None
    finally:
        engine.dispose()


def open_storage(
    url: str,
    heartbeat_interval: int | None = HEARTBEAT_S,
    grace_period: int = GRACE_S,
    max_retry: int | None = MAX_RETRY,
    create: bool = True,
) -> Any:
    """Optuna's RDB storage for ``url``, with heartbeats and retry of dead workers' trials.

    ``heartbeat_interval=None``: no heartbeats (trials of W&B's online agents, whose
    retries W&B's server decides). ``create=False``: add no tables (``--join`` only reads).
    """
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    options: dict[str, Any] = {}
    if heartbeat_interval is not None:
        with _quiet():
            retry = RetryHeartbeatStaleTrialCallback(max_retry)
        options = {
            "heartbeat_interval": int(heartbeat_interval),
            "grace_period": int(grace_period),
            "heartbeat_stale_trial_callback": retry,
        }
    try:
        with _quiet():
            return RDBStorage(
                url, engine_kwargs=_engine_kwargs(url), skip_table_creation=not create, **options
            )
    except (ImportError, optuna.exceptions.StorageInternalError) as error:
        if not create:
            raise UserError(f"{shown_url(url)}: no sweep there (no Optuna tables)") from None
        raise UserError(
            f"storage {shown_url(url)}: cannot open it: {one_line(error, first_line=True)}"
        ) from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's "experimental" warnings (heartbeats, retry)
        yield


def open_study(storage: Any, sweep_id: str, goal: str, info: dict, **options: Any) -> Any:
    """Create the sweep's study (or attach to it) and record the sweep's description.

    ``options``: ``sampler`` and ``pruner`` (the optuna strategy).
    """
    import optuna

    with _quiet():
        study = optuna.create_study(
            storage=storage,
            study_name=sweep_id,
            direction="maximize" if goal == "maximize" else "minimize",
            load_if_exists=True,
            **options,
        )
        if INFO_ATTR not in study.user_attrs:
            study.set_user_attr(INFO_ATTR, jsonable(info))
    return study


def study_names(storage: Any) -> list[str]:
    """The jigsawkit sweeps in a storage (none in a database without Optuna's tables)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        studies = storage.get_all_studies()
    except SQLAlchemyError:
        return []
    return [summary.study_name for summary in studies if INFO_ATTR in summary.user_attrs]


def sweep_info(storage: Any, sweep_id: str) -> dict:
    """The description of a sweep that ``open_study`` recorded."""
    study_id = storage.get_study_id_from_name(sweep_id)
    return dict(storage.get_study_user_attrs(study_id)[INFO_ATTR])


def fail_stale_trials(study: Any) -> None:
    """Trials of dead workers (no heartbeat for ``grace_period``) fail and are queued again."""
    import optuna

    with _quiet():
        optuna.storages.fail_stale_trials(study)


def retry_trial(study: Any, trial: Any) -> None:
    """Queue a copy of ``trial`` (same parameters and ``trial_id``): a trial interrupted
    by Ctrl-C runs again, like one of a dead worker."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with _quiet():
        RetryHeartbeatStaleTrialCallback(max_retry=None)(study, trial)


@contextlib.contextmanager
def running_trial(
    storage: Any, study: Any, storage_id: int, every: float, fail: Callable[[], None]
) -> Iterator[None]:
    """A claimed trial while it runs, for both strategies: heartbeats every ``every`` s; if
    the worker itself is interrupted (Ctrl-C, a crash of the worker), ``fail()`` marks the
    trial failed and a copy is queued again (same parameters and id) for the next claim of
    any worker."""
    try:
        with Heartbeat(storage, storage_id, every=every):
            yield
    except BaseException:
        fail()
        retry_trial(study, storage.get_trial(storage_id))
        raise


# -- a lock around "read the trials, propose the next one" ----------------------------------


@contextlib.contextmanager
def sweep_lock(url: str, sweep_id: str) -> Iterator[None]:
    """Exclusive between the workers of one sweep, on any machine sharing the storage.

    W&B's engine proposes the next trial from all trials so far; two workers proposing
    at once would both take the same grid point. SQLite: a POSIX lock on a file next to
    the database (works on shared filesystems that honour POSIX locks). PostgreSQL: an
    advisory lock; MySQL: ``GET_LOCK``. A server releases either when the worker dies.
    """
    path = sqlite_path(url)
    if path is not None:
        with file_lock(path.with_name(path.name + ".lock")):
            yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        url, poolclass=sqlalchemy.pool.NullPool, **_engine_kwargs(url)
    )
    key = zlib.crc32(f"jigsawkit:{sweep_id}".encode())
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                take = "SELECT pg_advisory_lock(:key)"
                give = "SELECT pg_advisory_unlock(:key)"
            else:  # mysql
                take, give = "SELECT GET_LOCK(:name, -1)", "SELECT RELEASE_LOCK(:name)"
            values = {"key": key, "name": f"jigsawkit-{key}"}
            connection.execute(sqlalchemy.text(take), values)
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text(give), values)
    finally:
        engine.dispose()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (and machines whose shared filesystem honours
    POSIX locks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: one worker per sweep
            yield
            return
        fcntl.lockf(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_UN)


class Heartbeat:
    """Records a running trial's heartbeat from a background thread (what Optuna's own
    ``optimize`` does for its trials; the W&B engine's trials need it too)."""

    def __init__(self, storage: Any, trial_id: int, every: float = HEARTBEAT_S):
        self.storage, self.trial_id, self.every = storage, trial_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweep-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        while not self._stop.wait(self.every):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except SQLAlchemyError:  # a busy or briefly unreachable database: next beat
                pass


# -- trials as the sweep folder sees them ---------------------------------------------------


@dataclass
class TrialRecord:
    """One trial of a sweep: the latest attempt of its ``id`` in the storage."""

    id: str
    sweep_id: str
    number: int
    params: dict[str, Any]
    state: str
    metric: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    worker: str | None = None
    started: float | None = None
    finished: float | None = None
    run_dir: str | None = None
    error: str | None = None
    storage_id: int | None = None

    def as_line(self) -> dict[str, Any]:
        """What ``trials.jsonl`` records for an ended trial."""
        line = {
            "id": self.id,
            "params": self.params,
            "metric": self.metric,
            "state": self.state,
            "run_dir": self.run_dir,
        }
        if self.error:
            line["error"] = self.error
        return line


def trial_state(state: Any) -> str:
    """Optuna's trial state in the sweep's words."""
    from optuna.trial import TrialState

    return {
        TrialState.COMPLETE: "finished",
        TrialState.PRUNED: "stopped",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "pending",
    }[state]


def trial_number(trial_id: str) -> int:
    return int(trial_id.lstrip("t") or 0)


def records_from_trials(
    trials: list[Any], sweep_id: str, metric_name: str, decode: Any = None
) -> list[TrialRecord]:
    """Optuna trials as sweep trials: one per ``trial_id``, its latest attempt.

    ``decode(name, value)``: turns a stored Optuna parameter back into its sweep value
    (trials without a ``params`` user attr, e.g. added by hand).
    """
    from optuna.trial import TrialState

    latest: dict[str, Any] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        trial_id = trial.user_attrs.get("trial_id") or f"t{trial.number + 1:04d}"
        latest[trial_id] = trial
    records = []
    for trial_id, trial in latest.items():
        attrs = trial.user_attrs
        history = [
            {metric_name: value, "_step": step}
            for step, value in sorted(trial.intermediate_values.items())
        ]
        metric = trial.value if trial.state == TrialState.COMPLETE else attrs.get("last_value")
        state = trial_state(trial.state)
        if metric is None and history and state == "stopped":
            metric = history[-1][metric_name]
        params = attrs.get("params")
        if params is None:
            params = {n: decode(n, v) if decode else v for n, v in trial.params.items()}
        records.append(
            TrialRecord(
                id=trial_id,
                sweep_id=sweep_id,
                number=trial_number(trial_id),
                params=params,
                state=state,
                metric=metric,
                history=history,
                summary=attrs.get("summary") or {},
                worker=attrs.get("worker"),
                started=trial.datetime_start.timestamp() if trial.datetime_start else None,
                finished=trial.datetime_complete.timestamp() if trial.datetime_complete else None,
                run_dir=attrs.get("run_dir"),
                error=attrs.get("error"),
                storage_id=trial._trial_id,
            )
        )
    return sorted(records, key=lambda r: (r.number, r.id))


def outcome_attrs(outcome: Any, worker: str | None = None) -> dict[str, Any]:
    """The user attrs an ended trial leaves in the storage."""
    attrs: dict[str, Any] = {
        "run_dir": str(outcome.run_dir) if outcome.run_dir else None,
        "summary": jsonable(outcome.summary),
    }
    if outcome.error:
        attrs["error"] = outcome.error
    if outcome.state == "stopped" and outcome.metric is not None:
        attrs["last_value"] = outcome.metric
    if worker is not None:
        attrs["worker"] = worker
    return attrs

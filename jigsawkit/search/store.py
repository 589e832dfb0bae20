"""The trial store: one SQLite file that every worker of a sweep shares.

Tables::

    sweep   (id, config json, created)
    trials  (id, sweep_id, number, params json, state, metric, history json, summary json,
             worker, started, finished, heartbeat, run_dir, error)

``state`` is one of ``pending``, ``running``, ``finished``, ``failed``, ``stopped``.

Claiming the next trial is one ``BEGIN IMMEDIATE`` transaction: read the sweep's trials,
ask the search engine for the next parameters, insert them as ``running``, commit. SQLite
lets one writer in at a time, so workers in several processes (or on several machines
sharing a filesystem with working POSIX locks) never claim the same point.

A worker refreshes its trial's ``heartbeat`` while it runs. A ``running`` trial whose
heartbeat is older than ``stale_after`` seconds belongs to a dead worker: the next claim
puts it back to ``pending`` and re-runs it with the same parameters. A worker interrupted
with Ctrl-C puts its trial back to ``pending`` at once (``release``).
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jigsawkit.errors import UserError

STORE_FILE = "store.sqlite"
STATES = ("pending", "running", "finished", "failed", "stopped")
HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweep (
    id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    id TEXT NOT NULL,
    sweep_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    metric REAL,
    history TEXT NOT NULL DEFAULT '[]',
    summary TEXT NOT NULL DEFAULT '{}',
    worker TEXT,
    started REAL,
    finished REAL,
    heartbeat REAL,
    run_dir TEXT,
    error TEXT,
    PRIMARY KEY (sweep_id, id),
    UNIQUE (sweep_id, number)
);
"""


def default_worker_id() -> str:
    """``host:pid``: unique among the live workers of a sweep."""
    return f"{socket.gethostname()}:{os.getpid()}"


def store_path(location: str | Path) -> Path:
    """The SQLite file for a store location: a sweep folder, a file, or ``sqlite:///PATH``.

    Other database URLs are refused with what to use instead.
    """
    text = str(location)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        if scheme != "sqlite":
            raise UserError(
                f"store {text}: only sqlite:///PATH stores are supported by the wandb "
                "strategy (put the file on a shared filesystem for several machines, or "
                "use the optuna strategy with a PostgreSQL storage URL)"
            )
        rest = text[len("sqlite://") :]
        if not rest.startswith("/") or rest == "/":
            raise UserError(f"store {text}: expected sqlite:///relative/path or sqlite:////abs")
        return Path(rest[1:]).expanduser()
    path = Path(text).expanduser()
    if path.is_dir():
        return path / STORE_FILE
    return path


def _clean_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class TrialRecord:
    """One trial of a sweep, as the store keeps it."""

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
    heartbeat: float | None = None
    run_dir: str | None = None
    error: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> TrialRecord:
        return cls(
            id=row["id"],
            sweep_id=row["sweep_id"],
            number=row["number"],
            params=json.loads(row["params"]),
            state=row["state"],
            metric=row["metric"],
            history=json.loads(row["history"] or "[]"),
            summary=json.loads(row["summary"] or "{}"),
            worker=row["worker"],
            started=row["started"],
            finished=row["finished"],
            heartbeat=row["heartbeat"],
            run_dir=row["run_dir"],
            error=row["error"],
        )

    def as_line(self) -> dict[str, Any]:
        """What ``trials.jsonl`` records for a finished trial."""
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


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_plain)


def _plain(value: Any) -> Any:
    # numpy scalars from the search engines
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class TrialStore:
    """Trials of one or more sweeps in a SQLite file; safe to share between processes."""

    def __init__(
        self,
        location: str | Path,
        timeout: float = 120.0,
        stale_after: float = STALE_AFTER_S,
    ):
        self.path = store_path(location)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stale_after = stale_after
        self._conn = sqlite3.connect(
            str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._write() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path.resolve()}"

    def close(self) -> None:
        self._conn.close()

    # -- transactions --------------------------------------------------------------------

    class _Transaction:
        def __init__(self, store: TrialStore):
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._lock.acquire()
            try:
                self.store._conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.store._lock.release()
                raise
            return self.store._conn

        def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
            try:
                self.store._conn.execute("COMMIT" if kind is None else "ROLLBACK")
            finally:
                self.store._lock.release()

    def _write(self) -> TrialStore._Transaction:
        return TrialStore._Transaction(self)

    # -- sweeps --------------------------------------------------------------------------

    def create_sweep(self, sweep_id: str, config: dict) -> None:
        """Record a sweep (its resolved description); a second call keeps the first."""
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO sweep (id, config, created) VALUES (?, ?, ?)",
                (sweep_id, _json(config), time.time()),
            )

    def sweeps(self) -> list[tuple[str, dict]]:
        rows = self._conn.execute("SELECT id, config FROM sweep ORDER BY created").fetchall()
        return [(row["id"], json.loads(row["config"])) for row in rows]

    def sweep_config(self, sweep_id: str) -> dict:
        row = self._conn.execute("SELECT config FROM sweep WHERE id = ?", (sweep_id,)).fetchone()
        if row is None:
            raise UserError(f"store {self.path}: no sweep '{sweep_id}' in it")
        return json.loads(row["config"])

    # -- trials --------------------------------------------------------------------------

    def trials(self, sweep_id: str) -> list[TrialRecord]:
        rows = self._conn.execute(
            "SELECT * FROM trials WHERE sweep_id = ? ORDER BY number", (sweep_id,)
        ).fetchall()
        return [TrialRecord.from_row(row) for row in rows]

    def get(self, sweep_id: str, trial_id: str) -> TrialRecord:
        row = self._conn.execute(
            "SELECT * FROM trials WHERE sweep_id = ? AND id = ?", (sweep_id, trial_id)
        ).fetchone()
        if row is None:
            raise KeyError(trial_id)
        return TrialRecord.from_row(row)

    def claim(
        self,
        sweep_id: str,
        worker: str,
        propose: Callable[[list[TrialRecord]], dict | None],
        limit: int | None = None,
    ) -> TrialRecord | None:
        """Atomically take the next trial for ``worker``; None when the sweep is done.

        In one write transaction: trials of dead workers go back to ``pending``; a pending
        trial is taken first (same parameters, run again); otherwise, unless ``limit``
        trials exist already, ``propose(all_trials)`` gives the next parameters (None: the
        search space is exhausted) and they are inserted as ``running``.
        """
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "UPDATE trials SET state = 'pending', worker = NULL "
                "WHERE sweep_id = ? AND state = 'running' AND heartbeat < ?",
                (sweep_id, now - self.stale_after),
            )
            row = conn.execute(
                "SELECT * FROM trials WHERE sweep_id = ? AND state = 'pending' "
                "ORDER BY number LIMIT 1",
                (sweep_id,),
            ).fetchone()
            if row is not None:
                conn.execute(
                    "UPDATE trials SET state = 'running', worker = ?, started = ?, "
                    "heartbeat = ?, history = '[]', metric = NULL, error = NULL "
                    "WHERE sweep_id = ? AND id = ?",
                    (worker, now, now, sweep_id, row["id"]),
                )
                return self._fetch(conn, sweep_id, row["id"])
            records = [
                TrialRecord.from_row(r)
                for r in conn.execute(
                    "SELECT * FROM trials WHERE sweep_id = ? ORDER BY number", (sweep_id,)
                ).fetchall()
            ]
            if limit is not None and len(records) >= limit:
                return None
            params = propose(records)
            if params is None:
                return None
            number = max((r.number for r in records), default=0) + 1
            trial_id = f"t{number:04d}"
            conn.execute(
                "INSERT INTO trials (id, sweep_id, number, params, state, worker, started, "
                "heartbeat) VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                (trial_id, sweep_id, number, _json(params), worker, now, now),
            )
            return self._fetch(conn, sweep_id, trial_id)

    @staticmethod
    def _fetch(conn: sqlite3.Connection, sweep_id: str, trial_id: str) -> TrialRecord:
        row = conn.execute(
            "SELECT * FROM trials WHERE sweep_id = ? AND id = ?", (sweep_id, trial_id)
        ).fetchone()
        return TrialRecord.from_row(row)

    def report(self, sweep_id: str, trial_id: str, history: list[dict[str, Any]]) -> None:
        """Record a running trial's metric history (and that its worker is alive)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE trials SET history = ?, heartbeat = ? WHERE sweep_id = ? AND id = ?",
                (_json(history), time.time(), sweep_id, trial_id),
            )

    def heartbeat(self, sweep_id: str, trial_id: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE trials SET heartbeat = ? WHERE sweep_id = ? AND id = ? "
                "AND state = 'running'",
                (time.time(), sweep_id, trial_id),
            )

    def finish(
        self,
        sweep_id: str,
        trial_id: str,
        state: str,
        metric: float | None = None,
        summary: dict | None = None,
        run_dir: str | Path | None = None,
        error: str | None = None,
        history: list[dict[str, Any]] | None = None,
    ) -> TrialRecord:
        """Record a trial's end: ``finished``, ``failed`` or ``stopped``."""
        if state not in ("finished", "failed", "stopped"):
            raise ValueError(f"not a final state: {state}")
        with self._write() as conn:
            conn.execute(
                "UPDATE trials SET state = ?, metric = ?, summary = ?, run_dir = ?, error = ?, "
                "finished = ?, heartbeat = ?, history = COALESCE(?, history) "
                "WHERE sweep_id = ? AND id = ?",
                (
                    state,
                    _clean_float(metric),
                    _json(summary or {}),
                    str(run_dir) if run_dir is not None else None,
                    error,
                    time.time(),
                    time.time(),
                    _json(history) if history is not None else None,
                    sweep_id,
                    trial_id,
                ),
            )
            return self._fetch(conn, sweep_id, trial_id)

    def release(self, sweep_id: str, trial_id: str) -> None:
        """Put an interrupted trial back to ``pending`` so that the next claim re-runs it."""
        with self._write() as conn:
            conn.execute(
                "UPDATE trials SET state = 'pending', worker = NULL, history = '[]' "
                "WHERE sweep_id = ? AND id = ? AND state = 'running'",
                (sweep_id, trial_id),
            )

    def running_elsewhere(self, sweep_id: str, worker: str) -> list[TrialRecord]:
        """Trials other workers are running now (a worker waits for them before ending)."""
        return [r for r in self.trials(sweep_id) if r.state == "running" and r.worker != worker]


class Heartbeat:
    """Refreshes a running trial's heartbeat from a background thread."""

    def __init__(self, store: TrialStore, sweep_id: str, trial_id: str, every: float = HEARTBEAT_S):
        # Its own connection: the worker's may be inside a long transaction.
        self.store = TrialStore(store.path, stale_after=store.stale_after)
        self.sweep_id, self.trial_id, self.every = sweep_id, trial_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweep-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.store.close()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.store.heartbeat(self.sweep_id, self.trial_id)
            except sqlite3.Error:  # a busy store: the next beat will do
                pass

"""The SQLite trial store: atomic claims across processes, stale trials, release, locations."""

from __future__ import annotations

import itertools
import multiprocessing
import time

import pytest

from jigsawkit.errors import UserError
from jigsawkit.search.store import STORE_FILE, Heartbeat, TrialStore, store_path

GRID = [{"a": a, "b": b} for a, b in itertools.product([1, 2, 3], ["x", "y", "z"])]


def grid_proposer(records):
    """The next grid point nobody has claimed (what W&B's grid engine does)."""
    claimed = [r.params for r in records]
    for point in GRID:
        if point not in claimed:
            return point
    return None


def test_store_locations(tmp_path):
    assert store_path(tmp_path) == tmp_path / STORE_FILE
    assert store_path(f"sqlite:///{tmp_path}/s.db") == tmp_path / "s.db"
    assert store_path("sqlite:///rel/s.db").as_posix() == "rel/s.db"
    with pytest.raises(UserError, match="only sqlite"):
        store_path("postgresql://host/db")
    store = TrialStore(tmp_path)
    assert store.url == f"sqlite:///{(tmp_path / STORE_FILE).resolve()}"


def test_claim_until_exhausted_then_none(tmp_path):
    store = TrialStore(tmp_path)
    store.create_sweep("s1", {"k": 1})
    store.create_sweep("s1", {"k": 2})  # a second create keeps the first
    assert store.sweep_config("s1") == {"k": 1}
    seen = []
    while (record := store.claim("s1", "w", grid_proposer)) is not None:
        assert record.state == "running" and record.worker == "w"
        seen.append(record.params)
        store.finish("s1", record.id, "finished", metric=float(record.number))
    assert seen == GRID
    records = store.trials("s1")
    assert [r.id for r in records] == [f"t{i:04d}" for i in range(1, len(GRID) + 1)]
    assert all(r.state == "finished" and r.metric == r.number for r in records)


def test_limit_counts_every_trial(tmp_path):
    store = TrialStore(tmp_path)
    first = store.claim("s", "w", grid_proposer, limit=2)
    store.finish("s", first.id, "failed", error="boom")
    second = store.claim("s", "w", grid_proposer, limit=2)
    assert second is not None
    assert store.claim("s", "w", grid_proposer, limit=2) is None
    assert store.get("s", first.id).error == "boom"


def test_released_trial_is_claimed_again_with_same_params(tmp_path):
    store = TrialStore(tmp_path)
    first = store.claim("s", "a", grid_proposer)
    store.report("s", first.id, [{"m": 1.0}])
    store.release("s", first.id)
    again = store.claim("s", "b", grid_proposer)
    assert again.id == first.id and again.params == first.params
    assert again.worker == "b" and again.history == []


def test_stale_running_trial_is_reset(tmp_path):
    store = TrialStore(tmp_path, stale_after=0.2)
    first = store.claim("s", "dead", grid_proposer)
    fresh = store.claim("s", "alive", grid_proposer)
    assert fresh.id != first.id
    time.sleep(0.3)
    store.heartbeat("s", fresh.id)  # the live worker's trial stays its own
    taken = store.claim("s", "new", grid_proposer)
    assert taken.id == first.id and taken.worker == "new"
    assert store.get("s", fresh.id).state == "running"
    assert store.running_elsewhere("s", "new") == [store.get("s", fresh.id)]


def test_heartbeat_thread_keeps_trial_fresh(tmp_path):
    store = TrialStore(tmp_path)
    record = store.claim("s", "w", grid_proposer)
    before = store.get("s", record.id).heartbeat
    with Heartbeat(store, "s", record.id, every=0.05):
        time.sleep(0.3)
    assert store.get("s", record.id).heartbeat > before


def test_finish_keeps_history_and_summary(tmp_path):
    store = TrialStore(tmp_path)
    record = store.claim("s", "w", grid_proposer)
    final = store.finish(
        "s",
        record.id,
        "stopped",
        metric=float("nan"),
        summary={"x": 1},
        run_dir=tmp_path / "r",
        history=[{"m": 0.5}],
    )
    assert final.state == "stopped" and final.metric is None  # NaN is not a metric
    assert final.summary == {"x": 1} and final.history == [{"m": 0.5}]
    assert final.run_dir == str(tmp_path / "r")
    assert final.as_line()["state"] == "stopped"


def _claim_all(path: str, worker: str, queue) -> None:
    store = TrialStore(path)
    while (record := store.claim("s", worker, grid_proposer)) is not None:
        time.sleep(0.01)  # let the other process in between claims
        store.finish("s", record.id, "finished", metric=0.0)
        queue.put((worker, record.params["a"], record.params["b"]))
    queue.put((worker, None, None))


def test_two_processes_share_a_grid_without_duplicates(tmp_path):
    TrialStore(tmp_path).create_sweep("s", {})
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_claim_all, args=(str(tmp_path), f"w{i}", queue)) for i in range(2)
    ]
    for worker in workers:
        worker.start()
    done, points = 0, []
    while done < 2:
        worker, a, b = queue.get(timeout=30)
        if a is None:
            done += 1
        else:
            points.append((a, b))
    for worker in workers:
        worker.join(timeout=10)
    assert sorted(points) == sorted((p["a"], p["b"]) for p in GRID)
    records = TrialStore(tmp_path).trials("s")
    assert len(records) == len(GRID)
    assert len({tuple(sorted(r.params.items())) for r in records}) == len(GRID)

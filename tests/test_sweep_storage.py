"""Sweeps in Optuna's RDB storage: several worker processes, a killed worker, bad URLs.

Workers are real ``jigsawkit sweep`` processes on one sweep: one started with a sweep file
and ``--storage URL``, the others added with ``--join URL``. Trials are tiny (a fake probe
plugin on an untrained exported backbone), so the time goes to starting processes.
The same scenario runs on SQLite everywhere and on a throw-away PostgreSQL server started
here (``initdb``/``pg_ctl`` from Debian's ``postgresql`` package, which ``.ci/run``
installs); the PostgreSQL part skips, saying why, only where no server can be started.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from jigsawkit.cli import main

PLUGIN = '''
import os
import time
from pathlib import Path

from jigsawkit import register_evaluator


class DbProbe:
    """Logs "start"/"end" lines (lr, pid) to a shared file; waits at ``gate`` (a file)
    until the test lets it go, so the test decides when workers are mid-trial."""

    def __init__(self, lr, epochs, log, gate):
        self.lr, self.epochs, self.log, self.gate = lr, epochs, Path(log), Path(gate)

    def _line(self, what):
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{what} {self.lr} {os.getpid()}\\n".encode())
        os.close(fd)

    def evaluate(self, ctx):
        self._line("start")
        deadline = time.time() + 120
        while not self.gate.exists() and time.time() < deadline:
            time.sleep(0.05)
        loss = abs(self.lr - 0.01) * 10
        for epoch in range(1, self.epochs + 1):
            ctx.log({"probe/db_probe/val_loss": loss + (self.epochs - epoch) * 0.1}, epoch)
        self._line("end")
        return {"val_loss": loss, "test_top1": 1.0 / (1.0 + loss)}


@register_evaluator("db_probe", schema={"properties": {
    "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.01},
    "epochs": {"type": "integer", "minimum": 1, "default": 2},
    "log": {"type": "string"},
    "gate": {"type": "string"}}})
def db_probe(**params):
    """A fake probe whose val loss is |lr - 0.01| * 10."""
    return DbProbe(**params)
'''

LRS = [0.1, 0.03, 0.01, 0.003, 0.001, 0.0003]

SWEEP = """\
experiment:
  name: db
  device: cpu
  cache_dir: {folder}/cache
  checkpoint: {checkpoint}
  trackers: [console]
  backbone: {{name: cfn, channels: [8, 16], kernel_sizes: [3, 3], tile_fc: 32, input_size: 24}}
  evaluate:
    - {{name: db_probe, log: {folder}/probe.log, gate: {folder}/gate}}
sweep:
  method: grid
  metric: {{name: probe.db_probe.val_loss, goal: minimize}}
  parameters:
    evaluate[0].lr: {{values: {lrs}}}
strategy: {{name: {strategy}, heartbeat_interval: 1, grace_period: 2{extra}}}
output_dir: {folder}/sweeps
"""


@pytest.fixture
def folder(tmp_path, clean_registries) -> Path:
    """A sweep's folder: the probe plugin and an exported (untrained) tiny backbone."""
    from jigsawkit.registry import registry
    from jigsawkit.training.export import export_feature_extractor

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "db_probe.py").write_text(PLUGIN)
    params = {"channels": [8, 16], "kernel_sizes": [3, 3], "tile_fc": 32, "input_size": 24}
    backbone = registry("backbone").build("cfn", **params)
    export_feature_extractor(
        backbone, tmp_path / "fe.pt", {"backbone": {"name": "cfn", "params": params}}
    )
    return tmp_path


def write_sweep(folder: Path, strategy: str = "wandb") -> Path:
    path = folder / "sweep.yaml"
    path.write_text(
        SWEEP.format(
            folder=folder,
            checkpoint=folder / "fe.pt",
            lrs=LRS,
            strategy=strategy,
            # no offline W&B run per trial: starting W&B's service costs seconds a trial
            extra=", log_trials: false" if strategy == "wandb" else "",
        )
    )
    return path


def log_lines(folder: Path) -> list[tuple[str, float, int]]:
    path = folder / "probe.log"
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(what, float(lr), int(pid)) for what, lr, pid in rows]


def wait_for(condition, what: str, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def worker(*args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "jigsawkit", "sweep", *args, "--no-progress"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- a throw-away PostgreSQL server -----------------------------------------------------------


def _postgres_bindir() -> Path | None:
    candidates = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """A PostgreSQL cluster for this test session; yields the URL of its server (no db).

    ``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres``
    user (``runuser``); trust authentication, listening on 127.0.0.1 only.
    """
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql "
            "package (.ci/run does)"
        )
    run_as: list[str] = []
    owner = None
    if os.geteuid() == 0:
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run initdb as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing: cannot run initdb as postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="jigsawkit-pg-"))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, port = root / "data", _free_port()
    try:
        subprocess.run(
            [*run_as, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-w"]
            + ["-l", str(root / "server.log"), "start"],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except subprocess.CalledProcessError as error:
        shutil.rmtree(root, ignore_errors=True)
        raise AssertionError(
            f"could not start PostgreSQL: {error.stderr.decode(errors='replace')}"
        ) from None
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh database on the session's server."""
    import psycopg

    name = f"sweep_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{postgres_server}/{name}"


# -- several workers, one killed ---------------------------------------------------------------


def stored_trials(url: str, sweep_id: str) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=sweep_id, storage=url).get_trials(deepcopy=False)


def run_shared_sweep(folder: Path, url: str, strategy: str) -> None:
    """A worker killed mid-trial, then two workers (FILE --storage, --join URL) at once.

    Every grid point ends exactly once, the killed worker's trial is run again (same
    id, by a live worker), both live workers run trials, and the outputs are written.
    """
    path = write_sweep(folder, strategy)
    out = folder / "out"
    victim = worker(str(path), "--storage", url, "--out", str(out))
    try:
        wait_for(lambda: any(pid == victim.pid for _, _, pid in log_lines(folder)), "a trial")
    finally:
        victim.send_signal(signal.SIGKILL)  # in the middle of its trial (held at the gate)
        victim.communicate(timeout=30)
    killed_lr = log_lines(folder)[0][1]

    first = worker(str(path), "--storage", url, "--out", str(out))
    second = worker("--join", url)
    live = {first.pid, second.pid}
    try:
        # both are inside a trial before any trial may end: the two really share the sweep
        wait_for(
            lambda: {pid for what, _, pid in log_lines(folder) if what == "start"} >= live,
            "both workers to start a trial",
        )
        (folder / "gate").touch()
        outputs = [p.communicate(timeout=300) for p in (first, second)]
    finally:
        for process in (first, second):
            if process.poll() is None:  # a failed wait: leave no worker behind
                process.kill()
                process.communicate()
    for process, (_, stderr) in zip((first, second), outputs):
        assert process.returncode == 0, stderr

    lines = log_lines(folder)
    ended = sorted(lr for what, lr, _ in lines if what == "end")
    assert ended == sorted(LRS), "every trial ran to its end exactly once"
    assert {pid for what, _, pid in lines if what == "end"} == live
    restarted = [pid for what, lr, pid in lines if what == "start" and lr == killed_lr]
    assert restarted[0] == victim.pid and restarted[1] in live and len(restarted) == 2

    info = json.loads((out / "sweep.json").read_text())
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert sorted(t["id"] for t in trials) == [f"t{i:04d}" for i in range(1, 7)]
    assert all(t["state"] == "finished" for t in trials)
    killed = next(t for t in trials if t["params"]["evaluate.0.lr"] == killed_lr)
    attempts = [
        t for t in stored_trials(url, info["id"]) if t.user_attrs["trial_id"] == killed["id"]
    ]
    assert [a.state.name for a in attempts] == ["FAIL", "COMPLETE"], "failed, then retried"
    assert (out / "trials" / f"{killed['id']}.attempt1").is_dir(), "the dead attempt is kept"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["sweep.trials"] == 6 and summary["sweep.finished"] == 6
    assert summary["sweep.best_params"] == {"evaluate.0.lr": 0.01}
    assert summary["sweep.best_test_top1"] == pytest.approx(1.0)
    assert "evaluate:" in (out / "best.yaml").read_text()
    assert main(["validate", str(out / "best.yaml"), "--quiet"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["wandb", "optuna"])
def test_workers_share_a_sqlite_sweep_and_retry_a_killed_trial(folder, strategy):
    run_shared_sweep(folder, f"sqlite:///{folder / 'trials.db'}", strategy)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["wandb", "optuna"])
def test_workers_share_a_postgresql_sweep_and_retry_a_killed_trial(folder, postgres_url, strategy):
    run_shared_sweep(folder, postgres_url, strategy)


def test_the_password_of_a_storage_url_is_never_written(folder, postgres_url):
    from jigsawkit.search.storage import shown_url

    assert shown_url("postgresql://me:s3cret@db:5432/sw") == "postgresql://me@db:5432/sw"
    secret = postgres_url.replace("postgres@", "postgres:s3cret@")  # trust: any password
    path = write_sweep(folder)
    (folder / "gate").touch()
    out = folder / "out"
    assert main(["sweep", str(path), "--storage", secret, "--out", str(out), "--count", "1"]) == 0
    info = json.loads((out / "sweep.json").read_text())
    assert info["storage"] == postgres_url
    written = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
    assert "s3cret" not in written
    # the study records the sweep, so a URL is all a joining worker needs
    assert main(["sweep", "--join", postgres_url, "--count", "1", "--no-progress"]) == 0
    assert len((out / "trials.jsonl").read_text().splitlines()) == 2


# -- storage URLs that cannot work: one line, exit 2, nothing created -------------------------


def _refused(capsys, args: list[str], created: list[Path]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for path in created:
        assert not path.exists(), f"{path} was created"
    return err[0]


@pytest.mark.parametrize(
    "url, message",
    [
        ("postgresql://me@127.0.0.1:{port}/sweeps", "cannot connect"),
        ("oracle://me@db/sweeps", "unsupported database 'oracle'"),
        ("not a url", "not a database URL"),
        ("sqlite:////nowhere/at/all/trials.db", "no such folder /nowhere/at/all"),
    ],
)
def test_a_storage_that_cannot_work_is_refused_before_the_sweep_folder(
    folder, capsys, url, message
):
    path = write_sweep(folder)
    url = url.format(port=_free_port())
    out = folder / "out"
    line = _refused(capsys, ["sweep", str(path), "--storage", url, "--out", str(out)], [out])
    assert message in line
    line = _refused(capsys, ["sweep", str(path), "--storage", url], [folder / "sweeps"])
    assert message in line


def test_a_missing_database_driver_is_named(folder, capsys, monkeypatch):
    path = write_sweep(folder)
    out = folder / "out"
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    args = ["sweep", str(path), "--storage", "postgresql://me@127.0.0.1/db", "--out", str(out)]
    line = _refused(capsys, args, [out])
    assert "driver is missing" in line and "pip install 'psycopg[binary]'" in line
    with contextlib.suppress(ImportError):
        import MySQLdb  # noqa: F401

        return
    args = ["sweep", str(path), "--storage", "mysql://me@127.0.0.1/db", "--out", str(out)]
    assert "driver is missing" in _refused(capsys, args, [out])


def test_join_refuses_what_it_cannot_read(folder, capsys):
    port = _free_port()
    line = _refused(capsys, ["sweep", "--join", f"postgresql://me@127.0.0.1:{port}/s"], [])
    assert line.startswith("error: --join postgresql://me@127.0.0.1") and "cannot connect" in line
    missing = folder / "none.db"
    line = _refused(capsys, ["sweep", "--join", f"sqlite:///{missing}"], [missing])
    assert "no such file" in line
    empty = folder / "empty.db"
    empty.touch()
    line = _refused(capsys, ["sweep", "--join", f"sqlite:///{empty}"], [])
    assert "no sweep there" in line
    line = _refused(capsys, ["sweep", "--join", str(folder), "--storage", "sqlite:///x.db"], [])
    assert "leave out --storage" in line


def test_join_by_url_where_the_sweep_folder_cannot_be_made(folder, capsys):
    """Another machine without the first one's folder: one line naming --out."""
    path = write_sweep(folder)
    (folder / "gate").touch()
    url = f"sqlite:///{folder / 'trials.db'}"
    out = folder / "out"
    args = ["sweep", str(path), "--storage", url, "--out", str(out), "--count", "1"]
    assert main([*args, "--no-progress"]) == 0
    capsys.readouterr()
    out.rename(folder / "moved")
    (folder / "out").write_text("a file where the sweep folder was")
    line = _refused(capsys, ["sweep", "--join", url, "--count", "1"], [])
    assert "cannot use the sweep's folder" in line and "--out DIR" in line
    assert main(["sweep", "--join", url, "--out", str(folder / "here"), "--count", "1"]) == 0
    assert len((folder / "here" / "trials.jsonl").read_text().splitlines()) == 1
    summary = json.loads((folder / "here" / "summary.json").read_text())
    assert summary["sweep.trials"] == 2, "the summary counts every worker's trials"

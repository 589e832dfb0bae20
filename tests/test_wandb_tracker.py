"""The wandb tracker: offline files inside the run dir, nothing in HOME, no prompt, no network."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wandb_records import iter_records

from jigsawkit.errors import UserError
from jigsawkit.registry import registry
from jigsawkit.tracking.wandb_tracker import (
    find_online_credentials,
    require_online_credentials,
    safe_artifact_name,
)

WANDB_ENV = (
    "WANDB_DIR",
    "WANDB_CACHE_DIR",
    "WANDB_CONFIG_DIR",
    "WANDB_DATA_DIR",
    "WANDB_ARTIFACT_DIR",
    "WANDB_CONSOLE",
    "WANDB_SILENT",
)


@pytest.fixture
def fake_home(tmp_path, monkeypatch) -> Path:
    """An empty HOME and working directory, no W&B key or W&B paths in the environment."""
    home = tmp_path / "home"
    home.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    for key in (
        "WANDB_API_KEY",
        "WANDB_IDENTITY_TOKEN_FILE",
        "WANDB_BASE_URL",
        "NETRC",
        "XDG_CONFIG_HOME",
        "XDG_CACHE_HOME",
        "XDG_DATA_HOME",
        *WANDB_ENV,
    ):
        monkeypatch.delenv(key, raising=False)
    return home


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def test_offline_run_files_land_in_the_run_dir_and_nothing_in_home(fake_home, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "demo-1"
    before = {key: os.environ.get(key) for key in WANDB_ENV}
    tracker = registry("tracker").build(
        "wandb", run_dir=run_dir, experiment="demo", mode="offline", run_name="demo-lr3", tags=["t"]
    )
    tracker.start({"name": "demo", "pretrain": {"epochs": 2}})
    assert os.environ["WANDB_DIR"] == str(run_dir)  # set while the run lives
    for step in range(3):
        tracker.log({"pretrain/train_loss": 1.0 / (step + 1)}, step)
    tracker.summary({"pretrain.test_top1": 0.5})
    tracker.artifact(run_dir / "missing.pt", "demo-feature-extractor", "model")  # offline: skip
    tracker.finish(True)

    run_files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1 and run_files[0].stat().st_size > 0
    assert files_under(fake_home) == []
    assert files_under(tmp_path / "cwd") == []
    assert {key: os.environ.get(key) for key in WANDB_ENV} == before  # restored
    err = capsys.readouterr().err
    assert f"wandb sync {run_files[0].parent}" in err
    assert tracker.sync_dir == run_files[0].parent
    run_record = next(r.run for r in iter_records(run_files[0]) if r.HasField("run"))
    assert (run_record.display_name, run_record.project, list(run_record.tags)) == (
        "demo-lr3",
        "jigsawkit",
        ["t"],
    )


def test_online_without_a_key_fails_at_once_with_one_line(fake_home, tmp_path):
    tracker = registry("tracker").build(
        "wandb", run_dir=tmp_path / "run", experiment="demo", mode="online"
    )
    started = time.perf_counter()
    with pytest.raises(UserError) as caught:
        tracker.start({"name": "demo"})
    assert time.perf_counter() - started < 1.0
    message = str(caught.value)
    assert "\n" not in message
    assert "wandb login" in message and "WANDB_API_KEY" in message and "mode: offline" in message
    assert not (tmp_path / "run").exists()
    assert "WANDB_DIR" not in os.environ


def test_credentials_are_found_where_wandb_looks(fake_home, monkeypatch):
    assert find_online_credentials() is None
    with pytest.raises(UserError):
        require_online_credentials()

    (fake_home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    assert "netrc" in require_online_credentials()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert find_online_credentials() is None  # that entry is for another server

    config_dir = fake_home / "wandb-config"
    config_dir.mkdir()
    (config_dir / "settings").write_text("[default]\napi_key = xyz\n")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(config_dir))
    assert find_online_credentials() == "wandb settings file"

    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert require_online_credentials() == "WANDB_API_KEY"


def test_disabled_mode_writes_nothing(fake_home, tmp_path):
    run_dir = tmp_path / "run"
    tracker = registry("tracker").build("wandb", run_dir=run_dir, experiment="d", mode="disabled")
    tracker.start({"name": "d"})
    tracker.log({"pretrain/train_loss": 1.0}, 0)
    tracker.log({"probe/linear_probe/val_top1": 0.5}, 0)
    tracker.summary({"a": 1.0})
    tracker.finish(True)
    assert not run_dir.exists() or files_under(run_dir) == []
    assert files_under(fake_home) == []
    assert tracker.sync_dir is None


def test_bad_mode_and_artifact_names():
    with pytest.raises(UserError, match="tracker 'wandb': mode: expected .* found 'onlin'"):
        registry("tracker").build("wandb", run_dir="x", mode="onlin")
    assert safe_artifact_name("quick start/feature extractor:v1") == (
        "quick-start-feature-extractor-v1"
    )


def test_wandb_steps_stay_increasing_when_a_stage_restarts():
    tracker = registry("tracker").build("wandb", run_dir="x")
    assert [tracker._wandb_step(s) for s in (0, 5, 10, 10)] == [0, 5, 10, 10]
    assert [tracker._wandb_step(s) for s in (0, 1, 2)] == [11, 12, 13]
    assert [tracker._wandb_step(s) for s in (0, 1)] == [14, 15]


def test_registering_trackers_does_not_import_wandb():
    code = (
        "import sys, jigsawkit.tracking, jigsawkit.commands.report;"
        "from jigsawkit.registry import registry; registry('tracker').get('wandb');"
        "sys.exit(1 if 'wandb' in sys.modules or 'matplotlib' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0

"""Online W&B sweeps, tested up to the network: wandb.sweep/agent/init/config are fakes.

What must hold: the sweep file's W&B configuration reaches ``wandb.sweep`` exactly
(parameter names written ``evaluate.0.lr``); each trial calls ``wandb.init()``, reads its
parameters from ``wandb.config`` and reports into that run; ``--sweep-id`` joins an
existing sweep; without a key the command stops at once with one line and exit code 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from cli_process import run_jigsawkit

from jigsawkit.cli import main

PLUGIN = '''
from jigsawkit import register_evaluator


class OnlineProbe:
    def __init__(self, lr, batch_size):
        self.lr, self.batch_size = lr, batch_size

    def evaluate(self, ctx):
        loss = self.lr * 100 + self.batch_size / 1000
        for epoch in (1, 2):
            ctx.log({"probe/on_probe/val_loss": loss + 0.1 / epoch}, epoch)
        return {"val_loss": loss, "test_top1": 0.5}


@register_evaluator("on_probe", schema={"properties": {
    "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.01},
    "batch_size": {"type": "integer", "minimum": 1, "default": 64}}})
def on_probe(**params):
    """A fake probe for the online tests."""
    return OnlineProbe(**params)
'''

SWEEP = """\
experiment:
  name: online
  device: cpu
  cache_dir: cache
  checkpoint: {checkpoint}
  trackers:
    - name: console
    - {{name: wandb, mode: offline}}
  backbone: {{name: cfn, channels: [8, 16], kernel_sizes: [3, 3], tile_fc: 32, input_size: 24}}
  evaluate:
    - name: on_probe
sweep:
  method: random
  metric: {{name: probe.on_probe.val_loss, goal: minimize}}
  run_cap: 3
  parameters:
    evaluate[0].lr: {{distribution: uniform, min: 0.0001, max: 0.01}}
    evaluate.0.batch_size: {{values: [64, 128, 256]}}
strategy: {{name: wandb, mode: online, project: jigsawkit-tests, entity: lab}}
"""

EXPECTED_WANDB_CONFIG = {
    "method": "random",
    "metric": {"name": "probe.on_probe.val_loss", "goal": "minimize"},
    "run_cap": 3,
    "parameters": {
        "evaluate.0.lr": {"distribution": "uniform", "min": 0.0001, "max": 0.01},
        "evaluate.0.batch_size": {"values": [64, 128, 256]},
    },
}


class FakeRun:
    def __init__(self, calls: list):
        self.calls = calls
        self.summary: dict = {}
        self.logged: list[dict] = []
        self.exit_code = None

    def log(self, row: dict, step=None) -> None:
        self.logged.append(dict(row))

    def finish(self, exit_code: int = 0) -> None:
        self.exit_code = exit_code
        self.calls.append(("finish", exit_code))


class FakeWandb:
    """Records what reaches W&B; the 'server' picks parameters for each agent run."""

    def __init__(self, monkeypatch, choices: list[dict]):
        import wandb

        self.wandb = wandb
        self.calls: list = []
        self.runs: list[FakeRun] = []
        self.choices = list(choices)
        monkeypatch.setattr(wandb, "sweep", self.sweep)
        monkeypatch.setattr(wandb, "agent", self.agent)
        monkeypatch.setattr(wandb, "init", self.init)
        monkeypatch.setattr(wandb, "config", {}, raising=False)
        monkeypatch.setattr(wandb, "run", None, raising=False)

    def sweep(self, sweep=None, project=None, entity=None, **kwargs):
        self.calls.append(("sweep", json.loads(json.dumps(sweep)), project, entity))
        return "abc123"

    def agent(self, sweep_id, function=None, count=None, project=None, entity=None, **kw):
        self.calls.append(("agent", sweep_id, count, project, entity))
        for _ in range(count):
            # what the agent does: the next run's parameters become wandb.config
            self.next_config = self.choices.pop(0)
            function()

    def init(self, *args, **kwargs):
        self.calls.append(("init", kwargs))
        run = FakeRun(self.calls)
        self.runs.append(run)
        self.wandb.config = dict(self.next_config)
        self.wandb.run = run
        return run


@pytest.fixture
def folder(tmp_path, clean_registries, monkeypatch) -> Path:
    """A sweep folder: plugin, an exported tiny backbone, a W&B key in the environment."""
    from jigsawkit.registry import registry
    from jigsawkit.training.export import export_feature_extractor

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "on_probe.py").write_text(PLUGIN)
    params = {"channels": [8, 16], "kernel_sizes": [3, 3], "tile_fc": 32, "input_size": 24}
    backbone = registry("backbone").build("cfn", **params)
    checkpoint = export_feature_extractor(
        backbone, tmp_path / "fe.pt", {"backbone": {"name": "cfn", "params": params}}
    )
    (tmp_path / "sweep.yaml").write_text(SWEEP.format(checkpoint=checkpoint))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    return tmp_path


CHOICES = [
    {"evaluate.0.lr": 0.002, "evaluate.0.batch_size": 128},
    {"evaluate.0.lr": 0.0005, "evaluate.0.batch_size": 64},
    {"evaluate.0.lr": 0.009, "evaluate.0.batch_size": 256},
]


def test_online_sweep_sends_the_exact_config_and_reads_wandb_config(folder, monkeypatch):
    fake = FakeWandb(monkeypatch, CHOICES)
    assert main(["sweep", "sweep.yaml", "--out", "out", "--no-progress"]) == 0
    sweep_call = [c for c in fake.calls if c[0] == "sweep"]
    assert sweep_call == [("sweep", EXPECTED_WANDB_CONFIG, "jigsawkit-tests", "lab")]
    agent_call = [c for c in fake.calls if c[0] == "agent"]
    assert agent_call == [("agent", "abc123", 3, "jigsawkit-tests", "lab")]
    assert [c[1].get("mode") for c in fake.calls if c[0] == "init"] == ["online"] * 3
    lines = [json.loads(x) for x in (folder / "out" / "trials.jsonl").read_text().splitlines()]
    assert [t["params"] for t in lines] == CHOICES, "each trial ran wandb.config's values"
    for run, trial in zip(fake.runs, lines):
        loss = (
            trial["params"]["evaluate.0.lr"] * 100 + trial["params"]["evaluate.0.batch_size"] / 1000
        )
        assert trial["metric"] == pytest.approx(loss)
        assert run.summary["probe.on_probe.val_loss"] == pytest.approx(loss)
        assert [r["probe/on_probe/val_loss"] for r in run.logged if "probe/on_probe/val_loss" in r]
        assert run.exit_code == 0
        config = yaml.safe_load((Path(trial["run_dir"]) / "config.yaml").read_text())
        assert config["evaluate"][0]["lr"] == trial["params"]["evaluate.0.lr"]
        assert "wandb" not in [t["name"] for t in config["trackers"]], (
            "the agent's run gets the metrics; no second W&B run per trial"
        )
    summary = json.loads((folder / "out" / "summary.json").read_text())
    assert summary["sweep.id"] == "abc123"
    assert summary["sweep.best_params"] == CHOICES[1]
    assert summary["sweep.best_test_top1"] == 0.5


def test_sweep_id_joins_an_existing_sweep(folder, monkeypatch):
    fake = FakeWandb(monkeypatch, CHOICES[:2])
    rc = main(["sweep", "sweep.yaml", "--sweep-id", "xyz789", "--count", "2", "--out", "o2"])
    assert rc == 0
    assert not [c for c in fake.calls if c[0] == "sweep"], "joining creates no sweep"
    assert [c for c in fake.calls if c[0] == "agent"] == [
        ("agent", "xyz789", 2, "jigsawkit-tests", "lab")
    ]
    assert json.loads((folder / "o2" / "sweep.json").read_text())["id"] == "xyz789"


def test_online_without_a_key_is_one_line_and_exit_2(folder, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("HOME", str(folder))  # no ~/.netrc, no wandb settings
    for name in ("NETRC", "WANDB_CONFIG_DIR", "WANDB_DIR", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    import wandb

    def never(*args, **kwargs):
        raise AssertionError("W&B must not be contacted without a key")

    monkeypatch.setattr(wandb, "sweep", never)
    monkeypatch.setattr(wandb, "login", never)
    start = time.perf_counter()
    assert main(["sweep", "sweep.yaml", "--out", "o3"]) == 2
    assert time.perf_counter() - start < 1.0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "API key" in err[0] and "mode: offline" in err[0]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    result = run_jigsawkit("sweep", "sweep.yaml", "--out", "o4", env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (folder / "o4" / "trials.jsonl").exists()

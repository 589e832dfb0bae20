"""The run directory: resolved config, metrics.jsonl, summary.json, environment record.

Layout of ``runs/<name>-<timestamp>/``::

    config.yaml          the resolved experiment (defaults filled) this run used
    environment.json     package versions, device, git commit
    metrics.jsonl        one JSON object per logged step: {"step": .., "time": .., "<metric>": ..}
    summary.json         final metrics as flat dotted keys (pretrain.test_top1, ...)
    checkpoints/last.pt  the latest training checkpoint (resumable)
    feature_extractor.pt the exported, frozen feature extractor
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

# Re-exported: callers have long imported the atomic writers from here.
from jigsawkit.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from jigsawkit.json_values import json_default

__all__ = [
    "RunDirectory",
    "atomic_write_bytes",
    "atomic_write_text",
    "environment_record",
    "git_commit",
    "new_run_dir",
    "write_json",
]


# What a run directory holds besides the exported feature extractor (probe_<name>.json
# too): an experiment's `pretrain.export` may not name one of these.
_RUN_FILES = (
    "config.yaml",
    "environment.json",
    "metrics.jsonl",
    "summary.json",
    "checkpoints",
    "wandb",
    "error.txt",
)


def is_run_file(name: str) -> bool:
    """Whether ``name`` (a top-level entry of a run directory) is one the run writes."""
    return name in _RUN_FILES or (name.startswith("probe_") and name.endswith(".json"))


def write_json(path: str | Path, data: Any, kill_point: str | None = None) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, default=json_default) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), kill_point)


def new_run_dir(output_dir: str | Path, name: str) -> Path:
    """``<output_dir>/<name>-<YYYYmmdd-HHMMSS>``, made unique if two runs start together."""
    from jigsawkit.paths import check_writable_dir

    check_writable_dir(output_dir, "output_dir")  # before exists() meets a too-long name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(output_dir) / f"{name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_record(device: str | None = None) -> dict:
    from importlib import metadata

    versions = {}
    for package in ("jigsawkit", "torch", "torchvision", "timm", "wandb", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    record = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "device": device,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import torch

        if torch.cuda.is_available():
            record["cuda_device"] = torch.cuda.get_device_name(0)
        record["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return record


def drop_partial_line(path: Path) -> None:
    """Cut a half-written last line (a run killed mid-append) off an append-only log, so
    lines appended by a resumed run do not glue onto it."""
    try:
        with open(path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            handle.seek(0)
            data = handle.read()
            handle.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        return


class RunDirectory:
    """Writes a run's files; every whole-file write is atomic, metrics are appended."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self._summary: dict[str, Any] = {}
        if self.summary_path.exists():
            self._summary = json.loads(self.summary_path.read_text())
        drop_partial_line(self.metrics_path)

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def write_config(self, config: dict) -> None:
        from jigsawkit.config.experiment import dump_yaml

        atomic_write_text(self.path / "config.yaml", dump_yaml(config))

    def write_environment(self, record: dict) -> None:
        write_json(self.path / "environment.json", record)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {"step": step, "time": round(time.time(), 3)}
        row.update({k: json_default(v) for k, v in metrics.items()})
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def update_summary(self, values: dict[str, Any]) -> None:
        self._summary.update({k: json_default(v) for k, v in values.items()})
        write_json(self.summary_path, self._summary, "summary-write")

    def forget_summary(self, *keys: str) -> None:
        """Drop ``keys`` from summary.json (what an earlier, failed attempt recorded)."""
        if any(key in self._summary for key in keys):
            for key in keys:
                self._summary.pop(key, None)
            write_json(self.summary_path, self._summary)

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self._summary)

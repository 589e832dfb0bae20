"""The ``wandb`` tracker: Weights & Biases, offline by default, never prompting.

- The mode is always explicit (``offline`` unless the experiment says otherwise), so
  wandb never asks whether to log in.
- ``online`` needs a key: it is looked for *before* wandb is imported
  (:func:`require_online_credentials`); without one the run stops at once with one line
  saying how to fix it, with no prompt and no network.
- W&B's files stay inside the run directory (``<run_dir>/wandb/...``): its run folder,
  cache, data, artifact and (offline) config folders are pointed there through the
  ``WANDB_*`` environment variables, set for the run's lifetime only and restored after.
- Each stage keeps its own step: W&B wants one increasing step per run, while the
  probe's epochs restart at 0 after pretraining; every stage gets ``<stage>/step`` as
  its x-axis (``define_metric``) and W&B's own step is kept increasing.
"""

from __future__ import annotations

import configparser
import netrc
import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jigsawkit.errors import UserError, one_line
from jigsawkit.tracking.base import Tracker

DEFAULT_BASE_URL = "https://api.wandb.ai"

MODES = ("online", "offline", "disabled")
WRITE_TIMEOUT_S = 20.0

FIX_HINT = (
    "run `wandb login` or `export WANDB_API_KEY=...`, or use `mode: offline` "
    "(upload later with `wandb sync`)"
)


def _settings_files() -> list[Path]:
    """wandb's settings files, most specific last: global, then the workspace one."""
    config_dir = os.environ.get("WANDB_CONFIG_DIR")
    root = Path(config_dir).expanduser() if config_dir else Path("~/.config/wandb").expanduser()
    workspace_root = Path(os.environ.get("WANDB_DIR") or ".").expanduser()
    return [root / "settings", workspace_root / "wandb" / "settings"]


def _read_settings() -> dict[str, str]:
    values: dict[str, str] = {}
    for path in _settings_files():
        parser = configparser.ConfigParser()
        try:
            parser.read(path, encoding="utf-8")
            values.update(parser.items("default"))
        except (OSError, configparser.Error, UnicodeDecodeError):
            continue
    return values


def _netrc_path() -> Path | None:
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    for name in ("~/.netrc", "~/_netrc"):
        path = Path(name).expanduser()
        if path.exists():
            return path
    return None


def _netrc_has(host: str) -> bool:
    path = _netrc_path()
    if path is None or not path.is_file():
        return False
    try:
        auth = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError, UnicodeDecodeError):
        return False
    return bool(auth and auth[2])


def find_online_credentials() -> str | None:
    """Where wandb would find a key (a short description), or None. No import, no network.

    Looked for like wandb does: ``WANDB_API_KEY``, an identity token file, ``api_key`` in
    a wandb settings file, a ``.netrc`` entry for the server (``WANDB_BASE_URL``,
    default api.wandb.ai).
    """
    if os.environ.get("WANDB_API_KEY", "").strip():
        return "WANDB_API_KEY"
    if os.environ.get("WANDB_IDENTITY_TOKEN_FILE", "").strip():
        return "WANDB_IDENTITY_TOKEN_FILE"
    settings = _read_settings()
    if settings.get("api_key", "").strip():
        return "wandb settings file"
    base_url = os.environ.get("WANDB_BASE_URL") or settings.get("base_url") or DEFAULT_BASE_URL
    host = urlparse(base_url).hostname or base_url
    if _netrc_has(host):
        return f"~/.netrc ({host})"
    return None


def require_online_credentials(what: str = "wandb mode 'online'") -> str:
    """Raise ``UserError`` (one line, how to fix it) unless a W&B key can be found.

    Returns where the key was found. Call it before importing wandb: it never prompts
    and never touches the network, so a missing key is reported at once.
    """
    found = find_online_credentials()
    if found is None:
        raise UserError(f"{what} needs a W&B API key and none was found; {FIX_HINT}")
    return found


def safe_artifact_name(name: str) -> str:
    """W&B artifact names allow letters, digits, ``-``, ``_`` and ``.``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "artifact"


def metric_stage(name: str) -> str:
    """``pretrain/val_top1`` -> ``pretrain``; probes keep the evaluator: ``probe/knn``."""
    parts = name.split("/")
    return "/".join(parts[:2]) if parts[0] == "probe" and len(parts) >= 3 else parts[0]


class _EnvironmentPatch:
    """Sets environment variables now and puts the old values back on ``restore``."""

    def __init__(self, values: dict[str, str]):
        self._saved = {key: os.environ.get(key) for key in values}
        os.environ.update(values)

    def restore(self) -> None:
        for key, old in self._saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        self._saved = {}


class WandbTracker(Tracker):
    """Logs to a W&B run (offline, online or disabled); files under the run directory."""

    name = "wandb"

    def __init__(
        self,
        run_dir: str | Path,
        experiment: str = "experiment",
        *,
        mode: str,
        project: str,
        entity: str | None,
        group: str | None,
        tags: list[str] | None,
        run_name: str | None,
        dir: str | None,  # noqa: A002 (the W&B parameter's own name)
        cache_dir: str | None,
        log_artifacts: bool,
        quiet: bool,
    ):
        if mode not in MODES:
            raise UserError(f"wandb tracker: mode '{mode}' is not one of {', '.join(MODES)}")
        self.run_dir = Path(run_dir)
        self.mode = mode
        self.project = project
        self.entity = entity
        self.group = group
        self.tags = list(tags or [])
        self.run_name = run_name or experiment
        self.dir = Path(dir).expanduser() if dir else self.run_dir
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else self.dir / "wandb" / "cache"
        self.log_artifacts = log_artifacts
        self.quiet = quiet
        self.run: Any = None
        self.sync_dir: Path | None = None
        self._env: _EnvironmentPatch | None = None
        self._stages: set[str] = set()
        self._offset = 0
        self._last_step = -1

    # -- start -------------------------------------------------------------------------

    def preflight(self) -> None:
        """The key (online) and the package (not disabled), before the run directory exists."""
        if self.mode == "disabled":
            return
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise UserError(
                "wandb tracker: the wandb package is not installed; `pip install wandb`, "
                "or drop the wandb tracker (trackers: [console])"
            )
        if self.mode == "online":
            require_online_credentials()

    def _environment(self) -> dict[str, str]:
        env = {
            # The mode is the experiment's: a WANDB_MODE left in the shell (empty, a typo,
            # another mode) would otherwise make wandb refuse its settings or switch mode.
            "WANDB_MODE": self.mode,
            "WANDB_DIR": str(self.dir),
            "WANDB_CACHE_DIR": str(self.cache_dir),
            "WANDB_DATA_DIR": str(self.cache_dir / "data"),
            "WANDB_ARTIFACT_DIR": str(self.cache_dir / "artifacts"),
        }
        if self.mode != "online":
            # Online keeps the user's config folder: their login and server live there.
            env["WANDB_CONFIG_DIR"] = str(self.cache_dir / "config")
        if self.quiet:
            env["WANDB_SILENT"] = "true"
            env["WANDB_CONSOLE"] = "off"
        return env

    def start(self, config: dict) -> None:
        if self.mode == "online":
            require_online_credentials()
        environment = self._environment()
        if self.mode != "disabled":
            for key in ("WANDB_DIR", "WANDB_CACHE_DIR"):
                Path(environment[key]).mkdir(parents=True, exist_ok=True)
        self._env = _EnvironmentPatch(environment)
        try:
            self.run = self._init(config)
        except BaseException:
            self._restore_environment()
            raise
        sync_dir = getattr(getattr(self.run, "settings", None), "sync_dir", None)
        self.sync_dir = Path(sync_dir) if sync_dir and self.mode == "offline" else None

    def _init(self, config: dict) -> Any:
        import wandb

        settings = wandb.Settings(
            silent=self.quiet,
            console="off" if self.quiet else "auto",
            save_code=False,
        )
        try:
            return wandb.init(
                mode=self.mode,
                project=self.project,
                entity=self.entity,
                group=self.group,
                tags=self.tags or None,
                name=self.run_name,
                dir=str(self.dir),
                config=config,
                settings=settings,
                # Several runs per process (sweep trials): each tracker holds its own run.
                reinit="create_new",
            )
        except Exception as error:
            first = one_line(error, first_line=True)
            hint = "; check the network and key, or use `mode: offline`"
            raise UserError(
                f"wandb tracker: could not start a W&B run in mode '{self.mode}': {first}"
                + (hint if self.mode == "online" else "")
            ) from error

    # -- logging -----------------------------------------------------------------------

    def _wandb_step(self, step: int) -> int:
        """W&B's step, kept increasing when a stage restarts its count at 0."""
        wandb_step = step + self._offset
        if wandb_step < self._last_step:
            self._offset = self._last_step + 1 - step
            wandb_step = step + self._offset
        self._last_step = wandb_step
        return wandb_step

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.run is None or not metrics:
            return
        row = dict(metrics)
        if step is None:
            self.run.log(row)
            return
        for stage in {metric_stage(name) for name in metrics if "/" in name}:
            if stage not in self._stages:
                self._stages.add(stage)
                self.run.define_metric(f"{stage}/step", hidden=True)
                self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            row[f"{stage}/step"] = step
        self.run.log(row, step=self._wandb_step(int(step)))

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None and values:
            self.run.summary.update(dict(values))

    def artifact(self, path: str | Path, name: str, type: str) -> None:
        # Offline artifacts would copy the files once more into the run folder; skipped.
        if self.run is None or self.mode != "online" or not self.log_artifacts:
            return
        import wandb

        path = Path(path)
        artifact = wandb.Artifact(name=safe_artifact_name(name), type=type)
        if path.is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    # -- finish ------------------------------------------------------------------------

    def _restore_environment(self) -> None:
        if self._env is not None:
            self._env.restore()
            self._env = None

    def _wait_for_run_file(self) -> None:
        # wandb-core may still be writing when finish() returns; whoever reads the run
        # file next (the sweep engine, `wandb sync`, a test) should find it complete.
        from jigsawkit.tracking.wandb_runfile import wait_until_complete

        if not wait_until_complete(self.sync_dir, timeout=WRITE_TIMEOUT_S):
            print(
                f"warning: wandb: the offline run file in {self.sync_dir} is still incomplete "
                f"after {WRITE_TIMEOUT_S:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def finish(self, ok: bool) -> None:
        run, self.run = self.run, None
        try:
            if run is not None:
                run.finish(exit_code=0 if ok else 1)
                if self.sync_dir is not None:
                    self._wait_for_run_file()
                    print(
                        f"wandb: offline run saved; upload it with: wandb sync {self.sync_dir}",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            self._restore_environment()

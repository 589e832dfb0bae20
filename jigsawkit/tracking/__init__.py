"""Built-in trackers (registration only: cheap to import; wandb is imported when built)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jigsawkit.registry import register_tracker

_NULLABLE_STRING = {"type": ["string", "null"], "default": None}


@register_tracker(
    "console",
    schema={
        "properties": {
            "every": {
                "type": "integer",
                "minimum": 1,
                "default": 1,
                "description": "print every N-th step (validation/test lines always)",
            }
        }
    },
)
def console(run_dir: str | Path | None = None, experiment: str = "", **params: Any) -> Any:
    """Compact metric lines on stdout and the final summary as a table (plain text in logs)."""
    from jigsawkit.tracking.console import ConsoleTracker

    return ConsoleTracker(run_dir=run_dir, experiment=experiment, **params)


@register_tracker(
    "wandb",
    schema={
        "properties": {
            "mode": {
                "enum": ["online", "offline", "disabled"],
                "default": "offline",
                "description": "online needs a key (WANDB_API_KEY or `wandb login`)",
            },
            "project": {"type": "string", "minLength": 1, "default": "jigsawkit"},
            "entity": _NULLABLE_STRING,
            "group": _NULLABLE_STRING,
            "tags": {"type": "array", "items": {"type": "string"}, "default": []},
            # not `name`: that key names the component in the experiment file
            "run_name": {
                **_NULLABLE_STRING,
                "description": "the W&B run name (default: the experiment's name)",
            },
            "dir": {**_NULLABLE_STRING, "description": "W&B's folder (default: the run dir)"},
            "cache_dir": {
                **_NULLABLE_STRING,
                "description": "W&B cache, data and artifact folders (default: <dir>/wandb/cache)",
            },
            "log_artifacts": {
                "type": "boolean",
                "default": True,
                "description": "upload the exported feature extractor (online only)",
            },
            "quiet": {"type": "boolean", "default": True},
        }
    },
)
def wandb(run_dir: str | Path, experiment: str = "experiment", **params: Any) -> Any:
    """Weights & Biases (offline by default, files inside the run directory, never prompts)."""
    from jigsawkit.tracking.wandb_tracker import WandbTracker

    return WandbTracker(run_dir=run_dir, experiment=experiment, **params)

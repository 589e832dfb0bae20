"""Built-in search strategies (registration only: cheap to import).

A sweep file selects one under ``strategy:``; ``jigsawkit sweep`` builds it with
``registry("search").build(name, **params)`` and checks it against
``jigsawkit.contracts.SearchStrategy`` (what the sweep calls, in which order). See
docs/sweeps.md.
"""

from __future__ import annotations

from jigsawkit.config import limits as L
from jigsawkit.registry import register_search

_NULLABLE_STRING = {"type": ["string", "null"], "default": None}


# Where the trials live, and how dead workers are noticed: the same for both strategies.
_STORAGE = {
    "storage": {
        **_NULLABLE_STRING,
        "description": "Optuna RDB storage URL of the trials: null (a SQLite file in the sweep "
        "folder), sqlite:///PATH, postgresql://USER@HOST/DB, mysql+pymysql://USER@HOST/DB; "
        "jigsawkit sweep --storage URL sets it too",
    },
    "heartbeat_interval": {
        "type": "integer",
        "minimum": 1,
        "default": 15,
        "description": "seconds between a running trial's heartbeats",
    },
    "grace_period": {
        "type": "integer",
        "minimum": 1,
        "default": 120,
        "description": "a running trial without a heartbeat for this long belongs to a dead "
        "worker: it is marked failed and run again",
    },
    "max_retry": {
        "type": ["integer", "null"],
        "minimum": 0,
        "default": 3,
        "description": "how many times one trial is run again (null: no limit)",
    },
}


register_search(
    "wandb",
    schema={
        "properties": {
            "mode": {
                "enum": ["offline", "online"],
                "default": "offline",
                "description": "offline: W&B's open-source engine runs the sweep here; "
                "online: wandb.sweep + wandb.agent (needs a key)",
            },
            "project": {**_NULLABLE_STRING, "description": "W&B project (default: jigsawkit)"},
            "entity": _NULLABLE_STRING,
            "log_trials": {
                "type": "boolean",
                "default": True,
                "description": "log each offline trial as an offline W&B run grouped by the sweep",
            },
            **_STORAGE,
        }
    },
    description="W&B Sweeps: online (W&B's server) or offline (W&B's engine); trials in Optuna's storage.",
    target=".wandb_strategy:WandbStrategy",
)


register_search(
    "optuna",
    schema={
        "properties": {
            "sampler": {
                "enum": [None, "tpe", "grid", "random"],
                "default": None,
                "description": "null: from sweep.method (bayes -> tpe, grid, random)",
            },
            "pruner": {
                "enum": [None, "hyperband", "median"],
                "default": None,
                "description": "null: hyperband if sweep.early_terminate asks for it, else none",
            },
            "seed": L.seed_schema(None, nullable=True),
            **_STORAGE,
        }
    },
    description="Optuna: TPE, grid or random sampling, hyperband or median pruning, shared storage.",
    target=".optuna_strategy:OptunaStrategy",
)

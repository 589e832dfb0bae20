"""Built-in search strategies (registration only: cheap to import).

A sweep file selects one under ``strategy:``; ``jigsawkit sweep`` builds it with
``registry("search").build(name, **params)``. See docs/sweeps.md.
"""

from __future__ import annotations

from typing import Any

from jigsawkit.registry import register_search

_NULLABLE_STRING = {"type": ["string", "null"], "default": None}


def _check_wandb(params: dict) -> list[tuple[str, str]]:
    store = params.get("store")
    if isinstance(store, str) and "://" in store and not store.startswith("sqlite:///"):
        return [
            (
                "store",
                f"{store!r}: only sqlite:///PATH stores are supported (a file on a shared "
                "filesystem serves several machines); for a database server use the optuna "
                "strategy with a PostgreSQL storage URL",
            )
        ]
    if params.get("mode") == "online" and store:
        return [("store", "an online sweep is coordinated by W&B's server: leave store null")]
    return []


@register_search(
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
            "store": {
                **_NULLABLE_STRING,
                "description": "offline trial store: null (a SQLite file in the sweep "
                "folder) or sqlite:///PATH",
            },
            "log_trials": {
                "type": "boolean",
                "default": True,
                "description": "log each offline trial as an offline W&B run grouped by the sweep",
            },
        }
    },
    check=_check_wandb,
)
def wandb(**params: Any) -> Any:
    """W&B Sweeps: online (W&B's server) or offline (W&B's engine, local trial store)."""
    from jigsawkit.search.wandb_strategy import WandbStrategy

    return WandbStrategy(**params)


@register_search(
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
            "storage": {
                **_NULLABLE_STRING,
                "description": "Optuna RDB URL (default: a SQLite file in the sweep folder); "
                "e.g. postgresql://user@host/db for many machines",
            },
            "seed": {"type": ["integer", "null"], "default": None},
        }
    },
)
def optuna(**params: Any) -> Any:
    """Optuna: TPE, grid or random sampling, hyperband or median pruning, shared storage."""
    from jigsawkit.search.optuna_strategy import OptunaStrategy

    return OptunaStrategy(**params)

"""Test helper: read a W&B offline run file (history, summary, config) as plain values.

wandb 0.31 ships no Python reader for ``run-*.wandb``; the tests check what the ``wandb``
tracker wrote with this one, built on the package's
:func:`jigsawkit.tracking.wandb_runfile.iter_chunks` (the file format is described there).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jigsawkit.tracking.wandb_runfile import RunFileError, find_run_file, iter_chunks


def iter_records(path: str | Path, verify: bool = True) -> Iterator[Any]:
    """The ``wandb_internal_pb2.Record`` messages of a run file (or offline run folder)."""
    from wandb.proto import wandb_internal_pb2

    file = find_run_file(path)
    for raw in iter_chunks(file.read_bytes(), str(file), verify=verify):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(raw)
        except Exception as error:  # protobuf's DecodeError
            raise RunFileError(f"{file}: a record is not a W&B protobuf record") from error
        yield record


def _item_value(item: Any) -> Any:
    """The value of a history/summary/config item: ``value_json``, or the typed form."""
    if item.value_json:
        return json.loads(item.value_json)
    which = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if which is None or which == "none":
        return None
    value = getattr(item, which)
    return json.loads(value) if which == "json" else value


def _set_item(target: dict, item: Any, value: Any) -> None:
    """Store under ``key``, or the ``nested_key`` path (one element: a plain key)."""
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            child = target[key] = {}
        target = child
    target[keys[-1]] = value


def _del_item(target: dict, item: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.get(key)
        if not isinstance(target, dict):
            return
    target.pop(keys[-1], None)


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """One dict per logged W&B step: metric names as logged plus ``_step``, ``_runtime``,
    ``_timestamp`` (W&B's own keys)."""
    rows = []
    for record in iter_records(path):
        if record.WhichOneof("record_type") == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set_item(row, item, _item_value(item))
            rows.append(row)
    return rows


def read_summary(path: str | Path) -> dict[str, Any]:
    """The run's final summary: every summary update (and removal) applied in order."""
    summary: dict[str, Any] = {}
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            for item in record.run.summary.update:
                _set_item(summary, item, _item_value(item))
        elif kind == "summary":
            for item in record.summary.update:
                _set_item(summary, item, _item_value(item))
            for item in record.summary.remove:
                _del_item(summary, item)
    return summary


def read_config(path: str | Path, include_internal: bool = False) -> dict[str, Any]:
    """The run's config (W&B's internal ``_wandb`` entry left out unless asked for)."""
    config: dict[str, Any] = {}
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        updates = (
            record.run.config if kind == "run" else record.config if kind == "config" else None
        )
        if updates is None:
            continue
        for item in updates.update:
            _set_item(config, item, _item_value(item))
        for item in updates.remove:
            _del_item(config, item)
    if not include_internal:
        config.pop("_wandb", None)
    return config

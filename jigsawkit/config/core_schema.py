"""The core experiment schema. Component slots are marked ``x-component: <kind>``; the
validator replaces each slot by the parameter schema of the component the file selects."""

from __future__ import annotations

import copy

from jigsawkit.config import limits as L
from jigsawkit.training.schemas import OPTIMIZER_SCHEMA, SCHEDULE_SCHEMA


def component_slot(kind: str, default: str | None = None) -> dict:
    """Schema of a place where a component is selected: ``{name: ..., <its params>}``."""
    slot: dict = {
        "x-component": kind,
        "type": ["object", "string"],
        "required": ["name"],
        "properties": {"name": {"type": "string", "description": f"a registered {kind}"}},
        "description": f"a {kind}: a mapping with `name` and that {kind}'s parameters",
    }
    if default is not None:
        slot["default"] = {"name": default}
    return slot


PRETRAIN_SCHEMA = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "description": "the pretext-task pretraining stage (null: no pretraining)",
    "default": {},
    "properties": {
        "data": component_slot("dataset", "synthetic"),
        "epochs": {"type": "integer", "minimum": 1, "maximum": L.EPOCHS_MAX, "default": 1},
        "batch_size": {
            "type": "integer",
            "minimum": 1,
            "maximum": L.BATCH_SIZE_MAX,
            "default": 64,
        },
        "optimizer": {**copy.deepcopy(OPTIMIZER_SCHEMA), "default": {}},
        "schedule": {**copy.deepcopy(SCHEDULE_SCHEMA), "default": {}},
        "precision": {"enum": ["auto", "fp32", "bf16"], "default": "auto"},
        "max_steps_per_epoch": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": L.STEPS_PER_EPOCH_MAX,
            "default": None,
        },
        "grad_clip": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None},
        "sync_batchnorm": {
            "type": "boolean",
            "default": False,
            "description": "data-parallel runs: BatchNorm statistics over the global batch "
            "(SyncBatchNorm) instead of each rank's share; see docs/distributed.md",
        },
        "prefetch": {"type": "integer", "minimum": 0, "maximum": L.PREFETCH_MAX, "default": 2},
        "export": {
            "type": "string",
            "minLength": 1,
            "x-run-relative": True,
            "default": "feature_extractor.pt",
            "description": "where the feature extractor is saved: a path inside the run "
            "directory (relative, no '..')",
        },
    },
}

CORE_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
            # <name>-<YYYYmmdd-HHMMSS>[-N] must fit one file name (NAME_MAX, 255 bytes).
            "maxLength": 200,
            "default": "experiment",
        },
        "description": {"type": "string", "default": ""},
        "seed": L.seed_schema(0),
        "device": {"type": "string", "pattern": r"^(auto|cpu|cuda(:[0-9]+)?)$", "default": "auto"},
        "output_dir": {"type": "string", "minLength": 1, "default": "runs"},
        "cache_dir": {"type": ["string", "null"], "default": None},
        "plugins": {"type": "array", "items": {"type": "string"}, "default": []},
        "trackers": {
            "type": "array",
            "items": component_slot("tracker"),
            "default": [{"name": "console"}],
        },
        "backbone": component_slot("backbone", "cfn"),
        "pretext": component_slot("pretext", "jigsaw"),
        "checkpoint": {
            "type": ["string", "null"],
            "default": None,
            "description": "an exported feature extractor to evaluate instead of pretraining",
        },
        "pretrain": PRETRAIN_SCHEMA,
        "evaluate": {"type": "array", "items": component_slot("evaluator"), "default": []},
    },
}

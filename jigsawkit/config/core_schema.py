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


# The side images are resized to before a frozen backbone turns them into features: the
# probes' `image_size` and the kNN monitor's.
FEATURE_IMAGE_SIZE_SCHEMA = {
    "type": ["integer", "null"],
    "minimum": 8,
    "maximum": L.IMAGE_SIDE_MAX,
    "default": None,
    "description": "side images are resized to (null: the backbone's input_size)",
}

MONITOR_SCHEMA = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "default": None,
    "description": "online kNN monitor: every `every` epochs, the kNN top-1 of the current "
    "backbone's features on a small labelled subset, logged as pretrain/monitor_knn_top1 "
    "(null: off); see docs/evaluation.md",
    "properties": {
        "data": {
            **component_slot("dataset", "synthetic"),
            "description": "the labelled dataset the monitor reads (its train split is the "
            "neighbour bank, its val split the queries; never its test split)",
        },
        "every": {
            "type": "integer",
            "minimum": 1,
            "maximum": L.EPOCHS_MAX,
            "default": 1,
            "description": "run after every N-th epoch (and after the last planned one)",
        },
        "bank_images": {
            "type": "integer",
            "minimum": 1,
            "maximum": L.MONITOR_BANK_IMAGES_MAX,
            "default": 1000,
            "description": "neighbour bank: this many images of the train split (a fixed "
            "seeded subset; all of it when the split is smaller)",
        },
        "query_images": {
            "type": "integer",
            "minimum": 1,
            "maximum": L.MONITOR_QUERY_IMAGES_MAX,
            "default": 500,
            "description": "queries: this many images of the val split (a fixed seeded subset)",
        },
        "k": {"type": "integer", "minimum": 1, "maximum": L.KNN_K_MAX, "default": 20},
        "temperature": {"type": "number", "exclusiveMinimum": 0, "default": 0.07},
        "layer": {
            "type": ["string", "null"],
            "default": None,
            "description": "the backbone feature layer (null: its default probe layer)",
        },
        "image_size": FEATURE_IMAGE_SIZE_SCHEMA,
        "batch_size": {
            "type": "integer",
            "minimum": 1,
            "maximum": L.BATCH_SIZE_MAX,
            "default": 256,
        },
        "seed": L.seed_schema(
            None, nullable=True, description="seed of the subsets (null: the experiment's seed)"
        ),
        "early_stop": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "default": None,
            "description": "end pretraining when the monitor has not improved for `patience` "
            "evaluations (null: never); the run still exports and evaluates",
            "properties": {
                "patience": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": L.EPOCHS_MAX,
                    "default": 3,
                    "description": "evaluations without an improvement before stopping",
                },
                "min_delta": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 1,
                    "default": 0.0,
                    "description": "an improvement is a top-1 (a fraction) above the best "
                    "so far by more than this",
                },
            },
        },
    },
}

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
        "monitor": MONITOR_SCHEMA,
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

"""JSON Schema fragments for the ``pretrain.optimizer`` and ``pretrain.schedule`` sections.

Kept free of torch so the core config schema can import them without paying for it.
The implementations live in ``jigsawkit.training.optim``.
"""

from __future__ import annotations

OPTIMIZER_NAMES = ("sgd", "adam", "adamw")
SCHEDULE_NAMES = ("cosine", "step", "constant")

OPTIMIZER_SCHEMA: dict = {
    "type": "object",
    "additionalProperties": False,
    "description": "the optimizer; weight decay never applies to BatchNorm or bias parameters",
    "properties": {
        "name": {"enum": list(OPTIMIZER_NAMES), "default": "sgd"},
        "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.01},
        "momentum": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0.9,
            "description": "sgd only",
        },
        "weight_decay": {"type": "number", "minimum": 0, "default": 5.0e-4},
        "betas": {
            "type": "array",
            "items": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
            "minItems": 2,
            "maxItems": 2,
            "default": [0.9, 0.999],
            "description": "adam and adamw only",
        },
        "nesterov": {"type": "boolean", "default": False, "description": "sgd only"},
    },
}

SCHEDULE_SCHEMA: dict = {
    "type": "object",
    "additionalProperties": False,
    "description": "the learning-rate schedule, stepped every optimizer step",
    "properties": {
        "name": {"enum": list(SCHEDULE_NAMES), "default": "cosine"},
        "warmup_epochs": {
            "type": "number",
            "minimum": 0,
            "default": 0,
            "description": "linear warm-up from 0 to lr; may be fractional",
        },
        "min_lr": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0.0,
            "description": "cosine: the final lr as a fraction of lr",
        },
        "step_epochs": {
            "type": "array",
            "items": {"type": "number", "exclusiveMinimum": 0},
            "default": [],
            "description": "step: epochs at which the lr is multiplied by gamma",
        },
        "gamma": {"type": "number", "exclusiveMinimum": 0, "default": 0.1},
    },
}

"""Built-in evaluators (registration only: cheap to import, no torch at module level)."""

from __future__ import annotations

from jigsawkit.config import limits as L
from jigsawkit.config.core_schema import FEATURE_IMAGE_SIZE_SCHEMA, component_slot
from jigsawkit.registry import register_evaluator

_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
_NON_NEGATIVE = {"type": "number", "minimum": 0}

# Parameters both evaluators share: what to probe, on which data, how images are fed.
_COMMON = {
    "data": {
        **component_slot("dataset", default="synthetic"),
        "description": "the labelled dataset to probe on (a dataset selection: name + params)",
    },
    "layers": {
        "anyOf": [
            {"type": "null"},
            {"const": "all"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1},
        ],
        "default": None,
        "description": "backbone feature layers to probe: a list, all (every layer the "
        "backbone declares, in its order) or null (the backbone's default)",
    },
    "image_size": FEATURE_IMAGE_SIZE_SCHEMA,
    "normalize": {
        "enum": [None, "per_image", "imagenet", "none"],
        "default": None,
        "description": "input normalisation (null: as the feature extractor was pretrained, "
        "per_image when unknown; per_image: per-channel mean/std of each image, as jigsaw "
        "tiles are normalised)",
    },
    "batch_size": {"type": "integer", "minimum": 1, "maximum": L.BATCH_SIZE_MAX, "default": 256},
    "checkpoint": {
        "type": ["string", "null"],
        "default": None,
        "description": "an exported feature extractor to probe instead of the run's",
    },
    "seed": L.seed_schema(
        None, nullable=True, description="seed of the probe (null: the experiment's seed)"
    ),
    "allow_overlap": {
        "type": "boolean",
        "default": False,
        "description": "only warn (instead of refusing the run) when val/test images were "
        "seen in pretraining's train split; the counts are in the summary either way",
    },
}

LINEAR_PROBE_SCHEMA = {
    "properties": {
        **_COMMON,
        "epochs": {"type": "integer", "minimum": 1, "maximum": L.EPOCHS_MAX, "default": 20},
        "lr": {
            "anyOf": [_POSITIVE, {"type": "array", "items": _POSITIVE, "minItems": 1}],
            "default": [1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2, 1.0e-1],
            "description": "learning rate, or a list: every value is a head trained in "
            "the same pass",
        },
        "weight_decay": {
            "anyOf": [_NON_NEGATIVE, {"type": "array", "items": _NON_NEGATIVE, "minItems": 1}],
            "default": 0.0,
            "description": "weight decay, or a list (crossed with lr)",
        },
        "optimizer": {
            "enum": ["adam", "sgd"],
            "default": "adam",
            "description": "adam: AdamW (decoupled weight decay); sgd: momentum 0.9",
        },
        "standardize": {
            "type": "boolean",
            "default": True,
            "description": "standardise features with the train split's mean/std",
        },
        "label_smoothing": {"type": "number", "minimum": 0, "maximum": 0.5, "default": 0.0},
        "augment": {
            "type": "boolean",
            "default": False,
            "description": "train on features of randomly cropped/flipped images (slower)",
        },
        "compare_random_init": {
            "type": "boolean",
            "default": True,
            "description": "also probe a random-init backbone (BatchNorm recalibrated)",
        },
        "lr_extension_steps": {
            "type": "integer",
            "minimum": 0,
            "maximum": 10,
            "default": 3,
            "description": "when a layer's best lr (on val) is at an end of the lr grid, "
            "train this many more lrs beyond it, by the grid's ratio at that end (0: never)",
        },
    }
}

KNN_SCHEMA = {
    "properties": {
        **_COMMON,
        "k": {"type": "integer", "minimum": 1, "maximum": L.KNN_K_MAX, "default": 20},
        "temperature": {**_POSITIVE, "default": 0.07},
        "compare_random_init": {"type": "boolean", "default": False},
    }
}


register_evaluator(
    "linear_probe",
    schema=LINEAR_PROBE_SCHEMA,
    description="Linear classifiers on frozen features: an lr/wd grid in one pass, best on val, test reported.",
    target=".linear_probe:LinearProbe",
)


register_evaluator(
    "knn",
    schema=KNN_SCHEMA,
    description="Weighted cosine k-nearest-neighbour top-1 on frozen features (no training).",
    target=".knn:KNN",
)

"""Built-in backbones (registration only: cheap to import, no torch or timm at module level)."""

from __future__ import annotations

from jigsawkit.config import limits as L
from jigsawkit.registry import register_backbone

CFN_SCHEMA = {
    "properties": {
        "channels": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": L.WIDTH_MAX},
            "minItems": 1,
            "default": [96, 256, 384],
            "description": "output channels of each conv stage",
        },
        "kernel_sizes": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": L.KERNEL_SIZE_MAX},
            "minItems": 1,
            "default": [5, 3, 3],
            "description": "kernel size of each conv stage (one per entry of channels)",
        },
        "batch_norm": {"type": "boolean", "default": True},
        "tile_fc": {
            "type": "integer",
            "minimum": 1,
            "maximum": L.WIDTH_MAX,
            "default": 1024,
            "description": "size of the per-tile fc features (the forward output)",
        },
        "input_size": {
            "type": "integer",
            "minimum": 8,
            "maximum": L.IMAGE_SIDE_MAX,
            "default": 64,
            "description": "side of the input it is meant for (a jigsaw tile)",
        },
    }
}

CFN_ALEXNET_SCHEMA = {
    "properties": {
        "batch_norm": {
            "type": "boolean",
            "default": True,
            "description": "BatchNorm after every conv; false: the paper's LRN after conv1, conv2",
        },
        "fc6": {
            "type": "integer",
            "minimum": 1,
            "maximum": L.WIDTH_MAX,
            "default": 1024,
            "description": "width of fc6 on the flattened tile map (the forward output)",
        },
        "dropout": {
            "type": "number",
            "minimum": 0,
            "exclusiveMaximum": 1,
            "default": 0.5,
            "description": "dropout after fc6",
        },
        "input_size": {
            "type": "integer",
            "minimum": 39,
            "maximum": L.IMAGE_SIDE_MAX,
            "default": 64,
            "description": "side of the tile it is meant for (fc6 is sized for it)",
        },
    }
}

TIMM_SCHEMA = {
    "properties": {
        "model": {
            "type": "string",
            "default": "resnet18",
            "description": "timm model name (jigsawkit list-components --timm PATTERN)",
        },
        "pretrained": {"type": "boolean", "default": False},
        "input_size": {
            "type": "integer",
            "minimum": 8,
            "maximum": L.IMAGE_SIDE_MAX,
            "default": 64,
        },
        "model_kwargs": {
            "type": "object",
            "default": {},
            "additionalProperties": True,
            "description": "extra keyword arguments for timm.create_model",
        },
    }
}


def check_cfn(params: dict) -> list[tuple[str, str]]:
    """One kernel size per conv stage."""
    channels, kernels = params["channels"], params["kernel_sizes"]
    if len(channels) != len(kernels):
        return [
            (
                "kernel_sizes",
                f"has {len(kernels)} entries but channels has {len(channels)}; "
                "give one kernel size per conv stage",
            )
        ]
    return []


register_backbone(
    "cfn",
    schema=CFN_SCHEMA,
    check=check_cfn,
    description="Context Free Network trunk: conv stages with BatchNorm, global pool, tile fc.",
    target=".cfn:CFN",
)


register_backbone(
    "cfn_alexnet",
    schema=CFN_ALEXNET_SCHEMA,
    description="Noroozi & Favaro's CFN trunk: AlexNet conv1-5 per tile, fc6 1024, dropout.",
    target=".cfn_alexnet:CFNAlexNet",
)


register_backbone(
    "timm",
    schema=TIMM_SCHEMA,
    description="Any timm model by name as the per-tile trunk (pooled features, classifier removed).",
    target=".timm_backbone:TimmBackbone",
)

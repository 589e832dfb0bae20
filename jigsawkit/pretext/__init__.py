"""Built-in pretext tasks (registration only: cheap to import, no torch at module level)."""

from __future__ import annotations

import math

from jigsawkit.config import limits as L
from jigsawkit.registry import register_pretext

JIGSAW_SCHEMA = {
    "properties": {
        "grid": {
            "type": "integer",
            "minimum": 2,
            "maximum": 16,
            "default": 3,
            "description": "puzzle of grid x grid tiles",
        },
        "permutations": {
            "type": "object",
            "description": "the permutation set: its size is the number of classes",
            "properties": {
                "count": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": L.PERMUTATIONS_MAX,
                    "default": 100,
                },
                "selection": {
                    "enum": ["maximal", "max_min", "random"],
                    "default": "maximal",
                },
                "seed": L.seed_schema(0),
            },
            "additionalProperties": False,
            "default": {"count": 100, "selection": "maximal", "seed": 0},
        },
        "crop": {
            "type": "integer",
            "minimum": 2,
            "maximum": L.IMAGE_SIDE_MAX,
            "default": 255,
            "description": "side of the square window cut into grid x grid cells",
        },
        "tile": {
            "type": "integer",
            "minimum": 1,
            "maximum": L.IMAGE_SIDE_MAX,
            "default": 64,
            "description": "tile side in px, at a random offset inside its cell",
        },
        "grayscale_prob": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.3},
        "channel_jitter": {
            "type": "number",
            "minimum": 0,
            "maximum": 0.25,
            "default": 0.05,
            "description": "largest per-channel spatial shift, as a fraction of the tile "
            "(each channel's window stays inside its cell)",
        },
        "normalize_tiles": {"type": "boolean", "default": True},
        "head_hidden": {"type": "integer", "minimum": 1, "maximum": L.WIDTH_MAX, "default": 1024},
        "dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.0},
        "image_size": {
            "type": ["integer", "null"],
            "minimum": 2,
            "maximum": L.IMAGE_SIDE_MAX,
            "default": None,
            "description": "side of the images taken from the data (null: the crop)",
        },
    }
}


def check_jigsaw(params: dict) -> list[tuple[str, str]]:
    """Cross-field checks: permutation count vs. grid, tile vs. cell, image vs. crop."""
    problems = []
    grid, crop, tile = params["grid"], params["crop"], params["tile"]
    count = params["permutations"]["count"]
    # Exact integers: (16*16)! has 507 digits and takes microseconds; a float would be inf.
    total = math.factorial(grid * grid)
    if count > total:
        problems.append(
            (
                "permutations.count",
                f"a {grid}x{grid} jigsaw has {total} permutations; permutations.count is {count}",
            )
        )
    cell = crop // grid
    if tile > cell:
        problems.append(("tile", f"tile {tile} px does not fit a cell of crop // grid = {cell} px"))
    image_size = params.get("image_size")
    if image_size is not None and image_size < crop:
        problems.append(("image_size", f"image_size {image_size} is smaller than crop {crop}"))
    return problems


register_pretext(
    "jigsaw",
    schema=JIGSAW_SCHEMA,
    check=check_jigsaw,
    description="Jigsaw puzzles: predict which permutation shuffled an N x N grid of tiles.",
    target=".jigsaw:JigsawTask",
)

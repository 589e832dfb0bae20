"""Upper bounds on the numbers an experiment may give, in one place (docs/experiments.md
lists them). Each is far above any real run and far below what would crash one mid-way
(out of memory, integer overflow inside torch/numpy) or run for ever, so that validation
refuses what a run cannot use before anything starts.

Besides these, the validator refuses for every parameter of every component: a float that
is not finite (``.nan``, ``.inf``, ``1.0e+309``) and an integer outside 64 bits.
"""

from __future__ import annotations

# Seeds go to numpy's legacy seeding (0 .. 2**32-1) and are combined into derived seeds
# (``seed * 100_003 + epoch``, ``seed + 1``) that must stay within torch's 64-bit seeds.
SEED_MAX = 2**32 - 1
# Any integer at all: what numpy and torch take without overflowing.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

EPOCHS_MAX = 100_000
BATCH_SIZE_MAX = 65_536
STEPS_PER_EPOCH_MAX = 100_000_000
PREFETCH_MAX = 64
# Image, crop, tile and backbone input sides in pixels (ImageNet is 224; 4096 px uint8
# images are 48 MiB each).
IMAGE_SIDE_MAX = 4096
# Channels, hidden and feature widths of a layer.
WIDTH_MAX = 65_536
KERNEL_SIZE_MAX = 64
# Images a synthetic dataset generates per split (10 million 96 px images: ~276 GB of cache).
IMAGES_MAX = 10_000_000
# Jigsaw permutation classes (the paper uses up to 1,000); also bounded by (grid*grid)!.
PERMUTATIONS_MAX = 100_000
KNN_K_MAX = 10_000
# The online kNN monitor (pretrain.monitor) runs every epoch: a few thousand images at most,
# so that it stays a small fraction of an epoch (docs/evaluation.md, "Online kNN monitor").
MONITOR_BANK_IMAGES_MAX = 5_000
MONITOR_QUERY_IMAGES_MAX = 2_000


def seed_schema(default: int | None = 0, nullable: bool = False, **extra: object) -> dict:
    """The schema of a seed: an integer 0 .. SEED_MAX (or null when ``nullable``)."""
    return {
        "type": ["integer", "null"] if nullable else "integer",
        "minimum": 0,
        "maximum": SEED_MAX,
        "default": default,
        **extra,
    }

"""Refuse (or warn about) probe val/test images that pretraining saw, before any work.

A probe's val and test images must be new to the pretrained backbone: if pretraining's
train split held them (unlabelled), the features were fitted to exactly the images that
score them. The same folder split with two different seeds is the usual way this happens.
The run checks it by content (``jigsawkit.data.overlap``) before the run directory exists:
each probe's val and test splits are decoded at the pretraining image size (the cache the
probe reuses when its size is the same) and compared with pretraining's train split.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jigsawkit.data.base import ImageSplit
from jigsawkit.data.overlap import SeenImages
from jigsawkit.errors import UserError

PROBED_SPLITS = ("val", "test")
CHECKPOINT_REASON = (
    "the probed backbone is an exported checkpoint; its pretraining data is not read"
)


def check_probe_overlap(
    evaluations: list[dict],
    seen: ImageSplit | None,
    cache_dir: Path,
    build_dataset: Callable[[dict], Any],
    skip_reason: str | None = None,
) -> dict[str, Any]:
    """Count each evaluator's val/test images found in ``seen`` (pretraining's train split).

    Returns summary entries ``probe.<evaluator>.overlap.val_images`` / ``.test_images``, or
    ``probe.<evaluator>.overlap.skipped`` (a reason) where no check applies: no pretraining
    in this run (``skip_reason``) or an evaluator that probes its own ``checkpoint``. Raises
    ``UserError`` on any overlap unless the evaluator sets ``allow_overlap: true``, which
    prints a warning instead.
    """
    summary: dict[str, Any] = {}
    index: SeenImages | None = None
    counted: dict[str, dict[str, tuple[int, int]]] = {}
    for selection in evaluations:
        data = selection.get("data")
        if not (isinstance(data, dict) and "name" in data):
            continue  # an evaluator without a dataset (a plugin's) has nothing to compare
        name = selection.get("name", "?")
        prefix = f"probe.{name}.overlap."
        reason = skip_reason or (CHECKPOINT_REASON if selection.get("checkpoint") else None)
        if reason or seen is None:
            summary[prefix + "skipped"] = reason or "no pretraining data in this run"
            continue
        if index is None:
            index = SeenImages(seen.images)
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in counted:
            counted[key] = _count(index, build_dataset(data), seen.image_size, cache_dir)
        counts = counted[key]
        for split, (overlapping, _) in counts.items():
            summary[f"{prefix}{split}_images"] = overlapping
        _refuse_or_warn(f"evaluate.{name}", counts, bool(selection.get("allow_overlap")))
    return summary


def _count(
    index: SeenImages, dataset: Any, image_size: int, cache_dir: Path
) -> dict[str, tuple[int, int]]:
    counts = {}
    for split in PROBED_SPLITS:
        images = dataset.load(split, image_size, Path(cache_dir) / "images").images
        counts[split] = (index.count_seen(images), len(images))
    return counts


def _refuse_or_warn(where: str, counts: dict[str, tuple[int, int]], allowed: bool) -> None:
    found = [f"{n} of {total} {split}" for split, (n, total) in counts.items() if n]
    if not found:
        return
    message = (
        f"{where}.data: {' and '.join(found)} images were seen (unlabelled) in pretraining's "
        "train split (pretrain.data), compared by content"
    )
    if not allowed:
        raise UserError(
            f"{message}; probe on data pretraining did not see (same dataset: same seed and "
            f"split fractions), or set {where}.allow_overlap: true to only warn"
        )
    print(f"warning: {message} (allow_overlap: true)", file=sys.stderr)

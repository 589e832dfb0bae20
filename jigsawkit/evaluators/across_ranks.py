"""Evaluation in a torchrun job: the ranks extract the frozen features together, rank 0
trains the probe heads and scores kNN on them alone.

Feature extraction is the costly part of an evaluation (a forward pass of every image of
every split, for the pretrained backbone and its random-init twin); the heads and kNN are
cheap once the features exist. So before rank 0 runs the evaluators, every rank runs
``extract_together``: for each evaluator that says what it will read
(``feature_sources(ctx)``: the linear probe and kNN do), each rank extracts its block of
every split that is not cached yet, and rank 0 gathers the rows and writes the cache entry
a single process would write. The evaluators then find every split cached. Plugin
evaluators without ``feature_sources`` run on rank 0 alone, as before.

Every decision that changes which collectives a rank makes (cached or not, recalibrate or
not) is rank 0's, broadcast to the others: a rank extracting while another skips would wait
for it forever.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

from jigsawkit.data.base import ImageSplit
from jigsawkit.evaluators.features import FeatureSource, extract_features, rank_rows
from jigsawkit.killpoints import kill_point
from jigsawkit.training import distributed


def extract_together(ctx: Any, evaluators: Sequence[Any]) -> None:
    """Every rank calls this with the same ``ctx`` (``EvalContext``) and evaluators: the
    features they will read are extracted by all ranks and cached by rank 0. A no-op for
    one process. ``ctx.backbone`` must already be the same on every rank
    (``distributed.broadcast_module``)."""
    world = distributed.current()
    if not world.distributed:
        return
    for evaluator in evaluators:
        plan = getattr(evaluator, "feature_sources", None)
        if plan is None:
            continue
        # Resolving the plan repeats the evaluator's own setup, warnings included: rank 0
        # says them when it runs the evaluator, the other ranks print nothing but errors.
        with contextlib.redirect_stderr(io.StringIO()):
            sources = plan(ctx)
        for source, splits in sources:
            fill_cache_together(source, list(splits))


def fill_cache_together(source: FeatureSource, splits: list[ImageSplit]) -> None:
    """Every rank calls this together for the same source and splits: the splits not cached
    yet (rank 0 decides) are extracted, each rank its block of batches, and written by rank 0
    to the entry ``source.features(split)`` reads. ``source.prepare`` (BatchNorm
    recalibration of a random-init twin) runs on every rank together, only when needed."""
    world = distributed.current()
    _check_same_source(source, splits)
    # A split that cannot be cached (no key) is left to rank 0's evaluator, as one process.
    skip = None
    if world.is_main:
        skip = [not source.cacheable(split) or source.is_cached(split) for split in splits]
    skip = distributed.broadcast_object(skip)
    if all(skip):
        return
    source.prepare(world)
    for split, skipped in zip(splits, skip):
        if skipped:
            continue
        mine = extract_features(
            source.backbone,
            split,
            source.layers,
            source.image_size,
            source.device,
            source.batch_size,
            source.normalize,
            progress=source.progress and world.is_main,
            world=world,
        )
        kill_point("feature-share")
        counts = rank_rows(len(split), source.batch_size, world)
        gathered = {name: distributed.gather_rows(mine[name], counts) for name in source.layers}
        if world.is_main:
            source.store(
                split, {name: value for name, value in gathered.items() if value is not None}
            )


def _check_same_source(source: FeatureSource, splits: list[ImageSplit]) -> None:
    """Every rank must extract with the same weights from the same images; a random-init
    twin built differently on one rank would otherwise fill the cache with a mixture."""
    mine = (source.checkpoint_id, [split.key for split in splits], len(splits))
    every = distributed.all_gather_object(mine)
    different = [rank for rank, theirs in enumerate(every) if theirs != every[0]]
    if different:
        raise RuntimeError(
            f"feature extraction across ranks: rank {different[0]} has other weights or data "
            f"than rank 0 ({every[different[0]][0][:40]} vs {every[0][0][:40]})"
        )

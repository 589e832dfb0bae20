"""Frozen features of an ``ImageSplit``: extraction, the on-disk cache, BatchNorm recalibration.

Features are computed once per (weights, data split, layers, image size, transform) and
saved to ``<cache_dir>/features/<key>.pt``; every later probe, kNN or sweep trial on the
same inputs loads them instead of running the backbone again.

In a torchrun job the ranks fill a cache entry together (``fill_cache_together``): each
extracts its block of the single-process batches, rank 0 gathers the rows and writes the
entry a single process would write (same key, same layout), so later runs of any world size
read it as a cache hit.

The backbone is run in eval mode under ``torch.no_grad()``: its parameters and BatchNorm
buffers come out bit-identical, and each module's train/eval flag is restored afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jigsawkit.data.base import ImageSplit
from jigsawkit.errors import UserError
from jigsawkit.normalization import NORMALIZATIONS as NORMALIZATIONS  # re-exported
from jigsawkit.normalization import normalize_images
from jigsawkit.progress import progress_bar
from jigsawkit.training import distributed
from jigsawkit.training.checkpoint import atomic_torch_save
from jigsawkit.training.distributed import SINGLE, World

# Bump when the way images become backbone inputs changes: old cache entries stop matching.
TRANSFORM_VERSION = 1
# Images the random-init baseline's BatchNorm statistics are re-estimated on (at most).
RECALIBRATION_IMAGES = 8192


def state_dict_hash(module: nn.Module) -> str:
    """sha256 of a module's state dict: every tensor's name, dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def transform_description(image_size: int, normalize: str) -> dict:
    """What turns cached uint8 images into backbone inputs (part of the cache key)."""
    return {
        "version": TRANSFORM_VERSION,
        "resize": "bilinear-antialias",
        "image_size": int(image_size),
        "normalize": normalize,
    }


def feature_cache_key(
    checkpoint_id: str, split_key: str, layers: Sequence[str], image_size: int, transform: dict
) -> str:
    """The cache key of one split's features: sha256 of everything that determines them."""
    payload = {
        "checkpoint": checkpoint_id,
        "split": split_key,
        "layers": list(layers),
        "image_size": int(image_size),
        "transform": transform,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def check_layers(backbone: nn.Module, layers: Sequence[str] | str | None, where: str) -> list[str]:
    """The layers to read, all known to the backbone: ``None`` is its default probe layer,
    ``"all"`` every layer it declares in ``feature_layers``, in their declared order.
    The backbone is checked against ``jigsawkit.contracts.Backbone`` first."""
    from jigsawkit.contracts import check_backbone

    check_backbone(backbone, f"{where}: the probed backbone")
    known = dict(backbone.feature_layers)
    if layers == "all":
        if not known:
            raise UserError(f"{where}: all: the backbone declares no feature_layers")
        return list(known)
    if not layers:
        default = backbone.default_probe_layer
        if default is None:
            raise UserError(f"{where}: the backbone names no default_probe_layer; set layers")
        return [default]
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise UserError(
            f"{where}: the backbone has no feature layer {', '.join(map(repr, unknown))}; "
            f"expected one of {', '.join(map(repr, known)) or 'none'}"
        )
    return list(dict.fromkeys(layers))


def to_float_images(batch: np.ndarray, device: Any, image_size: int) -> torch.Tensor:
    """uint8 ``(B, S, S, 3)`` -> float ``(B, 3, image_size, image_size)`` in ``[0, 1]`` on
    ``device``; only uint8 crosses to the device, resizing happens there."""
    # A copy: the split is usually a read-only memmap, which torch will not wrap quietly.
    x = torch.from_numpy(np.array(batch, dtype=np.uint8)).to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
    return x


def backbone_inputs(
    batch: np.ndarray, device: Any, image_size: int, normalize: str
) -> torch.Tensor:
    """uint8 images from a split -> normalised float inputs for the backbone."""
    return normalize_images(to_float_images(batch, device, image_size), normalize)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def rank_block(count: int, rank: int, size: int) -> slice:
    """The contiguous block of ``count`` batches that ``rank`` of ``size`` takes (the blocks
    differ by one batch at most, in rank order). Whole single-process batches, so every
    image passes through the backbone in the batch it would have had in one process."""
    return slice(count * rank // size, count * (rank + 1) // size)


def rank_slices(n: int, batch_size: int, world: World) -> list[slice]:
    """``world.rank``'s share of the batches of ``n`` images (all of them for one process)."""
    slices = batch_slices(n, batch_size)
    return slices[rank_block(len(slices), world.rank, world.size)]


def rank_rows(n: int, batch_size: int, world: World) -> list[int]:
    """How many of the ``n`` images each rank of ``world`` extracts, in rank order."""
    return [
        sum(part.stop - part.start for part in rank_slices(n, batch_size, World(rank, world.size)))
        for rank in range(world.size)
    ]


def _batchnorm_counts(module: nn.Module) -> list[int]:
    return [
        int(m.num_batches_tracked)
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.num_batches_tracked is not None
    ]


@contextlib.contextmanager
def frozen(backbone: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no grad inside the block; each module's train flag restored after.

    A backbone whose forward puts BatchNorm back into train mode would silently change its
    running statistics; the BatchNorm step counters are compared to catch that.
    """
    modes = [(m, m.training) for m in backbone.modules()]
    counts = _batchnorm_counts(backbone)
    backbone.eval()
    try:
        with torch.no_grad():
            yield backbone
    finally:
        for module, mode in modes:
            module.training = mode
    if _batchnorm_counts(backbone) != counts:
        raise RuntimeError("the frozen backbone updated its BatchNorm statistics during a probe")


def fold_batchnorm(backbone: nn.Module) -> nn.Module:
    """An inference copy of ``backbone`` with every ``Conv2d`` directly followed by a
    ``BatchNorm2d`` in an ``nn.Sequential`` merged into one convolution (eval mode only).

    Same outputs up to float rounding, one pass over the largest activations fewer: feature
    extraction runs about 1.35x faster for the CFN on CPU (``bench/quickstart_speed.py``).
    Returns ``backbone`` itself when it has no such pair; never changes it.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def pairs(module: nn.Module) -> list[tuple[nn.Sequential, int]]:
        found = []
        for sub in module.modules():
            if isinstance(sub, nn.Sequential):
                children = list(sub)
                for i in range(len(children) - 1):
                    conv, norm = children[i], children[i + 1]
                    if (
                        type(conv) is nn.Conv2d
                        and type(norm) is nn.BatchNorm2d
                        and norm.track_running_stats
                        and norm.running_mean is not None
                    ):
                        found.append((sub, i))
        return found

    if backbone.training or not pairs(backbone):
        return backbone
    folded = copy.deepcopy(backbone)
    for sequential, i in pairs(folded):
        sequential[i] = fuse_conv_bn_eval(sequential[i], sequential[i + 1])
        sequential[i + 1] = nn.Identity()
    return folded


def forward_layers(
    backbone: nn.Module, x: torch.Tensor, layers: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Features of ``layers`` for a batch, flattened to ``(B, D)`` float32."""
    out = backbone.probe_features(x, list(layers))
    return {name: out[name].reshape(x.shape[0], -1).float() for name in layers}


def extract_features(
    backbone: nn.Module,
    split: ImageSplit,
    layers: Sequence[str],
    image_size: int,
    device: Any,
    batch_size: int = 256,
    normalize: str = "per_image",
    progress: bool = True,
    world: World = SINGLE,
) -> dict[str, torch.Tensor]:
    """Features of every image of ``split`` for each of ``layers``: ``{layer: (N, D)}`` on CPU.

    Images are resized to ``image_size`` on the device (bilinear, antialiased) when the
    split's size differs, then normalised (``normalize_images``). With a distributed
    ``world``: only this rank's block of the batches (``rank_slices``), in order.
    """
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    slices = rank_slices(len(split), batch_size, world)
    with (
        frozen(backbone),
        progress_bar(
            "extracting features", total=len(slices), unit="batch", enabled=progress
        ) as bar,
    ):
        inference = fold_batchnorm(backbone)
        for part in slices:
            x = backbone_inputs(split.images[part], device, image_size, normalize)
            for name, value in forward_layers(inference, x, layers).items():
                chunks[name].append(value.cpu())
            bar.advance(1)
    if not slices:  # a rank with no batch of a tiny split: its share is empty, not shapeless
        return _empty_rows(backbone, split, layers, image_size, device, normalize)
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def _empty_rows(
    backbone: nn.Module,
    split: ImageSplit,
    layers: Sequence[str],
    image_size: int,
    device: Any,
    normalize: str,
) -> dict[str, torch.Tensor]:
    """``{layer: (0, D)}``: the feature widths, from one image when there is one."""
    if len(split) == 0:
        return {name: torch.empty(0) for name in layers}
    with frozen(backbone):
        x = backbone_inputs(split.images[:1], device, image_size, normalize)
        return {
            name: value[:0].cpu() for name, value in forward_layers(backbone, x, layers).items()
        }


def features_digest(features: dict[str, torch.Tensor]) -> str:
    """sha256 of every layer's name, dtype, shape and bytes: what a cache entry must match."""
    digest = hashlib.sha256()
    for name in sorted(features):
        tensor = features[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_cached(
    path: Path, layers: Sequence[str], n: int, meta: dict
) -> dict[str, torch.Tensor] | None:
    """The cached features, or None when the file is missing, unreadable or does not verify:
    its recorded key (``meta``) must be the one asked for and its tensors must hash to the
    digest stored with them, so a damaged or foreign file is recomputed, never trusted."""
    if not path.exists():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if json.loads(stored["meta"]) != meta:
            return None
        features = {name: stored["features"][name] for name in layers}
        if stored["digest"] != features_digest(stored["features"]):
            return None
    except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
        return None
    if any(value.shape[0] != n for value in features.values()):
        return None
    return features


def _cache_entry(
    checkpoint_id: str,
    split: ImageSplit,
    layers: Sequence[str],
    image_size: int,
    normalize: str,
    cache_dir: str | Path | None,
) -> tuple[Path | None, dict]:
    """Where the features of ``split`` are cached and the key record stored with them;
    the path is ``None`` when they cannot be cached (no ``cache_dir`` or no ``split.key``)."""
    transform = transform_description(image_size, normalize)
    meta = {
        "checkpoint": checkpoint_id,
        "split": split.key,
        "layers": list(layers),
        "transform": transform,
    }
    if cache_dir is None or not split.key:
        return None, meta
    key = feature_cache_key(checkpoint_id, split.key, layers, image_size, transform)
    return Path(cache_dir) / "features" / f"{key}.pt", meta


def _store_features(path: Path, meta: dict, features: dict[str, torch.Tensor]) -> None:
    stored = {"features": features, "meta": json.dumps(meta), "digest": features_digest(features)}
    atomic_torch_save(path, stored, "feature-cache-write")


def cached_features(
    backbone: nn.Module,
    split: ImageSplit,
    layers: Sequence[str],
    image_size: int,
    device: Any,
    *,
    checkpoint_id: str,
    cache_dir: str | Path | None,
    batch_size: int = 256,
    normalize: str = "per_image",
    progress: bool = True,
    before_extract: Callable[[], None] | None = None,
) -> dict[str, torch.Tensor]:
    """``extract_features`` through the cache at ``<cache_dir>/features/<key>.pt``.

    A split without a ``key`` (or ``cache_dir=None``) is never cached: nothing identifies
    its contents. ``before_extract`` runs only on a cache miss, before the backbone does.
    """
    path, meta = _cache_entry(checkpoint_id, split, layers, image_size, normalize, cache_dir)
    if path is not None:
        features = _load_cached(path, layers, len(split), meta)
        if features is not None:
            return features
    if before_extract is not None:
        before_extract()
    features = extract_features(
        backbone, split, layers, image_size, device, batch_size, normalize, progress
    )
    if path is not None:
        _store_features(path, meta, features)
    return features


class FeatureSource:
    """One backbone's features for any split, through the cache.

    ``prepare(world)`` (e.g. BatchNorm recalibration of a random-init backbone) runs once,
    the first time the backbone itself is needed: never when every split is a cache hit. In
    a torchrun job ``fill_cache_together`` runs it on every rank at once, each doing its
    share (``world``); alone it runs with ``SINGLE``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        checkpoint_id: str,
        layers: Sequence[str],
        image_size: int,
        device: Any,
        cache_dir: str | Path | None,
        batch_size: int = 256,
        normalize: str = "per_image",
        prepare: Callable[[World], None] | None = None,
        progress: bool = True,
    ):
        self.backbone, self.checkpoint_id = backbone, checkpoint_id
        self.layers, self.image_size = list(layers), int(image_size)
        self.device, self.cache_dir = device, cache_dir
        self.batch_size, self.normalize, self.progress = int(batch_size), normalize, progress
        self._prepare = prepare
        self._prepared = prepare is None

    def prepare(self, world: World = SINGLE) -> None:
        """Run ``prepare`` now if it has not run yet (every rank of ``world`` together)."""
        if not self._prepared:
            self._prepared = True
            self._prepare(world)

    def _entry(self, split: ImageSplit) -> tuple[Path | None, dict]:
        return _cache_entry(
            self.checkpoint_id, split, self.layers, self.image_size, self.normalize, self.cache_dir
        )

    def cacheable(self, split: ImageSplit) -> bool:
        """Whether ``split``'s features have a cache entry (a cache folder and a split key)."""
        return self._entry(split)[0] is not None

    def is_cached(self, split: ImageSplit) -> bool:
        """Whether ``features(split)`` would be a cache hit (the entry exists and verifies)."""
        path, meta = self._entry(split)
        return path is not None and _load_cached(path, self.layers, len(split), meta) is not None

    def store(self, split: ImageSplit, features: dict[str, torch.Tensor]) -> None:
        """Write ``features`` as ``split``'s cache entry (what ``features(split)`` writes)."""
        path, meta = self._entry(split)
        if path is None:
            raise ValueError(f"split {split.key!r} has no feature cache entry")
        _store_features(path, meta, features)

    def features(self, split: ImageSplit) -> dict[str, torch.Tensor]:
        return cached_features(
            self.backbone,
            split,
            self.layers,
            self.image_size,
            self.device,
            checkpoint_id=self.checkpoint_id,
            cache_dir=self.cache_dir,
            batch_size=self.batch_size,
            normalize=self.normalize,
            progress=self.progress,
            before_extract=self.prepare,
        )


def recalibrate_batchnorm(
    backbone: nn.Module,
    split: ImageSplit,
    image_size: int,
    device: Any,
    batches: int | None = None,
    batch_size: int = 256,
    normalize: str = "per_image",
    seed: int = 0,
    progress: bool = True,
    world: World = SINGLE,
) -> int:
    """Re-estimate every BatchNorm's running mean/var on ``split``'s images; returns how many
    images were used.

    For the random-init baseline only: its running statistics are still the initial
    (0, 1), which do not match its activations, so a probe on it would measure a broken
    network instead of random features. Statistics are a cumulative average
    (``momentum=None``) over up to ``batches`` batches of a seeded random subset; only the
    BatchNorm layers run in train mode (Dropout stays off) and nothing gets gradients.

    With a distributed ``world`` (every rank calls this together, on identical backbones)
    each rank runs its block of those batches and ``_merge_running_stats`` averages the
    ranks' statistics weighted by their batch counts: the single process's cumulative
    average over all batches, up to float rounding, for ``1 / world.size`` of its time. A
    batch's statistics depend only on its own images (train-mode BatchNorm normalises with
    the batch's, not the running, statistics), so the split over ranks changes nothing else.
    """
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    total = len(split) if batches is None else min(len(split), batches * batch_size)
    order = np.random.default_rng([int(seed), 7]).permutation(len(split))[:total]
    momenta = [m.momentum for m in norms]
    backbone.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    slices = rank_slices(total, batch_size, world)
    try:
        with (
            torch.no_grad(),
            progress_bar(
                "recalibrating BatchNorm", total=len(slices), unit="batch", enabled=progress
            ) as bar,
        ):
            for part in slices:
                # Sorted indices: the memmap is read front to back within a batch.
                indices = np.sort(order[part])
                x = backbone_inputs(split.images[indices], device, image_size, normalize)
                backbone(x)
                bar.advance(1)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        backbone.eval()
    if world.distributed:
        _merge_running_stats(norms)
    return total


def _merge_running_stats(norms: list[nn.modules.batchnorm._BatchNorm]) -> None:
    """Every rank's cumulative BatchNorm averages (over its ``num_batches_tracked`` batches)
    become the average over all ranks' batches: one all-reduce of count-weighted sums, in
    float64 so the merge adds no rounding of its own."""
    tracked = [m for m in norms if m.running_mean is not None and m.running_var is not None]
    if not tracked:
        return
    parts = []
    for m in tracked:
        count = m.num_batches_tracked.double()
        parts += [m.running_mean.double() * count, m.running_var.double() * count, count.view(1)]
    sums = distributed.all_reduce_sum(torch.cat(parts))
    offset = 0
    for m in tracked:
        width = m.running_mean.numel()
        mean, var = sums[offset : offset + width], sums[offset + width : offset + 2 * width]
        count = sums[offset + 2 * width]
        offset += 2 * width + 1
        m.running_mean.copy_(mean / count)
        m.running_var.copy_(var / count)
        m.num_batches_tracked.fill_(int(count))


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Random resized crop and horizontal flip for a whole batch, on its device.

    Each image gets a crop covering ``scale`` of its area with aspect ``ratio`` (clamped
    inside the image), resampled back to the same size; half are mirrored. One
    ``grid_sample`` does it all, no Python loop over images.
    """
    batch = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, device=x.device, generator=generator)

    area = uniform(*scale)
    aspect = uniform(math.log(ratio[0]), math.log(ratio[1])).exp()
    # Half-extents in normalised coordinates ([-1, 1] spans the image).
    half_w = (area * aspect).sqrt().clamp(max=1.0)
    half_h = (area / aspect).sqrt().clamp(max=1.0)
    cx = uniform(-1.0, 1.0) * (1 - half_w)
    cy = uniform(-1.0, 1.0) * (1 - half_h)
    flip = torch.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = half_w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = half_h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_init_source(
    make_random: Callable[[], nn.Module],
    train: ImageSplit,
    layers: Sequence[str],
    image_size: int,
    device: Any,
    cache_dir: str | Path | None,
    seed: int,
    batch_size: int = 256,
    normalize: str = "per_image",
    recalibration_images: int = RECALIBRATION_IMAGES,
) -> FeatureSource:
    """Features of a random-init backbone, the fair baseline: its BatchNorm statistics are
    re-estimated on the probe's training images (``recalibrate_batchnorm``) before it
    extracts anything, and only if some split is not already cached.

    Its cache identity is the hash of its initial weights plus the recalibration recipe.
    """
    backbone = make_random().to(device)
    backbone.eval()
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    batches = max(1, recalibration_images // batch_size)
    recipe = f"bn-recalibrated:{train.key}:{batches}x{batch_size}:{seed}"
    checkpoint_id = f"random-init:{state_dict_hash(backbone)}:{recipe}"

    def prepare(world: World) -> None:
        recalibrate_batchnorm(
            backbone,
            train,
            image_size,
            device,
            batches,
            batch_size,
            normalize,
            seed,
            progress=world.is_main,
            world=world,
        )

    return FeatureSource(
        backbone,
        checkpoint_id,
        layers,
        image_size,
        device,
        cache_dir,
        batch_size=batch_size,
        normalize=normalize,
        prepare=prepare,
    )

"""The pooling rule for per-layer probes (conv1 ... convN, like the papers' tables).

A conv map ``(B, C, H, W)`` is average-pooled to about 9,000 dimensions, as in Zhang et al.
2017 and Goyal et al. 2019 (they pool AlexNet's conv1-5 to 9,000-9,600 values):

    s = max(1, floor(sqrt(9216 / C) + 0.5))            (9216 = 96 * 96)
    features = adaptive_avg_pool2d(map, (s, s)).flatten(1)     ->  C * s * s values

``s`` depends only on the channel count, never on the map's size: when the map is smaller
than ``s x s`` (a small input), adaptive pooling repeats values instead of shrinking the
output. So a layer's width ``C * s * s`` is the same at every input size, and a backbone's
declared ``feature_layers`` are exact whatever ``image_size`` a probe uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from jigsawkit.errors import UserError

# About how many values a pooled probe layer has (96 x 96).
PROBE_TARGET_DIM = 9216


def probe_side(channels: int) -> int:
    """Side ``s`` of the ``s x s`` grid a map of ``channels`` channels is pooled to."""
    return max(1, math.floor(math.sqrt(PROBE_TARGET_DIM / channels) + 0.5))


def probe_width(channels: int) -> int:
    """The width of a pooled probe layer of ``channels`` channels: ``C * s * s``."""
    return channels * probe_side(channels) ** 2


def probe_pool(feature_map: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, C * s * s)`` by ``probe_side(C)`` adaptive average pooling."""
    side = probe_side(feature_map.shape[1])
    return F.adaptive_avg_pool2d(feature_map, (side, side)).flatten(1)


def check_probe_layers(model: nn.Module, layers: Sequence[str], kind: str) -> None:
    """Refuse, in one line, layer names the backbone does not declare."""
    unknown = [name for name in layers if name not in model.feature_layers]
    if unknown:
        raise UserError(
            f"{kind} has no feature layer {', '.join(map(repr, unknown))}; "
            f"layers are {', '.join(model.feature_layers)}"
        )

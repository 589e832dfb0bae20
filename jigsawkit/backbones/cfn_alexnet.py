"""``CFNAlexNet``: Noroozi & Favaro's (2016) per-tile trunk, an AlexNet with the paper's widths.

Per 64 px tile: conv1 96 11x11 stride 2 -> pool -> conv2 256 5x5 -> pool -> conv3 384 3x3
-> conv4 384 3x3 -> conv5 256 3x3 -> pool (max 3x3 stride 2, as AlexNet) -> fc6 1024 on
the flattened 256 x 2 x 2 tile map -> ReLU -> dropout. The jigsaw head (fc7 4096, fc8 over
the permutations) is the pretext task's: ``head_hidden: 4096`` and ``dropout: 0.5``.

Each conv is followed by BatchNorm (``batch_norm: true``, the default: training starts
reliably without the paper's careful initialisation) or, with ``batch_norm: false``, by
nothing but ReLU, with AlexNet's local response normalisation after conv1 and conv2 as in
the paper.

For inputs of another size than ``input_size`` (a whole image in a probe) the conv5 map
is average-pooled to the side it has at ``input_size`` before fc6, so every input of at
least ``MIN_INPUT`` px works. Probe layers: ``conv1`` ... ``conv5`` (the stage outputs,
after the pool where AlexNet has one), each pooled to about 9,000 values by
``probe_pool``, and ``fc6``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from jigsawkit.backbones.probe_pool import check_probe_layers, probe_pool, probe_width
from jigsawkit.errors import UserError

# (out channels, kernel, stride, padding, max-pool after it) for conv1 ... conv5.
_CONVS = (
    (96, 11, 2, 0, True),
    (256, 5, 1, 2, True),
    (384, 3, 1, 1, False),
    (384, 3, 1, 1, False),
    (256, 3, 1, 1, True),
)
# The smallest input whose three 3x3 stride-2 pools all still have a full window.
MIN_INPUT = 39


def _side_after(size: int) -> int:
    """Side of the conv5 map (after its pool) for an input of ``size`` px."""
    for _, kernel, stride, padding, pooled in _CONVS:
        size = (size + 2 * padding - kernel) // stride + 1
        if pooled:
            size = (size - 3) // 2 + 1
    return size


class CFNAlexNet(nn.Module):
    """AlexNet-style conv1-5 per tile -> fc6 on the flattened tile map (module docstring)."""

    def __init__(
        self,
        *,
        batch_norm: bool,
        fc6: int,
        dropout: float,
        input_size: int,
    ):
        super().__init__()
        if input_size < MIN_INPUT:
            raise UserError(f"cfn_alexnet: input_size must be >= {MIN_INPUT}, found {input_size}")
        stages = []
        in_channels = 3
        for index, (out_channels, kernel, stride, padding, pooled) in enumerate(_CONVS):
            layers: list[nn.Module] = [
                nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=not batch_norm)
            ]
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            if not batch_norm and index < 2:
                layers.append(nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0))
            if pooled:
                layers.append(nn.MaxPool2d(3, 2))
            stages.append(nn.Sequential(*layers))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        self.map_side = _side_after(int(input_size))
        self.fc6 = nn.Sequential(
            nn.Linear(in_channels * self.map_side**2, fc6),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.input_size = int(input_size)
        self.out_dim = int(fc6)
        self.feature_layers = {
            **{f"conv{i + 1}": probe_width(c[0]) for i, c in enumerate(_CONVS)},
            "fc6": int(fc6),
        }
        self.default_probe_layer = "conv5"

    def _run(self, x: torch.Tensor, keep: Sequence[str]) -> tuple[torch.Tensor, dict]:
        if min(x.shape[-2:]) < MIN_INPUT:
            raise UserError(
                f"cfn_alexnet needs inputs of at least {MIN_INPUT} px, got {tuple(x.shape[-2:])}"
            )
        kept = {}
        for index, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if f"conv{index}" in keep:
                kept[f"conv{index}"] = probe_pool(x)
        if x.shape[-1] != self.map_side or x.shape[-2] != self.map_side:
            x = F.adaptive_avg_pool2d(x, self.map_side)
        return x.flatten(1), kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc6(self._run(x, ())[0])

    def probe_features(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Features of the named layers, all from one forward pass."""
        check_probe_layers(self, layers, "cfn_alexnet")
        flat, out = self._run(x, layers)
        if "fc6" in layers:
            out["fc6"] = self.fc6(flat)
        return {name: out[name] for name in layers}

"""``CFN``: the Context Free Network per-tile trunk (conv stages -> global pool -> tile fc).

Fully convolutional up to a global average pool, so it accepts any input size >= 8: a
jigsaw tile during pretraining, a whole image during the linear probe.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from jigsawkit.errors import UserError


class CFN(nn.Module):
    """Conv stages (conv -> BN -> ReLU -> 2x2 max-pool) -> GAP ("conv") -> Linear -> ReLU ("fc").

    A stage skips its pool once the feature map would shrink below 2 px, so small tiles
    keep a spatial extent through every stage.
    """

    def __init__(
        self,
        channels: Sequence[int] = (96, 256, 384),
        kernel_sizes: Sequence[int] = (5, 3, 3),
        batch_norm: bool = True,
        tile_fc: int = 1024,
        input_size: int = 64,
    ):
        super().__init__()
        if len(channels) != len(kernel_sizes):
            raise UserError(
                f"cfn: kernel_sizes has {len(kernel_sizes)} entries but channels has "
                f"{len(channels)}; give one kernel size per conv stage"
            )
        stages = []
        in_channels = 3
        for out_channels, kernel in zip(channels, kernel_sizes):
            layers: list[nn.Module] = [
                nn.Conv2d(
                    in_channels, out_channels, kernel, padding=kernel // 2, bias=not batch_norm
                )
            ]
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            stages.append(nn.Sequential(*layers))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Sequential(nn.Linear(in_channels, tile_fc), nn.ReLU(inplace=True))
        self.input_size = int(input_size)
        self.out_dim = int(tile_fc)
        self.feature_layers = {"conv": int(in_channels), "fc": int(tile_fc)}
        self.default_probe_layer = "conv"

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
            if min(x.shape[-2:]) // 2 >= 2:
                x = self.pool(x)
        return x.mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self._conv(x))

    def forward_features(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Features of the named layers (``conv``: pooled last conv stage, ``fc``: tile fc)."""
        unknown = [name for name in layers if name not in self.feature_layers]
        if unknown:
            raise UserError(
                f"cfn has no feature layer {', '.join(map(repr, unknown))}; "
                f"layers are {', '.join(self.feature_layers)}"
            )
        conv = self._conv(x)
        out = {"conv": conv}
        if "fc" in layers:
            out["fc"] = self.fc(conv)
        return {name: out[name] for name in layers}

"""``CFN``: the Context Free Network per-tile trunk (conv stages -> global pool -> tile fc).

Fully convolutional up to a global average pool, so it accepts any input size >= 8: a
jigsaw tile during pretraining, a whole image during the linear probe.

Probe layers, in declared order: ``conv1`` ... ``convN`` (stage i's output after its pool,
average-pooled to about 9,000 values by ``probe_pool``), ``conv`` (the last stage globally
average-pooled: the default) and ``fc`` (the tile fc, the forward output).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from jigsawkit.backbones.probe_pool import check_probe_layers, probe_pool, probe_width
from jigsawkit.errors import UserError


class CFN(nn.Module):
    """Conv stages (conv -> BN -> ReLU -> 2x2 max-pool) -> GAP ("conv") -> Linear -> ReLU ("fc").

    A stage skips its pool once the feature map would shrink below 2 px, so small tiles
    keep a spatial extent through every stage.
    """

    def __init__(
        self,
        *,
        channels: Sequence[int],
        kernel_sizes: Sequence[int],
        batch_norm: bool,
        tile_fc: int,
        input_size: int,
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
        self.feature_layers = {
            **{f"conv{i + 1}": probe_width(c) for i, c in enumerate(channels)},
            "conv": int(in_channels),
            "fc": int(tile_fc),
        }
        self.default_probe_layer = "conv"
        # Channels-last activations: oneDNN's convolutions, BatchNorm and max-pool run about
        # 1.6x faster in that layout on CPU (bench/quickstart_speed.py).
        self.channels_last = True

    def _conv(self, x: torch.Tensor, keep: Sequence[str] = ()) -> tuple[torch.Tensor, dict]:
        """The globally pooled last stage, and the ``probe_pool`` of the stages in ``keep``."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        kept = {}
        for index, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if min(x.shape[-2:]) // 2 >= 2:
                x = self.pool(x)
            if f"conv{index}" in keep:
                kept[f"conv{index}"] = probe_pool(x)
        return x.mean(dim=(-2, -1)), kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self._conv(x)[0])

    def probe_features(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Features of the named layers, all from one forward pass (module docstring)."""
        check_probe_layers(self, layers, "cfn")
        conv, out = self._conv(x, layers)
        out["conv"] = conv
        if "fc" in layers:
            out["fc"] = self.fc(conv)
        return {name: out[name] for name in layers}

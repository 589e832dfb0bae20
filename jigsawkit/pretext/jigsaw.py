"""``JigsawTask``: solve N x N jigsaw puzzles (Noroozi & Favaro 2016) with a shared tile trunk.

Each image becomes a puzzle (see ``jigsawkit.pretext.tiling``); the backbone embeds all
``B * N * N`` tiles in ONE call (tiles folded into the batch), the embeddings of a puzzle
are concatenated in slot order and an MLP head predicts which permutation of the set
shuffled the tiles.
"""

from __future__ import annotations

import torch
from torch import nn

from jigsawkit.pretext.base import PretextTask
from jigsawkit.pretext.permutations import build_permutations
from jigsawkit.pretext.tiling import TilingSpec, make_puzzles


class JigsawTask(PretextTask):
    """Jigsaw puzzle pretext task: ``num_classes`` = size of the permutation set."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        grid: int,
        permutations: dict,
        crop: int,
        tile: int,
        grayscale_prob: float,
        channel_jitter: float,
        normalize_tiles: bool,
        head_hidden: int,
        dropout: float,
        image_size: int | None,
    ):
        perms = build_permutations(
            grid, int(permutations["count"]), permutations["selection"], int(permutations["seed"])
        )
        super().__init__(backbone, image_size or crop, len(perms))
        self.spec = TilingSpec(
            grid=grid,
            crop=crop,
            tile=tile,
            grayscale_prob=grayscale_prob,
            channel_jitter=channel_jitter,
            normalize=normalize_tiles,
        )
        self.spec.validate(self.image_size)
        # Saved with the weights: a head is meaningless without the set it was trained on.
        self.register_buffer("permutations", torch.as_tensor(perms, dtype=torch.long))
        in_features = self.spec.tiles * int(backbone.out_dim)
        layers: list[nn.Module] = [nn.Linear(in_features, head_hidden), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(head_hidden, self.num_classes))
        self.head = nn.Sequential(*layers)

    @property
    def input_normalization(self) -> str:
        """``per_image`` when tiles are normalised: each tile gets zero mean and unit variance
        per channel, which is what ``per_image`` does to a whole image; else ``none``."""
        return "per_image" if self.spec.normalize else "none"

    def prepare(
        self, images: torch.Tensor, generator: torch.Generator | None, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Puzzles ``(B, N*N, 3, tile, tile)`` and permutation indices ``(B,)``."""
        perms = self.permutations.to(images.device)
        return make_puzzles(images, perms, self.spec, train=train, generator=generator)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        batch, tiles = inputs.shape[:2]
        features = self.backbone(inputs.flatten(0, 1))  # one call on (B*N*N, 3, t, t)
        return self.head(features.reshape(batch, tiles * features.shape[-1]))

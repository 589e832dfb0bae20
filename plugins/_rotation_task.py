"""The rotation task's implementation: imported only when the task is built.

``plugins/rotation.py`` registers it by name (``target="._rotation_task:RotationTask"``),
so listing components and validating experiments never import this module or torch. The
plugin loader skips files whose name starts with ``_``: this one is no plugin of its own,
just the module the registration points at, inside the same plugin folder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jigsawkit.pretext.base import PretextTask


class RotationTask(PretextTask):
    """Predict which of 0, 90, 180, 270 degrees an image was rotated by.

    Built by the registry with every parameter of ``ROTATION_SCHEMA`` (its defaults filled),
    so none is restated here.
    """

    input_normalization = "per_image"

    def __init__(self, backbone: nn.Module, *, image_size: int, head_hidden: int):
        super().__init__(backbone, image_size, num_classes=4)
        dim = int(backbone.out_dim)
        if head_hidden > 0:
            self.head = nn.Sequential(
                nn.Linear(dim, head_hidden), nn.ReLU(inplace=True), nn.Linear(head_hidden, 4)
            )
        else:
            self.head = nn.Linear(dim, 4)

    def prepare(
        self, images: torch.Tensor, generator: torch.Generator | None, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated, normalised images and their rotation ``k`` (turned by ``k * 90`` degrees)."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(
                images,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        where = generator.device if generator is not None else images.device
        targets = torch.randint(0, 4, (images.shape[0],), generator=generator, device=where)
        targets = targets.to(images.device)
        rotated = images.clone()
        for k in range(1, 4):  # four rotations, not a loop over samples
            mask = targets == k
            rotated[mask] = torch.rot90(images[mask], k, dims=(-2, -1))
        return self.normalize(rotated), targets

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(inputs))

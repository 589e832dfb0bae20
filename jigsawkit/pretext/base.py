"""``PretextTask``: the base class of pretext tasks (built-ins and plugins subclass it).

The contract (docs/architecture.md): a task owns its head and builds its own batches.

- ``image_size``: side of the square images it wants from the data;
- ``num_classes`` and ``chance`` (= 1 / num_classes);
- ``prepare(images, generator, train) -> (inputs, targets)`` for a whole batch on the device;
- ``forward(inputs) -> logits (B, num_classes)``; ``loss(logits, targets)`` (cross-entropy).

This module imports torch: registration modules import it inside their factories only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PretextTask(nn.Module):
    """A pretext task wrapping a backbone (``self.backbone``) and the head it owns."""

    def __init__(self, backbone: nn.Module, image_size: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.image_size = int(image_size)
        self.num_classes = int(num_classes)

    @property
    def chance(self) -> float:
        """Accuracy of guessing uniformly at random."""
        return 1.0 / self.num_classes

    def prepare(
        self, images: torch.Tensor, generator: torch.Generator | None, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets for a batch of images ``(B, 3, S, S)`` in ``[0, 1]``."""
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)

"""``PretextTask``: the base class of pretext tasks (built-ins and plugins subclass it).

The contract (docs/architecture.md): a task owns its head and builds its own batches.

- ``image_size``: side of the square images it wants from the data;
- ``input_normalization``: how the images it feeds the backbone are normalised (one of
  ``jigsawkit.normalization.NORMALIZATIONS``); the exported feature extractor records it
  and the probes feed the same by default;
- ``num_classes`` and ``chance`` (= 1 / num_classes);
- ``prepare(images, generator, train) -> (inputs, targets)`` for a whole batch on the device;
- ``forward(inputs) -> logits (B, num_classes)``; ``loss(logits, targets)`` (cross-entropy).

This module imports torch: registration modules import it inside their factories only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jigsawkit.normalization import check_normalization, normalize_images


class PretextTask(nn.Module):
    """A pretext task wrapping a backbone (``self.backbone``) and the head it owns.

    Every task declares ``input_normalization``: how the inputs ``prepare`` builds are
    normalised, as whole images, in the terms the probes use (``per_image``: zero mean and
    unit variance per image and channel; ``imagenet``; ``none``: ``[0, 1]`` unchanged). A
    task whose inputs are tiles or crops names the normalisation that, applied to a whole
    image, matches what each piece got (the jigsaw's per-tile normalisation is
    ``per_image``). A task that does not declare it keeps ``None`` ("unknown"): the run
    warns, exports ``None``, and the probes fall back to ``per_image``, which may not be what
    the backbone saw; BatchNorm statistics learnt on other inputs bias the probe down.
    """

    #: One of ``NORMALIZATIONS``, or ``None`` when a (plugin) task does not say.
    input_normalization: str | None = None

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

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` in ``[0, 1]`` normalised as this task declares (unchanged if undeclared)."""
        return normalize_images(images, self.input_normalization or "none")

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)


def declared_normalization(task: nn.Module, where: str) -> str | None:
    """The task's ``input_normalization``, checked: one of ``NORMALIZATIONS`` or ``None``.

    A value that is neither is a ``UserError`` naming ``where`` (the pretext selection).
    """
    from jigsawkit.errors import UserError

    try:
        return check_normalization(
            getattr(task, "input_normalization", None), f"{where}: input_normalization"
        )
    except ValueError as error:
        raise UserError(str(error)) from None

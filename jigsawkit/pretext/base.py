"""``PretextTask``: the base class of pretext tasks (built-ins and plugins subclass it).

It implements the contract ``jigsawkit.contracts.PretextTask`` (every rule is stated
there): it keeps ``backbone``, ``image_size`` and ``num_classes``, derives ``chance``,
applies the declared ``input_normalization`` (``normalize``) and defaults ``loss`` to
cross-entropy; a task writes ``prepare`` and ``forward``.

This module imports torch: registration modules import it inside their factories only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jigsawkit.normalization import normalize_images


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

"""Rotation prediction pretext task (Gidaris et al. 2018), as a plugin.

Written only against jigsawkit's public API, as an example of a pretext task that lives
outside the core. Each image (resized to ``image_size``) is rotated by ``k * 90`` degrees,
``k`` drawn per sample; the backbone's features go through a head that predicts ``k``.
Each rotated image is normalised per image and channel (zero mean, unit variance), and the
task declares it (``input_normalization = "per_image"``): the exported feature extractor
records it and the probes feed the same by default, so the backbone's BatchNorm statistics
fit the probe's inputs as well as the random-init baseline's re-estimated ones do. (Fed
raw ``[0, 1]`` images, as it once was, its statistics were wrong at probe time and the gain
biased down.) The synthetic data has an upright orientation to learn (light from above,
contact shadows, objects standing upright; docs/datasets.md).

Use it with ``--plugins plugins/`` (or ``plugins: [../plugins]`` in an experiment) and::

    pretext: {name: rotation, image_size: 64}
"""

from __future__ import annotations

from typing import Any

from jigsawkit import register_pretext

ROTATION_SCHEMA = {
    "properties": {
        "image_size": {
            "type": "integer",
            "minimum": 8,
            "default": 64,
            "description": "side of the (whole) images that are rotated",
        },
        "head_hidden": {
            "type": "integer",
            "minimum": 0,
            "default": 0,
            "description": "hidden units of the head; 0 for a linear head",
        },
    }
}


_TASK_CLASS: type | None = None


def _task_class() -> type:
    """The task class, defined on first use so that registering does not import torch."""
    global _TASK_CLASS
    if _TASK_CLASS is not None:
        return _TASK_CLASS
    import torch
    import torch.nn.functional as F
    from torch import nn

    from jigsawkit.pretext.base import PretextTask

    class RotationTask(PretextTask):
        """Predict which of 0, 90, 180, 270 degrees an image was rotated by."""

        input_normalization = "per_image"

        def __init__(self, backbone: nn.Module, image_size: int = 64, head_hidden: int = 0):
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

    _TASK_CLASS = RotationTask
    return RotationTask


@register_pretext("rotation", schema=ROTATION_SCHEMA)
def rotation(backbone: Any, **params: Any) -> Any:
    """Rotation prediction: which of 0/90/180/270 degrees was the image turned by."""
    return _task_class()(backbone, **params)

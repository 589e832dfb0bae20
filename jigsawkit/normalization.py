"""How images in ``[0, 1]`` become network inputs: the normalisations jigsawkit knows.

Shared by the pretext tasks (which declare the normalisation they feed the backbone, see
``PretextTask.input_normalization``), the exported feature extractor (which records it) and
the probes (which feed the same by default).
"""

from __future__ import annotations

import torch

NORMALIZATIONS = ("per_image", "imagenet", "none")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Same epsilon as the jigsaw task's per-tile normalisation, so a whole image is normalised
# the way the tiles the backbone learned from were.
PER_IMAGE_EPS = 1e-4
# What a probe feeds when nothing says how the backbone was pretrained.
FALLBACK_NORMALIZATION = "per_image"


def normalize_images(x: torch.Tensor, normalize: str) -> torch.Tensor:
    """``per_image``: zero mean, unit variance per image and channel (as jigsaw tiles are);
    ``imagenet``: ImageNet mean/std; ``none``: the ``[0, 1]`` images unchanged."""
    if normalize == "per_image":
        mean = x.mean(dim=(-2, -1), keepdim=True)
        var = x.var(dim=(-2, -1), keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + PER_IMAGE_EPS)
    if normalize == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype)[:, None, None]
        return (x - mean) / std
    if normalize == "none":
        return x
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")


def check_normalization(value: object, where: str) -> str | None:
    """``value`` if it is one of ``NORMALIZATIONS`` or ``None`` (undeclared), else a
    ``ValueError`` naming ``where``."""
    if value is None or (isinstance(value, str) and value in NORMALIZATIONS):
        return value
    raise ValueError(
        f"{where} is {value!r}; expected one of {', '.join(NORMALIZATIONS)} (or None: not declared)"
    )

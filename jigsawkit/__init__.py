"""jigsawkit: self-supervised pretraining of image backbones and measuring what they learned.

The public API (what plugins may import) is small and cheap to import:

- ``register_backbone``, ``register_pretext``, ``register_dataset``, ``register_evaluator``,
  ``register_search``, ``register_tracker``: decorators registering a factory function.
- ``registry(kind)``: the registry of one kind (``list``/``get``/``build``).
- ``load_feature_extractor(path)``: an exported, frozen feature extractor.
- ``UserError`` and its subclasses: errors reported as one line with exit code 2.
- ``jigsawkit.data.base.ImageSplit``, ``jigsawkit.pretext.base.PretextTask``: base types.
"""

from __future__ import annotations

from typing import Any

from jigsawkit.errors import ConfigError, DataMissingError, UserError
from jigsawkit.registry import (
    register_backbone,
    register_dataset,
    register_evaluator,
    register_pretext,
    register_search,
    register_tracker,
    registry,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataMissingError",
    "UserError",
    "load_feature_extractor",
    "register_backbone",
    "register_dataset",
    "register_evaluator",
    "register_pretext",
    "register_search",
    "register_tracker",
    "registry",
]


def load_feature_extractor(path: Any, map_location: str = "cpu") -> Any:
    """Load an exported feature extractor (frozen, eval mode) with ``weights_only=True``."""
    from jigsawkit.training.export import load_feature_extractor as _load

    return _load(path, map_location=map_location)

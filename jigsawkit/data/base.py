"""Types shared by all datasets."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class ImageSplit:
    """One split of a dataset, decoded: square uint8 images ``(N, S, S, 3)`` and labels.

    ``images`` is usually a read-only ``np.memmap`` from the decoded-image cache, so a
    split of any size costs little resident memory.
    """

    images: np.ndarray
    labels: np.ndarray | None
    num_classes: int | None = None
    class_names: list[str] | None = None
    skipped: int = 0
    key: str = ""
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

"""Types shared by all datasets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jigsawkit.errors import UserError

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


def ensure_present(dataset: Any, where: str) -> None:
    """Call the dataset's optional ``ensure_present()`` (fetch when allowed, else say what
    to fetch); its error names the config key ``where``.

    The contract (``jigsawkit.contracts.Dataset``): ``ensure_present()`` checks everything ``load()`` will read (files,
    index files, layout), cheaply and without decoding images, so that a run finds a
    broken dataset before it writes anything (``jigsawkit.preflight``).
    """
    from jigsawkit.contracts import optional_method

    check = optional_method(dataset, "ensure_present")
    if check is not None:
        try:
            check()
        except UserError as exc:
            raise type(exc)(f"{where}: {exc}") from None

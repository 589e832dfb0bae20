"""``cifar10`` and ``cifar100``: the CIFAR datasets, read through torchvision.

``test`` is the official test split; ``val`` is a seeded, class-stratified
``val_fraction`` of the official training split and ``train`` the rest of it. The archive
is fetched with jigsawkit's own download (md5 checked) and safe extraction; torchvision
then checks the md5 of every batch file before it unpickles it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from jigsawkit.data.base import SPLITS, ImageSplit
from jigsawkit.data.splits import ValFromTrain
from jigsawkit.errors import DataMissingError


def _torchvision_class(variant: str):
    from torchvision.datasets import CIFAR10, CIFAR100

    return {"cifar10": CIFAR10, "cifar100": CIFAR100}[variant]


class ArrayImages:
    """``decode`` callable over an in-memory ``(N, H, W, 3)`` uint8 array."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __call__(self, index: int) -> np.ndarray:
        return self.images[index]


class CifarDataset(ValFromTrain):
    """CIFAR-10 or CIFAR-100 (torchvision layout under ``root``; keywords: ValFromTrain's)."""

    has_labels = True

    def __init__(self, variant: str = "cifar10", **params: Any) -> None:
        super().__init__(variant, **params)
        self.variant = variant
        self.num_classes = 10 if variant == "cifar10" else 100
        self._class_names: list[str] | None = None

    def _fetch(self) -> None:
        from jigsawkit.data.download import download_url, safe_extract

        cls = _torchvision_class(self.variant)
        archive = download_url(cls.url, self.root / cls.filename, md5=cls.tgz_md5)
        safe_extract(archive, self.root)

    def _open(self, train: bool):
        cls = _torchvision_class(self.variant)
        folder = self.root / cls.base_folder
        if self.download and not folder.is_dir():
            self._fetch()
        try:
            return cls(str(self.root), train=train, download=False)
        except RuntimeError as exc:
            raise DataMissingError(
                f"{self.variant}: {folder} is missing or corrupted ({exc}); download "
                f"{cls.url} and extract it into {self.root}/ (or set download: true)"
            ) from exc

    def ensure_present(self) -> None:
        """Fetch the archive (``download: true``) or say what to fetch, before any work."""
        self._open(train=False)

    @property
    def class_names(self) -> list[str] | None:
        if self._class_names is None:
            try:
                self._class_names = list(self._open(train=False).classes)
            except DataMissingError:
                return None
        return self._class_names

    def load(self, split: str, image_size: int, cache_dir: str | os.PathLike) -> ImageSplit:
        """Decode ``split`` into the image cache (once) and return it."""
        from jigsawkit.data.cache import build_image_cache, cache_key, open_image_cache

        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}'; splits are {', '.join(SPLITS)}")
        key_parts = {
            "dataset": self.variant,
            "params": {
                "root": str(self.root.resolve()),
                "val_fraction": self.val_fraction,
                "seed": self.seed,
            },
            "split": split,
        }
        # Reading the pickles costs seconds: skip it when the split is already cached.
        cached = open_image_cache(Path(cache_dir), cache_key(key_parts, image_size))
        if cached is not None:
            return cached
        data = self._open(train=split != "test")
        images = np.asarray(data.data, dtype=np.uint8)
        labels = np.asarray(data.targets, dtype=np.int64)
        self._class_names = list(data.classes)
        if split != "test":
            chosen = self.carve(split, labels)
            images, labels = images[chosen], labels[chosen]
        return build_image_cache(
            key_parts,
            len(images),
            ArrayImages(images),
            image_size,
            Path(cache_dir),
            labels=labels,
            num_classes=self.num_classes,
            class_names=self._class_names,
            description=f"decoding {self.variant} {split} images",
        )

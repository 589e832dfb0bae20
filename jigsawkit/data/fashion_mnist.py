"""``fashion_mnist``: Fashion-MNIST (70,000 28x28 greyscale product photos, 10 classes).

Reads the four original IDX files from ``root`` (gzip-compressed, as distributed, or
uncompressed; the torchvision layout ``<root>/FashionMNIST/raw/`` is found as well)::

    train-images-idx3-ubyte.gz   60,000 images    train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz    10,000 images    t10k-labels-idx1-ubyte.gz

The default ``root`` is where Debian's package puts them (``apt-get install
dataset-fashion-mnist``). ``download: true`` fetches the missing files from torchvision's
mirrors with the md5 sums torchvision lists.

Splits: ``test`` is the official t10k set; ``val`` is a seeded, class-stratified
``val_fraction`` of the official train set and ``train`` the rest of it (or, with
``max_train_images``, a class-stratified seeded subset of the rest, e.g. a cheaper probe). Images become
three identical channels and are resized by the image cache like every other dataset.

The IDX files are parsed here with numpy rather than torchvision's
``read_sn3_pascalvincent_tensor``: that reader opens files with plain ``open`` (no gzip)
and validates with ``assert`` statements, so a truncated or foreign file would end in an
``AssertionError`` (or nothing at all under ``python -O``) instead of a line naming it.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from jigsawkit.data.base import SPLITS, ImageSplit
from jigsawkit.data.splits import ValFromTrain, stratified_holdout
from jigsawkit.errors import DataMissingError, UserError

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
TORCHVISION_SUBFOLDER = Path("FashionMNIST") / "raw"
NUM_CLASSES = 10
IMAGE_SIDE = 28
# IDX magic numbers: 0x0000 then the type (0x08: unsigned byte) and the number of dims.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
# torchvision's FashionMNIST.classes, in label order (a test checks they agree).
CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _torchvision_class():
    from torchvision.datasets import FashionMNIST

    return FashionMNIST


def read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """The uint8 array stored in IDX file ``path`` (gzip or raw) of the expected ``magic``.

    A file that is not such an IDX file (wrong magic, truncated, bad gzip) raises
    ``UserError`` naming it.
    """
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"fashion_mnist: {path}: cannot read it ({exc})") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"fashion_mnist: {path}: truncated IDX file ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise UserError(
            f"fashion_mnist: {path}: not an IDX file of uint8 with {ndim} dimension(s) "
            f"(magic 0x{found:08x}, expected 0x{magic:08x})"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise UserError(
            f"fashion_mnist: {path}: truncated or padded IDX file (header says {shape}, "
            f"{expected} bytes of data; found {len(raw) - header})"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


class GreyImages:
    """``decode`` callable turning ``(N, 28, 28)`` greyscale into ``(28, 28, 3)`` images."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __call__(self, index: int) -> np.ndarray:
        return np.repeat(self.images[index][:, :, None], 3, axis=2)


class FashionMnistDataset(ValFromTrain):
    """Fashion-MNIST from its IDX files: train/val carved from train, test = t10k
    (keywords: ValFromTrain's and ``max_train_images``)."""

    has_labels = True
    num_classes = NUM_CLASSES

    def __init__(self, *, max_train_images: int | None, **params: Any) -> None:
        super().__init__("fashion_mnist", **params)
        if max_train_images is not None and int(max_train_images) < 1:
            raise UserError(
                f"fashion_mnist.max_train_images: expected a positive count, got {max_train_images}"
            )
        self.max_train_images = None if max_train_images is None else int(max_train_images)

    class_names = CLASS_NAMES

    def _find(self, stem: str) -> Path | None:
        for folder in (self.root, self.root / TORCHVISION_SUBFOLDER):
            for name in (f"{stem}.gz", stem):
                if (folder / name).is_file():
                    return folder / name
        return None

    def _require(self, stem: str) -> Path:
        path = self._find(stem)
        if path is None:
            self.ensure_present()  # fetches it, or raises the message saying what to do
            path = self._find(stem)
        if path is None:  # pragma: no cover - ensure_present raised or fetched it
            raise DataMissingError(f"fashion_mnist: {self.root} lacks {stem}.gz")
        return path

    def _missing(self) -> list[str]:
        return [f"{stem}.gz" for pair in FILES.values() for stem in pair if not self._find(stem)]

    def _fetch(self, names: list[str]) -> None:
        from jigsawkit.data.download import download_url

        cls = _torchvision_class()
        md5s = dict(cls.resources)
        for name in names:
            error: DataMissingError | None = None
            for mirror in cls.mirrors:
                try:
                    download_url(f"{mirror}{name}", self.root / name, md5=md5s[name])
                    error = None
                    break
                except DataMissingError as exc:
                    error = exc
            if error is not None:
                raise error

    def ensure_present(self) -> None:
        """Fetch missing files (``download: true``) or say what to install, before any work."""
        missing = self._missing()
        if missing and self.download:
            self._fetch(missing)
            missing = self._missing()
        if missing:
            raise DataMissingError(
                f"fashion_mnist: {self.root} lacks {', '.join(missing)}; install them with "
                f"`apt-get install {DEBIAN_PACKAGE}` (into {DEBIAN_ROOT}), set root to a "
                "folder holding them, or set download: true with a writable root"
            )

    def read(self, official: str) -> tuple[np.ndarray, np.ndarray]:
        """The official ``train`` or ``test`` set as ``(images (N, 28, 28), labels (N,))``."""
        image_path, label_path = (self._require(stem) for stem in FILES[official])
        images = read_idx(image_path, IMAGES_MAGIC, 3)
        labels = read_idx(label_path, LABELS_MAGIC, 1)
        if images.shape[0] != labels.shape[0]:
            raise UserError(
                f"fashion_mnist: {image_path} holds {images.shape[0]} images but "
                f"{label_path} holds {labels.shape[0]} labels"
            )
        if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
            raise UserError(
                f"fashion_mnist: {image_path}: images are {images.shape[1]}x{images.shape[2]}, "
                f"expected {IMAGE_SIDE}x{IMAGE_SIDE}"
            )
        if labels.size and int(labels.max()) >= NUM_CLASSES:
            raise UserError(
                f"fashion_mnist: {label_path}: label {int(labels.max())} found, expected "
                f"0..{NUM_CLASSES - 1}"
            )
        return images, labels.astype(np.int64)

    def _limit(self, rest: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``rest`` cut to ``max_train_images`` (class-stratified, seeded); val is carved
        first, so the val split does not depend on the limit."""
        if self.max_train_images is None or self.max_train_images >= len(rest):
            return rest
        drop = 1.0 - self.max_train_images / len(rest)
        kept, _ = stratified_holdout(labels[rest], drop, self.seed + 1)
        return rest[kept]

    def load(self, split: str, image_size: int, cache_dir: str | os.PathLike) -> ImageSplit:
        """Decode ``split`` into the image cache (once) and return it."""
        from jigsawkit.data.cache import build_image_cache, cache_key, open_image_cache

        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}'; splits are {', '.join(SPLITS)}")
        # The key holds only what the split's pixels depend on: test (t10k) is the same
        # whatever the seed, val whatever the train limit.
        params: dict = {"root": str(self.root.resolve())}
        if split != "test":
            params.update(val_fraction=self.val_fraction, seed=self.seed)
        if split == "train":
            params["max_train_images"] = self.max_train_images
        key_parts = {"dataset": "fashion_mnist", "params": params, "split": split}
        cached = open_image_cache(Path(cache_dir), cache_key(key_parts, image_size))
        if cached is not None:
            return cached
        images, labels = self.read("test" if split == "test" else "train")
        if split != "test":
            chosen = self.carve(split, labels)
            if split == "train":
                chosen = self._limit(chosen, labels)
            images, labels = images[chosen], labels[chosen]
        return build_image_cache(
            key_parts,
            len(images),
            GreyImages(images),
            image_size,
            Path(cache_dir),
            labels=labels,
            num_classes=NUM_CLASSES,
            class_names=list(CLASS_NAMES),
            description=f"decoding fashion_mnist {split} images",
        )

"""``tiny_imagenet``: Tiny ImageNet (200 classes, 64x64), with labelled val and test splits.

Layout of ``<root>/tiny-imagenet-200/`` (as unpacked from the official zip)::

    wnids.txt                          the 200 class ids (sorted order = label index)
    words.txt                          "<wnid>\\t<names, comma separated>" (all of ImageNet)
    train/<wnid>/images/<wnid>_<i>.JPEG   500 per class
    val/images/val_<i>.JPEG            10,000 images
    val/val_annotations.txt            "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>"
    test/images/test_<i>.JPEG          10,000 images, no labels

Splits: the official test split has no labels, so jigsawkit's ``test`` is the official
**val** split (10,000 labelled images, labels from ``val_annotations.txt`` — not from the
folder, which holds every val image in one folder), ``val`` is a seeded, class-stratified
``val_fraction`` of the official train split, and ``train`` is the rest of it.

When ``<root>/tiny-imagenet-200/`` exists nothing is downloaded. Otherwise a zip at
``<root>/tiny-imagenet-200.zip`` is extracted, or (``download: true``) fetched first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from jigsawkit.data.base import SPLITS, ImageSplit
from jigsawkit.data.splits import ValFromTrain
from jigsawkit.errors import DataMissingError, UserError

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
FOLDER = "tiny-imagenet-200"
ARCHIVE = "tiny-imagenet-200.zip"
NUM_CLASSES = 200


class TinyImageNetDataset(ValFromTrain):
    """Tiny ImageNet: train/val carved from the official train, test = the official val
    (keywords: ValFromTrain's)."""

    has_labels = True
    num_classes = NUM_CLASSES

    def __init__(self, **params: Any) -> None:
        super().__init__("tiny_imagenet", **params)
        self._wnids: list[str] | None = None
        self._class_names: list[str] | None = None

    @property
    def folder(self) -> Path:
        return self.root / FOLDER

    def ensure_present(self) -> None:
        """Extract the zip (downloading it first when allowed) unless the folder exists,
        then check the layout ``load()`` reads: ``wnids.txt``, ``val/val_annotations.txt``
        (every line) and each class's ``train/<wnid>/images/`` folder."""
        self._fetch()
        self._official_val_files()
        self._train_files()

    def _fetch(self) -> None:
        if self.folder.is_dir():
            return
        from jigsawkit.data import download as fetch

        archive = self.root / ARCHIVE
        if archive.is_file():
            if not fetch.check_md5(archive, MD5):
                raise DataMissingError(
                    f"tiny_imagenet: {archive} is not the official archive (md5 is not {MD5}); "
                    f"delete it and download {URL} again"
                )
        elif self.download:
            fetch.download_url(URL, archive, md5=MD5)
        else:
            raise DataMissingError(
                f"tiny_imagenet: {self.folder} not found; download {URL} and unzip it into "
                f"{self.root}/ (or set download: true)"
            )
        fetch.safe_extract(archive, self.root)
        if not self.folder.is_dir():
            raise DataMissingError(f"tiny_imagenet: {archive} did not contain {FOLDER}/")

    # -- metadata -------------------------------------------------------------------
    def _read(self, name: str) -> list[str]:
        path = self.folder / name
        if not path.is_file():
            raise DataMissingError(
                f"tiny_imagenet: {path} is missing; the folder is incomplete, unzip {URL} again"
            )
        return path.read_text().splitlines()

    @property
    def wnids(self) -> list[str]:
        if self._wnids is None:
            self._fetch()
            self._wnids = sorted(line.strip() for line in self._read("wnids.txt") if line.strip())
        return self._wnids

    @property
    def class_names(self) -> list[str] | None:
        if self._class_names is None:
            try:
                wnids = self.wnids
            except DataMissingError:
                return None
            words: dict[str, str] = {}
            if (self.folder / "words.txt").is_file():
                for line in self._read("words.txt"):
                    wnid, _, text = line.partition("\t")
                    words[wnid.strip()] = text.split(",")[0].strip()
            self._class_names = [words.get(w) or w for w in wnids]
        return self._class_names

    # -- file lists -----------------------------------------------------------------
    def _train_files(self) -> tuple[list[str], np.ndarray]:
        paths: list[str] = []
        labels: list[int] = []
        for label, wnid in enumerate(self.wnids):
            folder = self.folder / "train" / wnid / "images"
            if not folder.is_dir():
                raise DataMissingError(f"tiny_imagenet: {folder} is missing; unzip {URL} again")
            names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpeg", ".jpg")))
            paths.extend(str(folder / n) for n in names)
            labels.extend([label] * len(names))
        return paths, np.asarray(labels, dtype=np.int64)

    def _official_val_files(self) -> tuple[list[str], np.ndarray]:
        index = {wnid: i for i, wnid in enumerate(self.wnids)}
        annotations = self.folder / "val" / "val_annotations.txt"
        paths: list[str] = []
        labels: list[int] = []
        for number, line in enumerate(self._read("val/val_annotations.txt"), 1):
            fields = line.split("\t")
            if not line.strip():
                continue
            if len(fields) < 2 or fields[1].strip() not in index:
                raise UserError(
                    f"{annotations}:{number}: expected '<file>\\t<wnid from wnids.txt>\\t...', "
                    f"got '{line}'"
                )
            name = os.path.basename(fields[0].strip())
            paths.append(str(self.folder / "val" / "images" / name))
            labels.append(index[fields[1].strip()])
        return paths, np.asarray(labels, dtype=np.int64)

    def files(self, split: str) -> tuple[list[str], np.ndarray]:
        """The image paths and labels of ``split`` (see the module docstring)."""
        if split == "test":
            return self._official_val_files()
        paths, labels = self._train_files()
        chosen = self.carve(split, labels)
        return [paths[i] for i in chosen], labels[chosen]

    def load(self, split: str, image_size: int, cache_dir: str | os.PathLike) -> ImageSplit:
        """Decode ``split`` into the image cache (once) and return it."""
        from jigsawkit.data.cache import cache_image_files

        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}'; splits are {', '.join(SPLITS)}")
        paths, labels = self.files(split)
        key_parts = {
            "dataset": "tiny_imagenet",
            "params": {
                "root": str(self.root.resolve()),
                "val_fraction": self.val_fraction,
                "seed": self.seed,
            },
            "split": split,
        }
        return cache_image_files(
            key_parts,
            paths,
            labels,
            image_size,
            cache_dir,
            num_classes=self.num_classes,
            class_names=self.class_names,
            description=f"decoding tiny_imagenet {split} images",
        )

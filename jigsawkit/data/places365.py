"""``places365``: one official Places365 split, cut into train/val/test by ``splits``.

The on-disk layout, archives, URLs and md5s are torchvision's (``Places365``)::

    <root>/categories_places365.txt           "/a/airfield 0" per line  (devkit)
    <root>/places365_val.txt                  "Places365_val_00000001.jpg 165"  (devkit)
    <root>/places365_train_standard.txt       "/a/airfield/00000001.jpg 0"  (devkit)
    <root>/val_256/Places365_val_00000001.jpg (small: true; val_large/ when false)
    <root>/data_256_standard/a/airfield/00000001.jpg

The original pipeline pretrained on the 36,500 validation images (``split: val``) with a
70/15/15 split. The file lists are parsed here (rather than through torchvision's class)
so that unreadable images are skipped and counted instead of failing the run. The
official ``test`` split has no labels; choosing it gives an unlabelled dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jigsawkit.data.base import ImageSplit
from jigsawkit.data.splits import check_fractions
from jigsawkit.errors import DataMissingError, UserError

BASE_URL = "http://data.csail.mit.edu/places/places365/"
# From torchvision.datasets.Places365.
DEVKIT_META = {
    "standard": ("filelist_places365-standard.tar", "35a0585fee1fa656440f3ab298f8479c"),
    "challenge": ("filelist_places365-challenge.tar", "70a8307e459c3de41690a7c76c931734"),
}
CATEGORIES_FILE = "categories_places365.txt"
FILE_LISTS = {
    "train-standard": "places365_train_standard.txt",
    "train-challenge": "places365_train_challenge.txt",
    "val": "places365_val.txt",
    "test": "places365_test.txt",
}
IMAGES_META = {
    ("train-standard", False): (
        "train_large_places365standard.tar",
        "67e186b496a84c929568076ed01a8aa1",
    ),
    ("train-challenge", False): (
        "train_large_places365challenge.tar",
        "605f18e68e510c82b958664ea134545f",
    ),
    ("val", False): ("val_large.tar", "9b71c4993ad89d2d8bcbdc4aef38042f"),
    ("test", False): ("test_large.tar", "41a4b6b724b1d2cd862fb3871ed59913"),
    ("train-standard", True): (
        "train_256_places365standard.tar",
        "53ca1c756c3d1e7809517cc47c5561c5",
    ),
    ("train-challenge", True): (
        "train_256_places365challenge.tar",
        "741915038a5e3471ec7332404dfb64ef",
    ),
    ("val", True): ("val_256.tar", "e27b17d8d44f4af9a78502beb927f808"),
    ("test", True): ("test_256.tar", "f532f6ad7b582262a2ec8009075e186b"),
}
OFFICIAL_SPLITS = tuple(FILE_LISTS)
NUM_CLASSES = 365


def _variant(split: str) -> str:
    return "challenge" if "challenge" in split else "standard"


def images_dir_name(split: str, small: bool) -> str:
    """The image folder torchvision uses for an official split."""
    size = "256" if small else "large"
    if split.startswith("train"):
        return f"data_{size}_{_variant(split)}"
    return f"{split}_{size}"


def class_name(category: str) -> str:
    """``/a/apartment_building/outdoor`` -> ``apartment_building/outdoor``."""
    parts = category.strip("/").split("/")
    return "/".join(parts[1:]) if len(parts) > 1 and len(parts[0]) == 1 else "/".join(parts)


class Places365Dataset:
    """One official Places365 split on disk (torchvision's layout), cut by ``splits``."""

    num_classes = NUM_CLASSES

    def __init__(
        self,
        *,
        root: str | os.PathLike,
        split: str,
        small: bool,
        download: bool,
        splits: list[float] | tuple[float, ...],
        seed: int,
    ):
        if split not in OFFICIAL_SPLITS:
            raise UserError(
                f"places365.split: unknown split '{split}'; expected one of {', '.join(OFFICIAL_SPLITS)}"
            )
        check_fractions(list(splits), "places365.splits")
        self.root = Path(root).expanduser()
        self.split = split
        self.small = bool(small)
        self.download = bool(download)
        self.splits = [float(f) for f in splits]
        self.seed = int(seed)
        self.has_labels = split != "test"
        if not self.has_labels:
            self.num_classes = None
        self._files: tuple[list[str], np.ndarray | None] | None = None
        self._class_names: list[str] | None = None

    # -- fetching -------------------------------------------------------------------
    @property
    def images_dir(self) -> Path:
        return self.root / images_dir_name(self.split, self.small)

    def _required(self) -> list[tuple[Path, str, str]]:
        """(path that must exist, archive providing it, md5 of the archive)."""
        devkit, devkit_md5 = DEVKIT_META[_variant(self.split)]
        images, images_md5 = IMAGES_META[(self.split, self.small)]
        return [
            (self.root / CATEGORIES_FILE, devkit, devkit_md5),
            (self.root / FILE_LISTS[self.split], devkit, devkit_md5),
            (self.images_dir, images, images_md5),
        ]

    def ensure_present(self) -> None:
        """Download and extract what is missing (``download: true``), or say what to fetch."""
        missing = [item for item in self._required() if not item[0].exists()]
        if not missing:
            return
        archives = list(dict.fromkeys((archive, md5) for _, archive, md5 in missing))
        if not self.download:
            what = ", ".join(str(path) for path, _, _ in missing)
            urls = " and ".join(BASE_URL + archive for archive, _ in archives)
            raise DataMissingError(
                f"places365: missing {what}; download {urls} and extract them into "
                f"{self.root}/ (or set download: true)"
            )
        from jigsawkit.data.download import download_url, safe_extract

        for archive, md5 in archives:
            path = download_url(BASE_URL + archive, self.root / archive, md5=md5)
            safe_extract(path, self.root)
        if self.split.startswith("train") and not self.images_dir.exists():
            # The train archives unpack to data_256/ (or data_large/); torchvision renames.
            os.replace(str(self.images_dir).rsplit("_", 1)[0], self.images_dir)

    # -- file lists -----------------------------------------------------------------
    @property
    def class_names(self) -> list[str] | None:
        if not self.has_labels:
            return None
        if self._class_names is None:
            path = self.root / CATEGORIES_FILE
            if not path.is_file():
                return None
            names = [""] * NUM_CLASSES
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    category, index = line.split()
                    names[int(index)] = class_name(category)
                except (ValueError, IndexError) as exc:
                    raise UserError(
                        f"{path}:{number}: expected '<category> <index 0-364>', got '{line}'"
                    ) from exc
            self._class_names = names
        return self._class_names

    def _file_list(self) -> tuple[list[str], np.ndarray | None]:
        if self._files is not None:
            return self._files
        self.ensure_present()
        list_path = self.root / FILE_LISTS[self.split]
        paths: list[str] = []
        labels: list[int] = []
        for number, line in enumerate(list_path.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if self.has_labels and len(fields) < 2:
                raise UserError(f"{list_path}:{number}: expected '<image> <label>', got '{line}'")
            paths.append(str(self.images_dir / fields[0].lstrip("/")))
            if self.has_labels:
                label = int(fields[1])
                if not 0 <= label < NUM_CLASSES:
                    raise UserError(f"{list_path}:{number}: label {label} is not in 0..364")
                labels.append(label)
        self._files = (paths, np.asarray(labels, dtype=np.int64) if self.has_labels else None)
        return self._files

    def load(self, split: str, image_size: int, cache_dir: str | os.PathLike) -> ImageSplit:
        """Decode ``split`` (a seeded cut of the official split) into the image cache."""
        from jigsawkit.data.cache import cache_seeded_split

        return cache_seeded_split(
            "places365",
            {"root": str(self.root.resolve()), "split": self.split, "small": self.small},
            split,
            self._file_list(),
            self.splits,
            self.seed,
            image_size,
            cache_dir,
            num_classes=self.num_classes,
            class_names=self.class_names,
            description=f"decoding places365 {self.split} ({split}) images",
        )

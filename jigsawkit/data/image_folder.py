"""``image_folder``: any folder of images, one sub-folder per class or unlabelled.

Labelled (the default): each first-level sub-folder of ``root`` is a class (sorted names
give the label indices) and holds its images at any depth. Unlabelled: every image under
``root`` at any depth. The files (sorted by path) are cut into train/val/test with a seeded
generator (``splits`` fractions). Unreadable images are skipped and counted.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jigsawkit.data.base import ImageSplit
from jigsawkit.data.splits import check_fractions
from jigsawkit.errors import DataMissingError

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def _is_image(name: str, extensions: tuple[str, ...]) -> bool:
    return name.lower().endswith(extensions) and not name.startswith(".")


def list_images(
    folder: Path,
    extensions: tuple[str, ...],
    seen: set[str] | None = None,
    avoid: set[str] | frozenset[str] = frozenset(),
) -> list[str]:
    """Every image file under ``folder`` at any depth, sorted, hidden files left out.

    Symbolic links are followed, but each real folder is walked once (a link back to a
    parent, a loop, does not repeat its images) and each real file is listed once: the
    first path to it in sorted order. ``seen`` (real paths of files already listed) carries
    that across calls, so a file linked into two class folders lands in one class, one split;
    ``avoid`` holds real folders never to enter (the dataset root, the other classes).
    """
    seen = set() if seen is None else seen
    found: list[str] = []
    walked: set[str] = set(avoid)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in walked:
            dirnames[:] = []
            continue
        walked.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames if _is_image(f, extensions))
    unique = []
    for path in sorted(found):
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append(path)
    return unique


class ImageFolderDataset:
    """Images in a folder tree; classes are the first-level sub-folders when labelled."""

    def __init__(
        self,
        *,
        root: str | os.PathLike,
        labelled: bool,
        splits: list[float] | tuple[float, ...],
        seed: int,
        extensions: list[str] | tuple[str, ...],
    ):
        check_fractions(list(splits), "image_folder.splits")
        self.root = Path(root).expanduser()
        self.labelled = bool(labelled)
        self.splits = [float(f) for f in splits]
        self.seed = int(seed)
        self.extensions = tuple((e if e.startswith(".") else f".{e}").lower() for e in extensions)
        self.has_labels = self.labelled
        self._files: tuple[list[str], np.ndarray | None, list[str] | None] | None = None

    def _scan(self) -> tuple[list[str], np.ndarray | None, list[str] | None]:
        if self._files is not None:
            return self._files
        if not self.root.is_dir():
            raise DataMissingError(
                f"image_folder: root folder {self.root} does not exist; point 'root' at a "
                "folder of images (one sub-folder per class when labelled)"
            )
        if self.labelled:
            classes = sorted(
                entry.name
                for entry in os.scandir(self.root)
                if entry.is_dir() and not entry.name.startswith(".")
            )
            paths: list[str] = []
            labels: list[int] = []
            kept: list[str] = []
            seen: set[str] = set()
            real = {name: os.path.realpath(self.root / name) for name in classes}
            for name in classes:
                # A link from one class to the root or to another class is not followed:
                # those images belong to the class folder they are in.
                avoid = {os.path.realpath(self.root), *(r for n, r in real.items() if n != name)}
                files = list_images(self.root / name, self.extensions, seen, avoid)
                if not files:
                    continue  # an empty folder is not a class
                labels.extend([len(kept)] * len(files))
                kept.append(name)
                paths.extend(files)
            self._files = (paths, np.asarray(labels, dtype=np.int64), kept)
        else:
            self._files = (list_images(self.root, self.extensions), None, None)
        if not self._files[0]:
            layout = "<root>/<class>/<image>" if self.labelled else "<root>/**/<image>"
            raise DataMissingError(
                f"image_folder: no images ({', '.join(self.extensions)}) found under "
                f"{self.root}; expected {layout}"
            )
        return self._files

    def ensure_present(self) -> None:
        """List the folder's images now, so a wrong ``root`` fails before any work."""
        self._scan()

    @property
    def class_names(self) -> list[str] | None:
        return self._scan()[2] if self.labelled else None

    @property
    def num_classes(self) -> int | None:
        names = self.class_names
        return len(names) if names is not None else None

    def load(self, split: str, image_size: int, cache_dir: str | os.PathLike) -> ImageSplit:
        """Decode ``split`` of the folder into the image cache (once) and return it."""
        from jigsawkit.data.cache import cache_seeded_split

        paths, labels, classes = self._scan()
        return cache_seeded_split(
            "image_folder",
            {"root": str(self.root.resolve()), "labelled": self.labelled},
            split,
            (paths, labels),
            self.splits,
            self.seed,
            image_size,
            cache_dir,
            num_classes=len(classes) if classes is not None else None,
            class_names=classes,
            description=f"decoding {self.root.name} {split} images",
        )

"""The decoded-image cache: every split decoded once into a uint8 memmap of square images.

A cache entry is two files in ``cache_dir``, named by a key that hashes everything the
pixels depend on (dataset name and parameters, split, image size, format version):

- ``<key>.u8``: the images, raw uint8 ``(N, S, S, 3)`` in C order;
- ``<key>.labels.npy``: the labels (int64), when the dataset has them;
- ``<key>.json``: shape, skipped count, class names, label file name.

The JSON file is written last (temp name, then ``os.replace``), so it marks a complete
entry: an interrupted build leaves no JSON and is rebuilt, never reused. Images are decoded
in chunks and appended to the file, so the builder's resident memory is a few chunks, not
the dataset. A second ``build_image_cache`` call with the same key maps the file read-only
and decodes nothing.
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import json
import mmap
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from jigsawkit.atomic import atomic_write, atomic_write_text
from jigsawkit.data.base import SPLITS, ImageSplit
from jigsawkit.data.splits import split_indices
from jigsawkit.killpoints import kill_point
from jigsawkit.progress import progress_bar

# Bump when the decoded pixels or the file layout change, so old entries are not reused.
FORMAT_VERSION = 1
CHUNK_IMAGES = 256

Decode = Callable[[int], "np.ndarray | Image.Image | None"]


def resize_square(img: np.ndarray | Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (bilinear, antialiased) and centre-crop a square.

    Returns a ``(size, size, 3)`` uint8 array. Grayscale and RGBA inputs become RGB.
    """
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise ValueError(f"resize_square expects uint8 images, got {img.dtype}")
        if img.ndim == 3 and img.shape[:2] == (size, size) and img.shape[2] == 3:
            return np.ascontiguousarray(img)
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        img = Image.fromarray(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    width, height = img.size
    side = min(width, height)
    # Cropping the centred square of the source and resizing it is the same as resizing
    # the shorter side then centre-cropping, without rounding the intermediate size.
    left, top = (width - side) / 2.0, (height - side) / 2.0
    if (width, height) != (size, size):
        img = img.resize(
            (size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side)
        )
    return np.asarray(img, dtype=np.uint8).reshape(size, size, 3)


class FileDecoder:
    """``decode`` callable reading image files with PIL (picklable; None when unreadable).

    ``size`` lets JPEG decoding use a reduced DCT scale (``Image.draft``) when the file is
    much larger than needed, which is several times faster and still at least ``size``
    pixels on each side.
    """

    def __init__(self, paths: list[str], size: int | None = None):
        self.paths, self.size = paths, size

    def __call__(self, index: int) -> Image.Image | None:
        if not os.path.isfile(self.paths[index]):
            return None  # a FIFO or device would block or never end; a dangling link
        try:
            with Image.open(self.paths[index]) as img:
                if self.size:
                    img.draft("RGB", (self.size, self.size))
                return img.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None


def cache_key(key_parts: dict, image_size: int) -> str:
    """sha256 of the canonical JSON of ``key_parts`` plus the image size and format version."""
    payload = {"parts": key_parts, "image_size": int(image_size), "format": FORMAT_VERSION}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def decode_range(decode: Decode, start: int, stop: int, size: int) -> tuple[np.ndarray, int]:
    """Decode images ``start..stop-1`` into ``(k, size, size, 3)``; return it and the skips.

    An image whose ``decode`` returns None or raises is skipped. Module-level so that a
    process pool can run it.
    """
    out = np.empty((stop - start, size, size, 3), dtype=np.uint8)
    kept = np.zeros(stop - start, dtype=bool)
    for offset, index in enumerate(range(start, stop)):
        try:
            img = decode(index)
            if img is None:
                continue
            out[offset] = resize_square(img, size)
        except Exception:  # noqa: BLE001 - one unreadable image must not stop the build
            continue
        kept[offset] = True
    return out[kept] if not kept.all() else out, np.flatnonzero(kept) + start


def release_pages(array: Any) -> None:
    """Drop a memmap's pages from this process's resident set (they stay in the page cache).

    Reading a memory-mapped file makes its pages count towards the process's RSS; calling
    this now and then keeps a pass over a dataset larger than RAM within a bounded RSS.
    Does nothing for arrays that are not backed by a memory map.
    """
    advice = getattr(mmap, "MADV_DONTNEED", None)
    obj, seen = array, 0
    while obj is not None and seen < 8:
        if isinstance(obj, mmap.mmap):
            if advice is not None:
                try:
                    obj.madvise(advice)
                except (OSError, ValueError):
                    pass
            return
        obj = getattr(obj, "_mmap", None) or getattr(obj, "base", None)
        seen += 1


def open_image_cache(cache_dir: Path, key: str) -> ImageSplit | None:
    """The complete cache entry ``key`` mapped read-only, or None if there is none."""
    meta_path = Path(cache_dir) / f"{key}.json"
    data_path = Path(cache_dir) / f"{key}.u8"
    if not meta_path.is_file() or not data_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        shape = tuple(int(v) for v in meta["shape"])
        if data_path.stat().st_size != int(np.prod(shape)):
            return None
        labels = None
        if meta.get("labels"):
            labels = np.load(Path(cache_dir) / meta["labels"], allow_pickle=False)
            if labels.shape != (shape[0],):
                return None
            labels = labels.astype(np.int64, copy=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if shape[0] == 0:
        # np.memmap cannot map an empty file.
        images: np.ndarray = np.zeros(shape, dtype=np.uint8)
        images.setflags(write=False)
    else:
        images = np.memmap(data_path, dtype=np.uint8, mode="r", shape=shape)
    return ImageSplit(
        images=images,
        labels=labels,
        num_classes=meta.get("num_classes"),
        class_names=meta.get("class_names"),
        skipped=int(meta.get("skipped", 0)),
        key=key,
        info=dict(meta.get("info") or {}),
    )


def _make_pool(workers: int, pool: str) -> futures.Executor | None:
    if workers <= 1:
        return None
    if pool == "process":
        # spawn, not fork: the parent may hold torch's threads, which fork would copy badly.
        context = multiprocessing.get_context("spawn")
        return futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
    return futures.ThreadPoolExecutor(max_workers=workers)


def _decoded_chunks(decode: Decode, count: int, size: int, workers: int, pool: str):
    """Yield ``(images, kept_indices, n_tried)`` chunk by chunk, in order."""
    ranges = [(s, min(s + CHUNK_IMAGES, count)) for s in range(0, count, CHUNK_IMAGES)]
    executor = _make_pool(workers, pool)
    if executor is None:
        for start, stop in ranges:
            images, kept = decode_range(decode, start, stop, size)
            yield images, kept, stop - start
        return
    # A bounded window of chunks in flight keeps memory at a few chunks per worker.
    window = 2 * workers
    with executor:
        pending: list[tuple[futures.Future, int]] = []
        for start, stop in ranges:
            pending.append((executor.submit(decode_range, decode, start, stop, size), stop - start))
            if len(pending) >= window:
                future, tried = pending.pop(0)
                yield (*future.result(), tried)
        for future, tried in pending:
            yield (*future.result(), tried)


def build_image_cache(
    key_parts: dict,
    count: int,
    decode: Decode,
    image_size: int,
    cache_dir: str | os.PathLike,
    labels: np.ndarray | None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    workers: int = 0,
    pool: str = "thread",
    description: str = "decoding images",
    progress: bool = True,
    info: dict | None = None,
) -> ImageSplit:
    """Decode ``count`` images once into the cache and return them as a read-only memmap.

    ``decode(i)`` returns image ``i`` (HxWx3 uint8 array or PIL image, any size) or None
    when it is unreadable; unreadable images (None or an exception) are skipped, counted
    in ``skipped`` and left out of the images and labels. ``labels[i]`` is image ``i``'s
    label. ``workers > 1`` decodes with a ``pool`` ("thread" or "process"; a process pool
    needs a picklable ``decode`` and, as it starts processes with "spawn", a main script
    guarded by ``if __name__ == "__main__"``). A later call with the same ``key_parts`` and
    ``image_size`` returns the cached entry without decoding.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(key_parts, image_size)
    cached = open_image_cache(cache_dir, key)
    if cached is not None:
        return cached
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (count,):
            raise ValueError(f"labels have shape {labels.shape}, expected ({count},)")

    kept_parts: list[np.ndarray] = []

    def write_images(out: BinaryIO) -> None:
        with progress_bar(description, total=count, unit="img", enabled=progress) as bar:
            for images, kept, tried in _decoded_chunks(decode, count, image_size, workers, pool):
                # Appending with write() keeps pages out of our RSS (unlike a memmap).
                out.write(np.ascontiguousarray(images).tobytes())
                kept_parts.append(kept)
                bar.advance(tried, skipped=tried - len(kept))

    atomic_write(cache_dir / f"{key}.u8", write_images, "image-cache-write")
    kill_point("image-cache-meta")  # pixels in place, the entry not yet marked complete

    kept_all = np.concatenate(kept_parts) if kept_parts else np.zeros(0, dtype=np.int64)
    meta: dict[str, Any] = {
        "key_parts": key_parts,
        "format": FORMAT_VERSION,
        "shape": [int(len(kept_all)), int(image_size), int(image_size), 3],
        "skipped": int(count - len(kept_all)),
        "num_classes": num_classes,
        "class_names": class_names,
        "labels": None,
        "info": info or {},
    }
    if labels is not None:
        labels_name = f"{key}.labels.npy"
        kept_labels = labels[kept_all]
        atomic_write(
            cache_dir / labels_name,
            lambda fh: np.save(fh, kept_labels, allow_pickle=False),
        )
        meta["labels"] = labels_name
    # The JSON last: its presence is what marks the entry complete.
    atomic_write_text(cache_dir / f"{key}.json", json.dumps(meta, indent=1, default=str))
    result = open_image_cache(cache_dir, key)
    if result is None:  # pragma: no cover - only if the files vanish under us
        raise OSError(f"image cache entry {key} in {cache_dir} could not be read back")
    return result


def file_list_fingerprint(paths: list[str], labels: np.ndarray | None) -> str:
    """A hash of a split's file list and labels: a changed folder gets a new cache entry."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.fsencode(path) + b"\0")
    if labels is not None:
        digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def cache_image_files(
    key_parts: dict,
    paths: list[str],
    labels: np.ndarray | None,
    image_size: int,
    cache_dir: str | os.PathLike,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    description: str = "decoding images",
    workers: int | None = None,
) -> ImageSplit:
    """``build_image_cache`` for a list of image files, decoded by a thread pool.

    The key includes a fingerprint of the file list and labels. PIL releases the GIL while
    it decodes and resizes, so threads use every core without the start-up cost of
    processes.
    """
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    parts = {**key_parts, "files": file_list_fingerprint(paths, labels), "count": len(paths)}
    return build_image_cache(
        parts,
        len(paths),
        FileDecoder(list(paths), image_size),
        image_size,
        cache_dir,
        labels=labels,
        num_classes=num_classes,
        class_names=class_names,
        workers=workers,
        pool="thread",
        description=description,
    )


def cache_seeded_split(
    dataset: str,
    params: dict,
    split: str,
    files: tuple[list[str], np.ndarray | None],
    fractions: list[float],
    seed: int,
    image_size: int,
    cache_dir: str | os.PathLike,
    num_classes: int | None,
    class_names: list[str] | None,
    description: str,
) -> ImageSplit:
    """Cut ``files`` (paths, labels) into seeded train/val/test and cache ``split`` of them.

    The cache key names ``dataset``, its ``params`` plus ``fractions`` and ``seed``, and
    ``split``; ``split_indices`` decides which files each split gets.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; splits are {', '.join(SPLITS)}")
    paths, labels = files
    indices = split_indices(len(paths), fractions, seed)[split]
    key_parts = {
        "dataset": dataset,
        "params": {**params, "splits": fractions, "seed": seed},
        "split": split,
    }
    return cache_image_files(
        key_parts,
        [paths[i] for i in indices],
        None if labels is None else labels[indices],
        image_size,
        cache_dir,
        num_classes=num_classes,
        class_names=class_names,
        description=description,
    )

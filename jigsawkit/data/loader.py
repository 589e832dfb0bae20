"""The data path: batches of uint8 images gathered from the cache, floats made on the device.

A background thread gathers the next batches into (pinned, when the device is CUDA) uint8
buffers. Only uint8 crosses to the device; the conversion to float in ``[0, 1]`` and the
channels-first permute happen there. Shuffling depends only on ``(seed, epoch)``, so a
resumed run sees exactly the same batches.

Images of a cache memmap are read from the file with ``preadv`` (one call per run of
consecutive indices) rather than through the mapping: pages touched through a mapping
count towards the process's resident memory, and with large page-cache folios one
shuffled batch can map most of the file. Reading copies from the page cache instead, so a
pass over a dataset of any size keeps resident memory at a few batches.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from jigsawkit.data.base import ImageSplit

_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _FileSource:
    """Reads rows of a C-contiguous memmap straight from its file (see the module docstring)."""

    def __init__(self, fd: int, start: int, row_bytes: int):
        self.fd, self.start, self.row_bytes = fd, start, row_bytes

    @classmethod
    def open(cls, images: np.ndarray, sequential: bool) -> _FileSource | None:
        """A reader for ``images`` if it is a plain view of a file mapping, else None."""
        mm = getattr(images, "_mmap", None)
        filename = getattr(images, "filename", None)
        if (
            mm is None
            or not filename
            # Only a read-only map is guaranteed to hold exactly what the file holds.
            or getattr(images, "mode", None) != "r"
            or not hasattr(os, "preadv")
            or not images.flags.c_contiguous
            or images.ndim < 1
            or images.shape[0] == 0
        ):
            return None
        # Where the array's first byte lies in the file: numpy maps from an aligned start
        # (offset rounded down to the allocation granularity); views keep the parent's
        # ``offset``, so use the data pointer's distance from the mapping's base instead.
        base = np.frombuffer(mm, dtype=np.uint8).ctypes.data
        aligned = int(images.offset) - int(images.offset) % mmap.ALLOCATIONGRANULARITY
        start = aligned + (images.ctypes.data - base)
        fd = os.open(filename, os.O_RDONLY)
        advice = getattr(os, "POSIX_FADV_SEQUENTIAL" if sequential else "POSIX_FADV_RANDOM", None)
        if advice is not None and hasattr(os, "posix_fadvise"):
            # Random reads of one image must not pull in a large readahead window.
            try:
                os.posix_fadvise(fd, 0, 0, advice)
            except OSError:
                pass  # only a hint
        row_bytes = int(np.prod(images.shape[1:])) * images.itemsize
        return cls(fd, start, row_bytes)

    def read(self, indices: np.ndarray, out: np.ndarray) -> None:
        """Read rows ``indices`` into ``out``, one call per run of consecutive rows."""
        flat = memoryview(out.reshape(-1).view(np.uint8))
        breaks = np.flatnonzero(np.diff(indices) != 1) + 1
        starts = np.concatenate([[0], breaks]).tolist()
        stops = np.concatenate([breaks, [len(indices)]]).tolist()
        rows = indices.tolist()
        size = self.row_bytes
        for lo, hi in zip(starts, stops):
            target = flat[lo * size : hi * size]
            position = self.start + rows[lo] * size
            while len(target):
                done = os.preadv(self.fd, [target], position)
                if done <= 0:
                    raise OSError(f"unexpected end of image cache file at byte {position}")
                target, position = target[done:], position + done

    def close(self) -> None:
        os.close(self.fd)


def read_rows(images: np.ndarray, indices: np.ndarray | slice | list[int]) -> np.ndarray:
    """``images[indices]`` as a new array, read without mapping a cache file into memory.

    For a read-only memmap (what ``load`` returns) the rows are read from the file, so
    walking a split of any size this way keeps resident memory small; any other array is
    simply indexed. Use it instead of ``split.images[...]`` in loops over a whole split.
    """
    if isinstance(indices, slice):
        indices = np.arange(len(images))[indices]
    indices = np.asarray(indices, dtype=np.int64)
    out = np.empty((len(indices), *images.shape[1:]), dtype=images.dtype)
    if len(indices) == 0:
        return out
    if indices.min() < 0 or indices.max() >= len(images):
        raise IndexError(f"row index out of range for {len(images)} images")
    source = _FileSource.open(images, sequential=bool(np.all(np.diff(indices) == 1)))
    if source is None:
        np.take(images, indices, axis=0, out=out)
        return out
    try:
        source.read(indices, out)
    finally:
        source.close()
    return out


class BatchLoader:
    """Iterate an ``ImageSplit`` in batches of ``(images (B,3,S,S) float, labels (B,) | None)``.

    Images are float32 in ``[0, 1]`` on ``device``; labels are int64 on ``device`` (None
    for an unlabelled split). ``set_epoch(e)`` chooses the epoch's shuffle; the order is a
    function of ``seed`` and the epoch only.

    ``rank``/``world_size`` (data-parallel runs): ``batch_size`` is the GLOBAL batch; each
    global batch of the epoch's order is cut into ``world_size`` contiguous shards and this
    loader yields shard ``rank``, so together the ranks see exactly what one process would.
    """

    def __init__(
        self,
        split: ImageSplit,
        batch_size: int,
        shuffle: bool,
        seed: int,
        device: Any,
        drop_last: bool,
        epoch: int = 0,
        prefetch: int = 2,
        pin_memory: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.drop_last = bool(drop_last)
        self.epoch = int(epoch)
        self.prefetch = max(1, int(prefetch))
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else bool(pin_memory)
        labels = split.labels
        self._labels = None if labels is None else np.asarray(labels, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of epoch ``epoch`` for the next iteration."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.split)
        if self.drop_last:
            return n // self.batch_size
        return (n + self.batch_size - 1) // self.batch_size

    @property
    def steps_per_epoch(self) -> int:
        return len(self)

    @property
    def num_samples(self) -> int:
        """Images seen per epoch (fewer than the split when ``drop_last`` drops a tail)."""
        return len(self) * self.batch_size if self.drop_last else len(self.split)

    def order(self) -> np.ndarray:
        """The sample order of the current epoch."""
        n = len(self.split)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def batch_indices(self) -> list[np.ndarray]:
        """The current epoch's batches, each sorted so the memmap is read front to back."""
        order = self.order()
        bs = self.batch_size
        batches = [order[i * bs : (i + 1) * bs] for i in range(len(self))]
        if self.world_size > 1:
            # A short last batch (no drop_last) splits as evenly as it can; a shard may be
            # empty, and an empty shard is not yielded (evaluation only: training drops it).
            batches = [np.array_split(b, self.world_size)[self.rank] for b in batches]
            batches = [b for b in batches if len(b)]
        return [np.sort(b) for b in batches]

    def _gather(
        self, indices: np.ndarray, source: _FileSource | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        images = self.split.images
        shape = (len(indices), *images.shape[1:])
        buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=self.pin_memory)
        if source is not None:
            source.read(indices, buffer.numpy())
        else:
            # mode="clip" writes straight into ``out`` ("raise" buffers; indices are valid).
            np.take(images, indices, axis=0, out=buffer.numpy(), mode="clip")
        labels = None
        if self._labels is not None:
            labels = torch.from_numpy(self._labels[indices])
            if self.pin_memory:
                labels = labels.pin_memory()
        return buffer, labels

    def _produce(self, batches: list[np.ndarray], out: queue.Queue, stop: threading.Event) -> None:
        source = None
        try:
            source = _FileSource.open(self.split.images, sequential=not self.shuffle)
            for indices in batches:
                if stop.is_set():
                    return
                item = self._gather(indices, source)
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
            out.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer and re-raised
            out.put(_Failure(exc))
        finally:
            if source is not None:
                source.close()

    def _to_device(
        self, images: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        non_blocking = self.pin_memory and self.device.type == "cuda"
        images = images.to(self.device, non_blocking=non_blocking)
        images = images.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        images.div_(255.0)
        if labels is not None:
            labels = labels.to(self.device, non_blocking=non_blocking)
        return images, labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        batches = self.batch_indices()
        if not batches:
            return
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        worker = threading.Thread(
            target=self._produce, args=(batches, out, stop), name="jigsawkit-loader", daemon=True
        )
        worker.start()
        try:
            while True:
                item = out.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield self._to_device(*item)
        finally:
            stop.set()
            # Unblock a producer waiting on a full queue, then wait for it to finish.
            while worker.is_alive():
                try:
                    out.get(timeout=0.05)
                except queue.Empty:
                    pass
            worker.join()

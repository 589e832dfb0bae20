"""BatchLoader: batches, exact per-epoch shuffling, uint8 to the device, bounded memory."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from jigsawkit.data.base import ImageSplit
from jigsawkit.data.loader import BatchLoader, read_rows


def _split(n: int = 50, size: int = 4, labelled: bool = True) -> ImageSplit:
    """Image i: channel c holds (i + 60 * c) % 256 at every pixel; label i."""
    values = (np.arange(n)[:, None] + 60 * np.arange(3)[None, :]) % 256
    images = np.broadcast_to(values[:, None, None, :], (n, size, size, 3)).astype(np.uint8)
    labels = np.arange(n, dtype=np.int64) if labelled else None
    return ImageSplit(images=images, labels=labels)


def _loader(split: ImageSplit, **kw) -> BatchLoader:
    args = {"batch_size": 8, "shuffle": True, "seed": 0, "device": "cpu", "drop_last": False}
    return BatchLoader(split, **{**args, **kw})


def _epoch_labels(loader: BatchLoader) -> list[int]:
    return [int(v) for _, labels in loader for v in labels]


def test_lengths():
    split = _split(50)
    assert len(_loader(split)) == 7 and _loader(split).steps_per_epoch == 7
    assert len(_loader(split, drop_last=True)) == 6
    assert len(_loader(split, batch_size=50, drop_last=True)) == 1
    assert len(_loader(split, batch_size=64, drop_last=True)) == 0
    assert list(_loader(split, batch_size=64, drop_last=True)) == []
    with pytest.raises(ValueError):
        _loader(split, batch_size=0)


def test_batches_are_float_channels_first_in_unit_range():
    split = _split(20, size=5)
    batches = list(_loader(split, batch_size=6, shuffle=False))
    assert [len(b[0]) for b in batches] == [6, 6, 6, 2]
    images, labels = batches[1]
    assert images.shape == (6, 3, 5, 5) and images.dtype == torch.float32
    assert images.is_contiguous() and labels.dtype == torch.int64
    assert labels.tolist() == list(range(6, 12))
    for row, i in enumerate(labels.tolist()):
        for c in range(3):
            expected = ((i + 60 * c) % 256) / 255.0
            assert torch.allclose(images[row, c], torch.full((5, 5), expected))


def test_every_image_once_per_epoch_and_the_order_depends_only_on_seed_and_epoch():
    split = _split(50)
    first = _epoch_labels(_loader(split))
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert _epoch_labels(_loader(split)) == first  # same seed and epoch: same order
    loader = _loader(split)
    loader.set_epoch(1)
    second = _epoch_labels(loader)
    assert sorted(second) == list(range(50)) and second != first
    assert _epoch_labels(_loader(split, epoch=1)) == second  # a resumed run sees the same
    assert _epoch_labels(_loader(split, seed=1)) != first
    # Each batch holds the images of its slice of the permutation, sorted by index.
    loader = _loader(split, drop_last=True)
    order = loader.order()
    for b, (_, labels) in enumerate(loader):
        assert labels.tolist() == sorted(order[b * 8 : (b + 1) * 8].tolist())


def test_unlabelled_split_yields_none_labels():
    batches = list(_loader(_split(10, labelled=False), batch_size=4))
    assert len(batches) == 3 and all(labels is None for _, labels in batches)


def test_only_uint8_crosses_to_the_device(monkeypatch):
    seen = []
    real = BatchLoader._to_device

    def spy(self, images, labels):
        seen.append(images.dtype)
        return real(self, images, labels)

    monkeypatch.setattr(BatchLoader, "_to_device", spy)
    loader = _loader(_split(16))
    assert not loader.pin_memory  # CPU device: no pinning
    list(loader)
    assert seen == [torch.uint8, torch.uint8]


def test_stopping_early_ends_the_prefetch_thread():
    before = threading.active_count()
    loader = _loader(_split(200), batch_size=2, prefetch=1)
    for step, _ in enumerate(loader):
        if step == 3:
            break
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before


def test_errors_in_the_prefetch_thread_reach_the_caller(monkeypatch):
    def broken(self, indices, source):
        raise OSError("disk went away")

    monkeypatch.setattr(BatchLoader, "_gather", broken)
    with pytest.raises(OSError, match="disk went away"):
        list(_loader(_split(16)))


@pytest.mark.parametrize("offset, view", [(0, slice(None)), (4096 + 48, slice(7, 33))])
def test_memmaps_are_read_from_the_file_with_the_same_bytes(tmp_path, offset, view):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(40, 6, 6, 3), dtype=np.uint8)
    path = tmp_path / "images.u8"
    path.write_bytes(b"\0" * offset + data.tobytes())
    mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=data.shape, offset=offset)[view]
    expected = data[view]
    split = ImageSplit(images=mapped, labels=np.arange(len(expected)))
    for shuffle in (False, True):
        loader = _loader(split, batch_size=7, shuffle=shuffle)
        for images, labels in loader:
            want = torch.from_numpy(expected[labels.numpy()]).permute(0, 3, 1, 2) / 255.0
            assert torch.equal(images, want)


def test_read_rows_matches_indexing(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, size=(30, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "images.u8"
    path.write_bytes(data.tobytes())
    mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=data.shape)
    for rows in ([5, 6, 7, 2, 29, 0], slice(3, 20, 2), slice(None), []):
        assert np.array_equal(read_rows(mapped, rows), data[rows])
        assert np.array_equal(read_rows(data, rows), data[rows])
    # A copy-on-write map may differ from its file: it is indexed, not read from disk.
    cow = np.memmap(path, dtype=np.uint8, mode="c", shape=data.shape)
    cow[4] = 0
    assert (read_rows(cow, [4]) == 0).all()
    with pytest.raises(IndexError):
        read_rows(mapped, [30])


def _rss_bytes(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_growth(batches) -> dict[str, int]:
    fields = ("VmRSS", "RssFile")
    base = {f: _rss_bytes(f) for f in fields}
    peak = dict(base)
    for _ in batches:
        for f in fields:
            peak[f] = max(peak[f], _rss_bytes(f))
    return {f: peak[f] - base[f] for f in fields}


@pytest.fixture
def one_torch_thread():
    """On a busy 2-core machine two intra-op threads make each conversion ~30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_iterating_a_large_memmap_keeps_resident_memory_small(tmp_path, one_torch_thread):
    size, count = 64, 45_000  # 553 MB of uint8 images on disk
    path = tmp_path / "images.u8"
    chunk = np.full((1000, size, size, 3), 7, dtype=np.uint8).tobytes()
    with open(path, "wb") as fh:
        for _ in range(count // 1000):
            fh.write(chunk)
    images = np.memmap(path, dtype=np.uint8, mode="r", shape=(count, size, size, 3))
    loader = BatchLoader(
        ImageSplit(images=images, labels=None), 128, True, 0, "cpu", drop_last=False
    )
    # Pages of the file never become resident; what grows is a few batches plus the
    # allocator's caches, a fixed amount whatever the size of the dataset.
    growth = _peak_growth(loader)
    assert growth["RssFile"] < images.nbytes / 20, f"file pages grew {growth}"
    assert growth["VmRSS"] < images.nbytes / 4, f"RSS grew {growth}"
    # Control: gathering the same batches through the mapping makes most of the file
    # resident, so the measurement above is able to fail.
    control = _peak_growth(np.take(images, idx, axis=0) for idx in loader.batch_indices())
    assert control["VmRSS"] > images.nbytes / 2, f"control grew only {control}"

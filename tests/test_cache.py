"""The decoded-image cache: keys, skipping, reuse without decoding, atomicity, resizing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jigsawkit.data import cache
from jigsawkit.data.cache import build_image_cache, cache_key, release_pages, resize_square
from jigsawkit.data.synthetic import SyntheticImages


def _image(index: int, height: int = 20, width: int = 30) -> np.ndarray:
    """A flat image whose colour encodes its index."""
    return np.full((height, width, 3), (index % 251, 7, 200), dtype=np.uint8)


class Counting:
    """decode(i): index-coded images; None for ``missing``; raises for ``broken``."""

    def __init__(self, missing=(), broken=()):
        self.calls = 0
        self.missing, self.broken = set(missing), set(broken)

    def __call__(self, index):
        self.calls += 1
        if index in self.missing:
            return None
        if index in self.broken:
            raise OSError("truncated file")
        return _image(index)


def test_resize_square_centre_crops_the_longer_side():
    # Wide image: left quarter red, middle half green, right quarter blue.
    img = np.zeros((40, 80, 3), dtype=np.uint8)
    img[:, :20, 0] = 255
    img[:, 20:60, 1] = 255
    img[:, 60:, 2] = 255
    out = resize_square(img, 20)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    # Only the centre half is kept (the border columns blend a little, as resizing the
    # whole image and then cropping would).
    inner = out[:, 1:-1]
    assert (inner[:, :, 1] == 255).all() and (inner[:, :, [0, 2]] == 0).all()
    assert (out[:, :, 1] > 200).all() and (out[:, :, [0, 2]] < 40).all()
    # Tall image, as a PIL image: the centre rows survive.
    tall = np.zeros((90, 30, 3), dtype=np.uint8)
    tall[30:60] = 99
    assert (resize_square(Image.fromarray(tall), 10)[1:-1] == 99).all()


def test_resize_square_is_antialiased_and_handles_modes():
    # A one-pixel checkerboard averages to grey when downscaled with antialiasing.
    checker = ((np.indices((64, 64)).sum(axis=0) % 2) * 255).astype(np.uint8)
    out = resize_square(np.repeat(checker[:, :, None], 3, axis=2), 8)
    assert abs(out.mean() - 127.5) < 3 and out.std() < 3
    gray = resize_square(Image.new("L", (12, 12), 77), 6)
    assert gray.shape == (6, 6, 3) and (gray == 77).all()
    rgba = resize_square(Image.new("RGBA", (12, 12), (1, 2, 3, 4)), 12)
    assert rgba.shape == (12, 12, 3) and tuple(rgba[0, 0]) == (1, 2, 3)
    same = _image(3, 16, 16)
    assert np.array_equal(resize_square(same, 16), same)


def test_key_depends_on_every_part():
    base = cache_key({"dataset": "d", "params": {"a": 1}, "split": "train"}, 32)
    assert base == cache_key({"split": "train", "params": {"a": 1}, "dataset": "d"}, 32)
    assert base != cache_key({"dataset": "d", "params": {"a": 2}, "split": "train"}, 32)
    assert base != cache_key({"dataset": "d", "params": {"a": 1}, "split": "val"}, 32)
    assert base != cache_key({"dataset": "d", "params": {"a": 1}, "split": "train"}, 64)


def test_build_skips_unreadable_images_and_reuses_the_entry(tmp_path):
    decode = Counting(missing={3}, broken={7, 8})
    labels = np.arange(20) % 4
    parts = {"dataset": "t", "split": "train"}
    split = build_image_cache(
        parts, 20, decode, 12, tmp_path, labels, num_classes=4, class_names=list("abcd")
    )
    good = [i for i in range(20) if i not in {3, 7, 8}]
    assert split.skipped == 3 and len(split) == 17 and split.image_size == 12
    assert split.images[:, 0, 0, 0].tolist() == good  # pixels still encode the index
    assert split.labels.dtype == np.int64 and split.labels.tolist() == [i % 4 for i in good]
    assert split.num_classes == 4 and split.class_names == list("abcd")
    assert isinstance(split.images, np.memmap) and split.images.mode == "r"
    assert not split.images.flags.writeable

    calls = decode.calls
    again = build_image_cache(parts, 20, decode, 12, tmp_path, labels)
    assert decode.calls == calls  # nothing decoded the second time
    assert again.key == split.key and again.skipped == 3
    assert np.array_equal(np.asarray(again.images), np.asarray(split.images))
    assert np.array_equal(again.labels, split.labels)
    meta = json.loads((tmp_path / f"{split.key}.json").read_text())
    assert meta["shape"] == [17, 12, 12, 3] and meta["skipped"] == 3


def test_unlabelled_and_empty_splits(tmp_path):
    split = build_image_cache({"n": 1}, 5, Counting(), 8, tmp_path, None)
    assert split.labels is None and len(split) == 5
    empty = build_image_cache({"n": 2}, 2, Counting(missing={0, 1}), 8, tmp_path, None)
    assert len(empty) == 0 and empty.skipped == 2 and empty.images.shape == (0, 8, 8, 3)
    with pytest.raises(ValueError, match="labels"):
        build_image_cache({"n": 3}, 5, Counting(), 8, tmp_path, np.zeros(4))


def test_interrupted_build_is_never_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "CHUNK_IMAGES", 4)

    class Interrupted(Counting):
        def __call__(self, index):
            if index == 9:
                raise KeyboardInterrupt
            return super().__call__(index)

    with pytest.raises(KeyboardInterrupt):
        build_image_cache({"n": 1}, 12, Interrupted(), 8, tmp_path, None)
    assert list(tmp_path.iterdir()) == []  # no entry, no temp file left
    decode = Counting()
    split = build_image_cache({"n": 1}, 12, decode, 8, tmp_path, None)
    assert decode.calls == 12 and len(split) == 12


def test_entry_without_its_json_or_with_a_short_file_is_rebuilt(tmp_path):
    first = build_image_cache({"n": 1}, 6, Counting(), 8, tmp_path, None)
    (tmp_path / f"{first.key}.json").unlink()
    decode = Counting()
    build_image_cache({"n": 1}, 6, decode, 8, tmp_path, None)
    assert decode.calls == 6
    data = tmp_path / f"{first.key}.u8"
    data.write_bytes(data.read_bytes()[:100])
    decode = Counting()
    again = build_image_cache({"n": 1}, 6, decode, 8, tmp_path, None)
    assert decode.calls == 6 and len(again) == 6


def test_thread_and_process_pools_give_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "CHUNK_IMAGES", 8)
    decode = SyntheticImages(seed=3, split="val", size=24)
    serial = build_image_cache({"p": "serial"}, 30, decode, 16, tmp_path, None)
    threads = build_image_cache({"p": "threads"}, 30, decode, 16, tmp_path, None, workers=2)
    procs = build_image_cache(
        {"p": "procs"}, 30, decode, 16, tmp_path, None, workers=2, pool="process"
    )
    assert np.array_equal(np.asarray(serial.images), np.asarray(threads.images))
    assert np.array_equal(np.asarray(serial.images), np.asarray(procs.images))


def test_release_pages_keeps_data_readable(tmp_path):
    split = build_image_cache({"n": 1}, 6, Counting(), 8, tmp_path, None)
    before = np.asarray(split.images).copy()
    release_pages(split.images)
    release_pages(np.zeros(3))  # not a memmap: nothing to do
    assert np.array_equal(np.asarray(split.images), before)

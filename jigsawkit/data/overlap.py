"""Content fingerprints of decoded images, to find probe images that pretraining saw.

A fingerprint is a 64-bit hash of an image's decoded uint8 pixels (a random linear hash
of its 8-byte words, computed for a chunk of images at once over the memmap cache). Two
splits decoded at the same size from the same source file give the same pixels, so the
same image reached through two different seeded splits of one folder is found whatever
its file name or index. A hash match is confirmed by comparing the pixels, so the count
is exact.
"""

from __future__ import annotations

import numpy as np

from jigsawkit.data.cache import release_pages

CHUNK_IMAGES = 2048
_HASH_SEED = 0x0F1A6E5


def _weights(words: int) -> np.ndarray:
    rng = np.random.default_rng(_HASH_SEED)
    # Odd weights: a single differing word always changes the hash (odd * d != 0 mod 2^64).
    return rng.integers(0, np.iinfo(np.uint64).max, size=words, dtype=np.uint64) | np.uint64(1)


def _as_words(block: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(block).reshape(len(block), -1)
    pad = (-flat.shape[1]) % 8
    if pad:
        flat = np.concatenate([flat, np.zeros((len(flat), pad), dtype=np.uint8)], axis=1)
    return flat.view(np.uint64)


def image_fingerprints(images: np.ndarray) -> np.ndarray:
    """One uint64 per image of ``images`` (``(N, ...)`` uint8), chunk by chunk."""
    count = len(images)
    out = np.empty(count, dtype=np.uint64)
    if count == 0:
        return out
    weights = _weights(_as_words(images[:1]).shape[1])
    for start in range(0, count, CHUNK_IMAGES):
        words = _as_words(images[start : start + CHUNK_IMAGES])
        # uint64 arithmetic wraps modulo 2^64, which is what the hash wants.
        out[start : start + len(words)] = (words * weights).sum(axis=1, dtype=np.uint64)
        release_pages(images)
    return out


class SeenImages:
    """The images one split holds (pretraining's train split), ready to be looked up."""

    def __init__(self, images: np.ndarray):
        self.images = images
        hashes = image_fingerprints(images)
        self.order = np.argsort(hashes, kind="stable")
        self.sorted_hashes = hashes[self.order]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def count_seen(self, images: np.ndarray) -> int:
        """How many of ``images`` (same shape per image) are pixel-identical to one seen."""
        if len(images) == 0 or len(self.sorted_hashes) == 0:
            return 0
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"images of shape {tuple(images.shape[1:])} cannot be compared with "
                f"{self.image_shape}"
            )
        hashes = image_fingerprints(images)
        first = np.searchsorted(self.sorted_hashes, hashes, side="left")
        last = np.searchsorted(self.sorted_hashes, hashes, side="right")
        seen = 0
        for index in np.flatnonzero(last > first):
            candidates = self.order[first[index] : last[index]]
            # Confirm the hash match on the pixels: the count must not include collisions.
            if any(np.array_equal(images[index], self.images[c]) for c in candidates):
                seen += 1
        return seen

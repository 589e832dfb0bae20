"""``synthetic``: labelled shape images generated offline, the default dataset.

Each image is a background plus one object from 10 classes (circle, square, triangle, star,
cross, ring, ellipse, hexagon, stripes patch, checker patch):

- background: a two-colour linear gradient at a random angle (a fixed top-to-bottom
  gradient would tell a jigsaw network where each tile belongs, so it would learn nothing
  else), low-frequency colour blobs, and pixel noise;
- object: random colour chosen to contrast with the background around it, random size
  and position (fully inside the image). Colour is never tied to the class (otherwise
  random features already classify well and a probe measures nothing).

Scenes are upright, so that rotation prediction is learnable (with a rotation-symmetric
generator its best accuracy is chance): the object stands upright with a small tilt, is
lit from above (top shaded towards white, bottom towards black) and casts a soft contact
shadow under its lowest point. Every cue of "up" is relative to the object; the background
has none, so a jigsaw tile still cannot tell where in the image it was cut from.

Image ``i`` of a split is a function of ``(seed, split, i)`` only, so any image can be
generated on its own; the label of image ``i`` is ``i % 10`` (balanced classes).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from jigsawkit.data.base import SPLITS, ImageSplit

SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "ellipse",
    "hexagon",
    "stripes",
    "checker",
)
# Bump when the generated pixels change, so cached images from an older generator are
# not reused.
GENERATOR_VERSION = 2  # 2: upright scenes (light from above, contact shadows)
_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
_MIN_CONTRAST = 110.0  # RGB distance between object colour and the background around it


@functools.lru_cache(maxsize=8)
def _grids(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-centre coordinates and the blob upsampling matrix for one image size."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    # Blobs: a 4x4 grid of random values interpolated with smooth (Gaussian) weights.
    centres = (np.arange(4, dtype=np.float32) + 0.5) * size / 4
    weights = np.exp(-0.5 * ((coords[:, None] - centres[None, :]) / (size / 4)) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)
    return yy, xx, weights.astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx, weights = _grids(size)
    colours = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    half = size / 2
    # Projection on a random direction, scaled so the gradient spans the image.
    t = ((xx - half) * np.cos(angle) + (yy - half) * np.sin(angle)) / (size * 0.71) + 0.5
    t = np.clip(t, 0.0, 1.0)[:, :, None]
    img = colours[0] + (colours[1] - colours[0]) * t
    blobs = rng.normal(0.0, 45.0, size=(3, 4, 4)).astype(np.float32)
    img += np.matmul(weights, np.matmul(blobs, weights.T)).transpose(1, 2, 0)
    return img


def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray | tuple:
    """Boolean mask of shape ``kind`` in object coordinates (u, v); patches return a pair."""
    name = SHAPES[kind]
    if name == "circle":
        return u * u + v * v <= r * r
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if name == "triangle":
        inside = np.ones(u.shape, dtype=bool)
        for k in range(3):
            a = np.pi / 2 + k * 2 * np.pi / 3
            inside &= u * np.cos(a) + v * np.sin(a) <= 0.5 * r
        return inside
    if name == "star":
        rho = np.sqrt(u * u + v * v)
        phase = (np.arctan2(v, u) * (5 / (2 * np.pi))) % 1.0
        reach = 0.4 * r + 0.6 * r * np.abs(2 * phase - 1)
        return rho <= reach
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        arm = 0.3 * r
        return ((au <= arm) & (av <= r)) | ((av <= arm) & (au <= r))
    if name == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if name == "ellipse":
        return (u / r) ** 2 + (v / (0.55 * r)) ** 2 <= 1.0
    if name == "hexagon":
        inside = np.ones(u.shape, dtype=bool)
        for k in range(3):
            a = k * np.pi / 3
            inside &= np.abs(u * np.cos(a) + v * np.sin(a)) <= 0.866 * r
        return inside
    patch = np.maximum(np.abs(u), np.abs(v)) <= 0.75 * r
    period = max(r / 2.5, 2.0)
    if name == "stripes":
        second = np.floor(u / period) % 2 == 1
    else:  # checker
        second = (np.floor(u / period) + np.floor(v / period)) % 2 == 1
    return patch, second


def _contrasting_colour(rng: np.random.Generator, local: np.ndarray) -> np.ndarray:
    candidates = rng.uniform(0, 255, size=(12, 3)).astype(np.float32)
    distance = np.linalg.norm(candidates - local, axis=1)
    good = np.flatnonzero(distance >= _MIN_CONTRAST)
    return candidates[good[0] if len(good) else int(np.argmax(distance))]


# Upright pose of each shape (radians): triangle apex up, a star point up, ellipse lying
# flat, stripes standing; the others look the same at any multiple of their symmetry.
_UPRIGHT = {"star": 1.5 * np.pi}
_TILT = 0.3  # largest tilt away from upright, radians (about 17 degrees)
_SHADE = 0.45  # light from above: the object's top this much towards white, its bottom black
_SHADOW = 0.6  # darkening at the centre of the contact shadow under the object


def _shade(colour: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``colour`` lit by ``s`` in [-1, 1]: towards white for s > 0, towards black for s < 0."""
    s = s[:, None]
    return np.where(s > 0, colour + (255.0 - colour) * s, colour * (1.0 + s))


def _contact_shadow(img: np.ndarray, base: float, cx: float, r: float) -> None:
    """Darken a soft flat ellipse centred under the object's lowest point (in place)."""
    size = img.shape[0]
    half_w, half_h = 1.0 * r, 0.28 * r
    top, bottom = int(max(base - 2 * half_h, 0)), int(min(base + 2 * half_h + 1, size))
    left, right = int(max(cx - 2 * half_w, 0)), int(min(cx + 2 * half_w + 1, size))
    if top >= bottom or left >= right:
        return
    ys = np.arange(top, bottom, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(left, right, dtype=np.float32)[None, :] + 0.5
    d2 = ((ys - base) / half_h) ** 2 + ((xs - cx) / half_w) ** 2
    img[top:bottom, left:right] *= (1.0 - _SHADOW * np.exp(-d2))[:, :, None]


def generate_image(seed: int, split: str, index: int, size: int = 96) -> tuple[np.ndarray, int]:
    """Image ``index`` of ``split`` as ``(size, size, 3)`` uint8, and its class index."""
    image, label, _ = generate_scene(seed, split, index, size)
    return image, label


def generate_scene(
    seed: int, split: str, index: int, size: int = 96
) -> tuple[np.ndarray, int, tuple[int, int, int, int]]:
    """``generate_image`` plus the object's bounding box ``(top, bottom, left, right)`` in
    pixels (bottom and right exclusive): where the object is, for tests and analysis."""
    rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], int(index)])
    label = int(index) % len(SHAPES)
    img = _background(rng, size)
    yy, xx, _ = _grids(size)
    r = rng.uniform(0.16, 0.3) * size
    cy, cx = rng.uniform(r, size - r, size=2)
    angle = _UPRIGHT.get(SHAPES[label], 0.0) + rng.uniform(-_TILT, _TILT)
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    dy, dx = yy - np.float32(cy), xx - np.float32(cx)
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    lo, hi = int(max(cy - r, 0)), int(min(cy + r, size))
    left, right = int(max(cx - r, 0)), int(min(cx + r, size))
    local = img[lo:hi, left:right].reshape(-1, 3).mean(axis=0)
    colour = _contrasting_colour(rng, local)
    mask = _shape_mask(label, u, v, float(r))
    patch = mask[0] if isinstance(mask, tuple) else mask
    rows, cols = np.flatnonzero(patch.any(axis=1)), np.flatnonzero(patch.any(axis=0))
    box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    _contact_shadow(img, float(rows[-1]) + 0.5, float(cx), float(r))
    # Light from above: shading follows the image's vertical, whatever the object's tilt.
    light = np.clip(-_SHADE * (yy - np.float32(cy)) / np.float32(r), -_SHADE, _SHADE)
    if isinstance(mask, tuple):
        patch, second = mask
        # A second colour darker or lighter than the first, so the pattern always shows.
        other = colour * 0.3 if colour.mean() > 127 else colour + (255 - colour) * 0.7
        first = patch & ~second
        img[first] = _shade(colour, light[first])
        img[patch & second] = _shade(other, light[patch & second])
    else:
        img[mask] = _shade(colour, light[mask])
    img += rng.standard_normal(size=img.shape, dtype=np.float32) * 6.0
    return np.clip(img, 0, 255).astype(np.uint8), label, box


class SyntheticImages:
    """``decode`` callable for the image cache: image ``i`` of one split (picklable)."""

    def __init__(self, seed: int, split: str, size: int):
        self.seed, self.split, self.size = seed, split, size

    def __call__(self, index: int) -> np.ndarray:
        return generate_image(self.seed, self.split, index, self.size)[0]


class SyntheticDataset:
    """Offline labelled shapes on textured backgrounds (10 classes), generated on demand."""

    has_labels = True
    num_classes = len(SHAPES)
    class_names = list(SHAPES)

    def __init__(
        self,
        *,
        train_size: int,
        val_size: int,
        test_size: int,
        image_size: int,
        seed: int,
    ):
        self.sizes = {"train": int(train_size), "val": int(val_size), "test": int(test_size)}
        self.image_size = int(image_size)
        self.seed = int(seed)

    def params(self) -> dict:
        return {
            **{f"{k}_size": v for k, v in self.sizes.items()},
            "image_size": self.image_size,
            "seed": self.seed,
        }

    def load(self, split: str, image_size: int, cache_dir: str | os.PathLike) -> ImageSplit:
        """Generate ``split`` at the native size (resized to ``image_size``) into the cache."""
        from jigsawkit.data.cache import build_image_cache

        if split not in self.sizes:
            raise ValueError(f"unknown split '{split}'; splits are {', '.join(SPLITS)}")
        count = self.sizes[split]
        key_parts = {
            "dataset": "synthetic",
            "params": self.params(),
            "split": split,
            "generator": GENERATOR_VERSION,
        }
        # Threads, not processes: numpy releases the GIL for part of the work, and a process
        # pool would re-import the caller's main script (which breaks unguarded scripts).
        workers = min(os.cpu_count() or 1, 4) if count >= 2000 else 0
        return build_image_cache(
            key_parts,
            count,
            SyntheticImages(self.seed, split, self.image_size),
            image_size,
            Path(cache_dir),
            labels=np.arange(count, dtype=np.int64) % len(SHAPES),
            num_classes=self.num_classes,
            class_names=self.class_names,
            workers=workers,
            description=f"generating synthetic {split} images",
        )

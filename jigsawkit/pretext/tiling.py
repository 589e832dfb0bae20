"""Batched jigsaw puzzle construction: crop, cut into tiles, shuffle, augment, all on the device.

Geometry, for images ``(B, C, S, S)``, a grid of ``N x N`` cells and tiles of ``tile`` px:

- a ``crop x crop`` window at a random position per sample (centred when not training);
- the window is cut into ``N x N`` cells of ``cell = crop // N`` px, numbered row-major
  (cell ``c`` is row ``c // N``, column ``c % N``);
- each cell yields one ``tile x tile`` tile at a random offset in ``[0, cell - tile]``
  inside the cell (centred when not training), so neighbouring tiles are separated by a
  random gap and edge continuity cannot solve the puzzle;
- **order**: with permutation ``perm`` (a row of the permutation set), output slot ``j``
  holds the tile of cell ``perm[j]``. The target is the row index of ``perm`` in the set.

Every sample gets a fresh permutation, crop and offsets each call; randomness comes only
from the ``torch.Generator`` passed in. No Python loop runs over samples or tiles: tiles
are read with one advanced-indexing gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# ITU-R 601 luma weights: the usual RGB -> grayscale conversion.
_LUMA = (0.299, 0.587, 0.114)
# Added to the per-tile variance: keeps nearly flat tiles from amplifying pixel noise.
_NORM_EPS = 1e-4


@dataclass(frozen=True)
class TilingSpec:
    """How puzzles are cut and augmented (see the module docstring for the geometry).

    ``channel_jitter`` is the largest per-channel spatial shift as a fraction of the tile
    size (each colour channel of a tile is read up to ``round(channel_jitter * tile)`` px
    away from the others), which hides chromatic aberration, a cue to absolute position.
    """

    grid: int
    crop: int
    tile: int
    grayscale_prob: float = 0.0
    channel_jitter: float = 0.0
    normalize: bool = True

    @property
    def cell(self) -> int:
        return self.crop // self.grid

    @property
    def tiles(self) -> int:
        return self.grid * self.grid

    @property
    def channel_shift(self) -> int:
        return int(round(self.channel_jitter * self.tile))

    def validate(self, image_size: int) -> None:
        if self.tile > self.cell:
            raise ValueError(f"tile {self.tile} px does not fit a {self.cell} px cell")
        if image_size < self.crop:
            raise ValueError(f"images of {image_size} px are smaller than the crop {self.crop}")


def _randint(
    high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Integers in ``[0, high]`` drawn on the generator's device, returned on ``device``."""
    where = generator.device if generator is not None else device
    values = torch.randint(0, high + 1, shape, generator=generator, device=where)
    return values.to(device)


def _rand(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def tile_coordinates(
    batch: int,
    image_size: int,
    spec: TilingSpec,
    *,
    train: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left ``(ys, xs)`` of the tile of every cell, each ``long (B, N*N)``, cells row-major.

    Training draws the crop position and each tile's offset in its cell at random;
    otherwise both are centred.
    """
    spec.validate(image_size)
    device = torch.device(device)
    n, cell, tiles = spec.grid, spec.cell, spec.tiles
    if train:
        crop_yx = _randint(image_size - spec.crop, (batch, 2, 1), generator, device)
        offset_yx = _randint(cell - spec.tile, (batch, 2, tiles), generator, device)
    else:
        crop_yx = torch.full((batch, 2, 1), (image_size - spec.crop) // 2, device=device)
        offset_yx = torch.full((batch, 2, tiles), (cell - spec.tile) // 2, device=device)
    index = torch.arange(tiles, device=device)
    cell_yx = torch.stack([index // n, index % n]) * cell  # (2, tiles)
    yx = crop_yx + cell_yx + offset_yx
    return yx[:, 0], yx[:, 1]


def extract_tiles(
    images: torch.Tensor,
    ys: torch.Tensor,
    xs: torch.Tensor,
    tile: int,
    channel_dy: torch.Tensor | None = None,
    channel_dx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tiles ``(B, T, C, tile, tile)`` whose top-left corners are ``ys, xs`` ``(B, T)``.

    ``channel_dy``/``channel_dx`` (``(B, T, C)``, optional) shift each channel's read
    window; reads past the image border repeat the edge pixel.
    """
    batch, channels, height, width = images.shape
    steps = torch.arange(tile, device=images.device)
    rows = ys[:, :, None, None] + steps  # (B, T, 1, tile)
    cols = xs[:, :, None, None] + steps
    if channel_dy is not None:
        rows = rows + channel_dy[..., None]  # (B, T, C, tile)
    if channel_dx is not None:
        cols = cols + channel_dx[..., None]
    rows = rows.clamp(0, height - 1)[..., :, None]  # (B, T, 1|C, tile, 1)
    cols = cols.clamp(0, width - 1)[..., None, :]  # (B, T, 1|C, 1, tile)
    b = torch.arange(batch, device=images.device)[:, None, None, None, None]
    c = torch.arange(channels, device=images.device)[None, None, :, None, None]
    return images[b, c, rows, cols]


def _to_grayscale(tiles: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    luma = torch.tensor(_LUMA, device=tiles.device, dtype=tiles.dtype)
    gray = (tiles * luma[:, None, None]).sum(dim=2, keepdim=True).expand_as(tiles)
    return torch.where(mask[:, None, None, None, None], gray, tiles)


def _normalize(tiles: torch.Tensor) -> torch.Tensor:
    """Per-tile per-channel zero mean, unit variance: removes low-level statistics cues."""
    var, mean = torch.var_mean(tiles, dim=(-2, -1), keepdim=True, unbiased=False)
    return (tiles - mean) * torch.rsqrt(var + _NORM_EPS)


def make_puzzles(
    images: torch.Tensor,
    perms: torch.Tensor,
    spec: TilingSpec,
    *,
    train: bool,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Puzzles for a batch: inputs ``(B, N*N, C, tile, tile)`` and targets ``long (B,)``.

    ``perms`` is the permutation set ``long (K, N*N)`` on the images' device; each sample
    gets a fresh permutation ``perms[target]`` (slot ``j`` holds the tile of cell
    ``perms[target, j]``). Grayscale and channel jitter apply only when training.
    """
    batch, _, height, width = images.shape
    if height != width:
        raise ValueError(f"jigsaw expects square images, got {height}x{width}")
    device = images.device
    ys, xs = tile_coordinates(batch, height, spec, train=train, generator=generator, device=device)
    targets = _randint(perms.shape[0] - 1, (batch,), generator, device)
    order = perms[targets]  # (B, T): slot j <- cell order[j]
    ys, xs = ys.gather(1, order), xs.gather(1, order)
    shift = spec.channel_shift if train else 0
    dy = dx = None
    if shift > 0:
        size = (batch, spec.tiles, images.shape[1])
        dy = _randint(2 * shift, size, generator, device) - shift
        dx = _randint(2 * shift, size, generator, device) - shift
    tiles = extract_tiles(images, ys, xs, spec.tile, dy, dx)
    if train and spec.grayscale_prob > 0:
        tiles = _to_grayscale(tiles, _rand((batch,), generator, device) < spec.grayscale_prob)
    if spec.normalize:
        tiles = _normalize(tiles)
    return tiles, targets

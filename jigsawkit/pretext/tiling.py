"""Batched jigsaw puzzle construction: crop, cut into tiles, shuffle, augment, all on the device.

Geometry, for images ``(B, C, S, S)``, a grid of ``N x N`` cells and tiles of ``tile`` px:

- a ``crop x crop`` window at a random position per sample (centred when not training);
- the window is cut into ``N x N`` cells of ``cell = crop // N`` px, numbered row-major
  (cell ``c`` is row ``c // N``, column ``c % N``);
- each cell yields one ``tile x tile`` tile at a random offset in ``[0, cell - tile]``
  inside the cell (centred when not training), so neighbouring tiles are separated by a
  random gap and edge continuity cannot solve the puzzle;
- **channel jitter** (training only): each colour channel of a tile is read from its own
  window, the tile's offset plus a shift of up to ``channel_shift`` px per axis, clamped to
  ``[0, cell - tile]``: every channel's window stays inside the tile's own cell, by the
  same rule for every cell. No read ever leaves the image, so no pixel is repeated at the
  border and no tile carries a cue to which cell it came from (a clamped read past the
  image edge would duplicate a border row in one channel, for edge cells only);
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
    away from the tile's window, never outside its cell), which hides chromatic
    aberration, a cue to absolute position.
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
    channels: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left ``(ys, xs)`` of the tile of every cell, each ``long (B, N*N)``, cells row-major.

    Training draws the crop position and each tile's offset in its cell at random;
    otherwise both are centred. With ``channels > 0``, training and a ``channel_shift``,
    each channel gets its own window: ``(ys, xs)`` are ``long (B, N*N, channels)``, the
    tile's offset shifted by up to ``channel_shift`` px and clamped inside the cell.
    """
    spec.validate(image_size)
    device = torch.device(device)
    n, cell, tiles = spec.grid, spec.cell, spec.tiles
    slack = cell - spec.tile
    if train:
        crop_yx = _randint(image_size - spec.crop, (batch, 2, 1), generator, device)
        offset_yx = _randint(slack, (batch, 2, tiles), generator, device)
    else:
        crop_yx = torch.full((batch, 2, 1), (image_size - spec.crop) // 2, device=device)
        offset_yx = torch.full((batch, 2, tiles), slack // 2, device=device)
    index = torch.arange(tiles, device=device)
    cell_yx = torch.stack([index // n, index % n]) * cell  # (2, tiles)
    origin_yx = crop_yx + cell_yx  # (B, 2, tiles): each cell's top-left corner
    shift = spec.channel_shift
    if channels > 0 and train and shift > 0:
        # Clamped in offset space, not image space: the same rule in every cell, so the
        # shifted windows say nothing about where the cell is.
        jitter = _randint(2 * shift, (batch, 2, tiles, channels), generator, device) - shift
        offset_yx = (offset_yx[..., None] + jitter).clamp_(0, slack)
        origin_yx = origin_yx[..., None]
    yx = origin_yx + offset_yx
    return yx[:, 0], yx[:, 1]


def extract_tiles(
    images: torch.Tensor,
    ys: torch.Tensor,
    xs: torch.Tensor,
    tile: int,
) -> torch.Tensor:
    """Tiles ``(B, T, C, tile, tile)`` whose top-left corners are ``ys, xs``: ``(B, T)``,
    or ``(B, T, C)`` to read each channel from its own window.

    Every window must lie inside the image (``tile_coordinates`` guarantees it): nothing
    is clamped or padded, since a repeated edge pixel would mark tiles at the border.
    """
    batch, channels = images.shape[:2]
    steps = torch.arange(tile, device=images.device)
    if ys.dim() == 2:
        ys, xs = ys[..., None], xs[..., None]  # one window for every channel
    rows = (ys[..., None] + steps)[..., :, None]  # (B, T, 1|C, tile, 1)
    cols = (xs[..., None] + steps)[..., None, :]  # (B, T, 1|C, 1, tile)
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
    ys, xs = tile_coordinates(
        batch,
        height,
        spec,
        train=train,
        generator=generator,
        device=device,
        channels=images.shape[1],
    )
    targets = _randint(perms.shape[0] - 1, (batch,), generator, device)
    order = perms[targets]  # (B, T): slot j <- cell order[j]
    if ys.dim() == 3:  # one window per channel
        order = order[..., None].expand(-1, -1, ys.shape[-1])
    ys, xs = ys.gather(1, order), xs.gather(1, order)
    tiles = extract_tiles(images, ys, xs, spec.tile)
    if train and spec.grayscale_prob > 0:
        tiles = _to_grayscale(tiles, _rand((batch,), generator, device) < spec.grayscale_prob)
    if spec.normalize:
        tiles = _normalize(tiles)
    return tiles, targets

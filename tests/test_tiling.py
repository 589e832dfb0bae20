"""Exact tests of the jigsaw tile geometry on images whose pixels encode their coordinates."""

from __future__ import annotations

import pytest
import torch

from jigsawkit.pretext.permutations import build_permutations
from jigsawkit.pretext.tiling import TilingSpec, extract_tiles, make_puzzles, tile_coordinates


def coordinate_images(batch: int, size: int) -> torch.Tensor:
    """Channel 0 = row y, channel 1 = column x, channel 2 = sample index (as floats)."""
    ys = torch.arange(size, dtype=torch.float32)[:, None].expand(size, size)
    xs = torch.arange(size, dtype=torch.float32)[None, :].expand(size, size)
    images = torch.stack([ys, xs, torch.zeros(size, size)])[None].repeat(batch, 1, 1, 1)
    images[:, 2] = torch.arange(batch, dtype=torch.float32)[:, None, None]
    return images


def plain_spec(grid: int, cell: int, tile: int) -> TilingSpec:
    return TilingSpec(grid=grid, crop=grid * cell + 1, tile=tile, normalize=False)


def perm_tensor(grid: int, count: int = 12) -> torch.Tensor:
    import math

    count = min(count, math.factorial(grid * grid))
    return torch.as_tensor(build_permutations(grid, count, "random", seed=3))


def check_tile_is_window(tile: torch.Tensor, sample: int) -> tuple[int, int]:
    """Assert ``tile`` (3, t, t) is an unbroken window of the image; return its (y, x)."""
    size = tile.shape[-1]
    y0, x0 = int(tile[0, 0, 0]), int(tile[1, 0, 0])
    steps = torch.arange(size, dtype=torch.float32)
    assert torch.equal(tile[0], (y0 + steps)[:, None].expand(size, size))
    assert torch.equal(tile[1], (x0 + steps)[None, :].expand(size, size))
    assert torch.all(tile[2] == sample), "tile taken from another sample"
    return y0, x0


@pytest.mark.parametrize("grid", [2, 3, 4])
@pytest.mark.parametrize("train", [True, False])
def test_every_tile_comes_from_its_cell_in_permuted_order(grid: int, train: bool) -> None:
    cell, tile, batch = 11, 7, 16
    spec = plain_spec(grid, cell, tile)
    size = spec.crop + 6
    perms = perm_tensor(grid)
    generator = torch.Generator().manual_seed(grid)
    inputs, targets = make_puzzles(
        coordinate_images(batch, size), perms, spec, train=train, generator=generator
    )
    assert inputs.shape == (batch, grid * grid, 3, tile, tile)
    assert targets.shape == (batch,) and targets.dtype == torch.long
    assert int(targets.min()) >= 0 and int(targets.max()) < len(perms)
    slack = cell - tile
    for b in range(batch):
        perm = perms[targets[b]]
        lo_y = lo_x = -(10**9)
        hi_y = hi_x = 10**9
        for slot in range(grid * grid):
            y0, x0 = check_tile_is_window(inputs[b, slot], b)
            row, col = divmod(int(perm[slot]), grid)  # slot j holds cell perm[j]
            # The tile lies inside its cell iff the crop origin is within these bounds.
            lo_y, hi_y = max(lo_y, y0 - row * cell - slack), min(hi_y, y0 - row * cell)
            lo_x, hi_x = max(lo_x, x0 - col * cell - slack), min(hi_x, x0 - col * cell)
        # One crop origin, inside the image, must place every tile inside its own cell.
        assert max(lo_y, 0) <= min(hi_y, size - spec.crop), f"sample {b}: tiles not in cells"
        assert max(lo_x, 0) <= min(hi_x, size - spec.crop), f"sample {b}: tiles not in cells"
        if not train:  # centred crop and centred tiles: exact positions
            origin = (size - spec.crop) // 2
            for slot in range(grid * grid):
                row, col = divmod(int(perm[slot]), grid)
                expected = (origin + row * cell + slack // 2, origin + col * cell + slack // 2)
                assert (int(inputs[b, slot, 0, 0, 0]), int(inputs[b, slot, 1, 0, 0])) == expected


def test_fresh_permutation_and_offsets_per_sample() -> None:
    spec = plain_spec(3, 11, 7)
    perms = perm_tensor(3, 24)
    images = coordinate_images(64, spec.crop + 6)
    generator = torch.Generator().manual_seed(0)
    inputs, targets = make_puzzles(images, perms, spec, train=True, generator=generator)
    assert len(torch.unique(targets)) > 10, "one permutation reused across the batch"
    corners = inputs[:, :, :2, 0, 0]  # (B, T, 2) top-left per tile
    assert len(torch.unique(corners[:, :, 0] % 11)) > 2, "offsets inside cells are not random"
    again, targets_again = make_puzzles(images, perms, spec, train=True, generator=generator)
    assert not torch.equal(targets, targets_again), "the next batch reused the permutations"
    replay = make_puzzles(
        images, perms, spec, train=True, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(replay[0], inputs) and torch.equal(replay[1], targets)


@pytest.mark.parametrize("grid", [2, 3, 4])
def test_tile_coordinates_inside_cells(grid: int) -> None:
    spec = TilingSpec(grid=grid, crop=grid * 16, tile=10, normalize=False)
    ys, xs = tile_coordinates(
        32, spec.crop, spec, train=True, generator=torch.Generator().manual_seed(1)
    )
    assert ys.shape == (32, grid * grid)
    rows = torch.arange(grid * grid) // grid
    cols = torch.arange(grid * grid) % grid
    assert torch.all(ys - rows * 16 >= 0) and torch.all(ys - rows * 16 <= 6)
    assert torch.all(xs - cols * 16 >= 0) and torch.all(xs - cols * 16 <= 6)
    eval_ys, eval_xs = tile_coordinates(4, spec.crop, spec, train=False)
    assert torch.equal(eval_ys, (rows * 16 + 3).expand(4, -1))
    assert torch.equal(eval_xs, (cols * 16 + 3).expand(4, -1))


def test_extract_tiles_reads_the_given_windows() -> None:
    images = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).reshape(2, 3, 10, 10)
    ys = torch.tensor([[0, 5], [2, 7]])
    xs = torch.tensor([[1, 3], [0, 6]])
    tiles = extract_tiles(images, ys, xs, 3)
    for b in range(2):
        for t in range(2):
            y, x = int(ys[b, t]), int(xs[b, t])
            assert torch.equal(tiles[b, t], images[b, :, y : y + 3, x : x + 3])


def test_normalisation_grayscale_and_channel_jitter() -> None:
    images = torch.rand(8, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    perms = perm_tensor(3)
    spec = TilingSpec(grid=3, crop=39, tile=10, grayscale_prob=1.0, normalize=True)
    tiles, _ = make_puzzles(images, perms, spec, train=True, generator=torch.Generator())
    assert torch.allclose(tiles.mean(dim=(-2, -1)), torch.zeros(8, 9, 3), atol=1e-5)
    assert torch.allclose(tiles.std(dim=(-2, -1), unbiased=False), torch.ones(8, 9, 3), atol=1e-2)
    assert torch.equal(tiles[:, :, 0], tiles[:, :, 1]), "grayscale_prob=1 left colour"
    colour, _ = make_puzzles(images, perms, spec, train=False, generator=torch.Generator())
    assert not torch.equal(colour[:, :, 0], colour[:, :, 1]), "grayscale applied in eval"

    jitter = TilingSpec(grid=3, crop=39, tile=10, channel_jitter=0.2, normalize=False)
    assert jitter.channel_shift == 2
    coords = coordinate_images(8, 40)
    coords[:, 2] = coords[:, 0]  # channel 2 also holds y, so channels 0 and 2 can be compared
    shifted, _ = make_puzzles(coords, perms, jitter, train=True, generator=torch.Generator())
    delta = shifted[:, :, 2, 0, 0] - shifted[:, :, 0, 0, 0]
    assert delta.abs().max() <= 4 and delta.abs().max() > 0
    still, _ = make_puzzles(coords, perms, jitter, train=False, generator=torch.Generator())
    assert torch.equal(still[:, :, 2], still[:, :, 0]), "channel jitter applied in eval"


def test_spec_rejects_tiles_larger_than_cells() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        TilingSpec(grid=3, crop=30, tile=11).validate(30)
    with pytest.raises(ValueError, match="smaller than the crop"):
        TilingSpec(grid=3, crop=30, tile=8).validate(29)


def duplicated_border_rate(grid: int, cell: int, tile: int, jitter: float, samples: int):
    """Per cell, the fraction of its tiles with a border row or column repeated in some
    channel, on uniform-noise images where only a clamped read can repeat one; and the
    number of tiles per cell. The crop covers the whole image, so it always sits on the
    image's edge (the worst case for reads past the border)."""
    spec = TilingSpec(grid=grid, crop=grid * cell, tile=tile, channel_jitter=jitter)
    spec = TilingSpec(**{**spec.__dict__, "normalize": False})
    perms = perm_tensor(grid, 24)
    generator = torch.Generator().manual_seed(5)
    hits = torch.zeros(grid * grid)
    for _ in range(samples // 500):
        images = torch.rand(500, 3, spec.crop, spec.crop, generator=generator)
        tiles, targets = make_puzzles(images, perms, spec, train=True, generator=generator)
        repeated = (
            (tiles[..., 0, :] == tiles[..., 1, :]).all(-1)
            | (tiles[..., -1, :] == tiles[..., -2, :]).all(-1)
            | (tiles[..., :, 0] == tiles[..., :, 1]).all(-1)
            | (tiles[..., :, -1] == tiles[..., :, -2]).all(-1)
        ).any(-1)  # (B, T) by slot
        cells = perms[targets]  # slot j holds cell cells[:, j]
        hits += torch.zeros(grid * grid).index_add_(0, cells.flatten(), repeated.flatten().float())
    return hits / (samples // 500 * 500), samples // 500 * 500


@pytest.mark.parametrize("grid,cell,tile,jitter", [(3, 12, 8, 0.25), (4, 10, 8, 0.1)])
def test_no_cell_position_has_more_duplicated_borders(grid, cell, tile, jitter) -> None:
    """No absolute-position cue at the image border: the rate of tiles with a repeated
    border row/column is the same, within binomial noise, for every cell."""
    rates, n = duplicated_border_rate(grid, cell, tile, jitter, samples=4000)
    pooled = float(rates.mean())
    noise = 4 * (max(pooled, 1 / n) * (1 - pooled) / n) ** 0.5
    spread = (rates - pooled).abs().max()
    assert spread <= noise, f"per-cell duplicated-border rates {rates.tolist()} (noise {noise})"


def test_channel_windows_stay_inside_their_cell() -> None:
    """Exact: each channel of each tile is read from an unbroken window inside the tile's
    own cell, at most ``channel_shift`` px per axis from the tile's offset (clamped in the
    cell), and the shifts are really used. The crop is the whole image, so its origin is 0
    and cell ``c``'s window starts at ``(c // N, c % N) * cell``."""
    grid, cell, tile, batch = 3, 12, 8, 64
    spec = TilingSpec(grid=grid, crop=grid * cell, tile=tile, channel_jitter=0.25, normalize=False)
    slack, shift = cell - tile, spec.channel_shift
    assert shift == 2
    ys, xs = tile_coordinates(
        batch, spec.crop, spec, train=True, generator=torch.Generator().manual_seed(2), channels=3
    )
    assert ys.shape == xs.shape == (batch, grid * grid, 3)
    index = torch.arange(grid * grid)[:, None]
    for coords, start in ((ys, index // grid * cell), (xs, index % grid * cell)):
        offset = coords - start  # (B, T, C) offset of each channel's window in its cell
        assert int(offset.min()) >= 0 and int(offset.max()) <= slack, "a window left its cell"
        spread = offset.amax(-1) - offset.amin(-1)
        assert int(spread.max()) <= 2 * shift and int(spread.max()) > 0

    # make_puzzles reads exactly those windows, per channel, in permuted order.
    images = coordinate_images(batch, spec.crop)
    images[:, 2] = images[:, 0] * 1000 + images[:, 1]  # channel 2 holds (y, x) both
    perms = perm_tensor(grid)
    tiles, targets = make_puzzles(
        images, perms, spec, train=True, generator=torch.Generator().manual_seed(2)
    )
    order = perms[targets][..., None].expand(-1, -1, 3)
    ys, xs = ys.gather(1, order), xs.gather(1, order)
    steps = torch.arange(tile)
    rows = (ys[..., None] + steps)[..., :, None].float()  # (B, T, C, tile, 1)
    cols = (xs[..., None] + steps)[..., None, :].float()  # (B, T, C, 1, tile)
    assert torch.equal(tiles[:, :, 0], rows[:, :, 0].expand(-1, -1, tile, tile))
    assert torch.equal(tiles[:, :, 1], cols[:, :, 1].expand(-1, -1, tile, tile))
    assert torch.equal(tiles[:, :, 2], rows[:, :, 2] * 1000 + cols[:, :, 2])

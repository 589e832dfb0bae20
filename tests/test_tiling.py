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

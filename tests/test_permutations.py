"""Permutation sets: validity, Hamming distances, reproducibility, cache, and the CLI command."""

from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np
import pytest

from jigsawkit.errors import UserError
from jigsawkit.pretext import permutations as P
from jigsawkit.pretext.permutations import PermutationSet, build_permutations, hamming_stats


def assert_valid(perms: np.ndarray, grid: int, count: int) -> None:
    assert perms.shape == (count, grid * grid)
    assert np.issubdtype(perms.dtype, np.integer)
    assert np.array_equal(np.sort(perms, axis=1), np.tile(np.arange(grid * grid), (count, 1)))
    assert len({tuple(row) for row in perms}) == count, "duplicate permutations"


@pytest.mark.parametrize("selection", ["maximal", "max_min", "random"])
@pytest.mark.parametrize("grid,count", [(2, 24), (2, 10), (3, 50), (4, 30)])
def test_valid_and_distinct(grid: int, count: int, selection: str) -> None:
    assert_valid(build_permutations(grid, count, selection, seed=1), grid, count)


def test_count_above_factorial_is_refused() -> None:
    with pytest.raises(UserError, match="a 2x2 jigsaw has 24 permutations; count is 25"):
        build_permutations(2, 25)
    with pytest.raises(UserError, match="grid"):
        build_permutations(1, 1)
    with pytest.raises(UserError, match="selection"):
        build_permutations(3, 10, "best")


def test_hamming_stats_match_brute_force() -> None:
    perms = build_permutations(3, 40, "random", seed=5)
    pairs = [int((a != b).sum()) for a, b in itertools.combinations(perms, 2)]
    mean, smallest = hamming_stats(perms)
    assert mean == pytest.approx(np.mean(pairs))
    assert smallest == min(pairs)
    assert hamming_stats(perms, chunk=7) == (mean, smallest)


def test_maximal_1000_for_3x3_is_fast_and_far_apart() -> None:
    started = time.perf_counter()
    perms = build_permutations(3, 1000, "maximal", seed=0, use_cache=False)
    assert time.perf_counter() - started < 30
    assert_valid(perms, 3, 1000)
    mean, _ = hamming_stats(perms)
    assert mean >= 7.9


def test_selection_shows_at_k100() -> None:
    maximal, _ = hamming_stats(build_permutations(3, 100, "maximal"))
    random_mean, _ = hamming_stats(build_permutations(3, 100, "random"))
    _, max_min_smallest = hamming_stats(build_permutations(3, 100, "max_min"))
    assert maximal > random_mean
    assert maximal >= 8.05
    assert max_min_smallest >= 5


def test_4x4_from_sampled_candidates() -> None:
    maximal = build_permutations(4, 100, "maximal", seed=2)
    random_set = build_permutations(4, 100, "random", seed=2)
    assert_valid(maximal, 4, 100)
    assert hamming_stats(maximal)[0] > hamming_stats(random_set)[0]


def test_reproducible_from_the_seed() -> None:
    first = build_permutations(3, 30, "maximal", seed=7, use_cache=False)
    again = build_permutations(3, 30, "maximal", seed=7, use_cache=False)
    other = build_permutations(3, 30, "maximal", seed=8, use_cache=False)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    sampled = build_permutations(4, 20, "max_min", seed=3, use_cache=False)
    assert np.array_equal(sampled, build_permutations(4, 20, "max_min", seed=3, use_cache=False))


def test_cache_hit_on_second_call(monkeypatch) -> None:
    first = build_permutations(3, 20, "max_min", seed=4)
    path = P._cache_path(3, 20, "max_min", 4)
    assert path.exists()

    def must_not_run(*args, **kwargs):
        raise AssertionError("rebuilt despite the cache")

    monkeypatch.setattr(P, "_select", must_not_run)
    assert np.array_equal(build_permutations(3, 20, "max_min", seed=4), first)
    monkeypatch.undo()
    path.write_bytes(b"damaged")  # a damaged cache file is rebuilt, not trusted
    assert np.array_equal(build_permutations(3, 20, "max_min", seed=4), first)


def test_permutation_set_wraps_a_set() -> None:
    pset = PermutationSet.build(2, 6, "maximal", seed=0)
    assert (pset.count, pset.tiles) == (6, 4)
    assert pset.stats() == hamming_stats(pset.perms)


def run_command(argv: list[str]) -> int:
    from jigsawkit.commands import add_command
    from jigsawkit.commands import permutations as command

    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers(dest="command"), "permutations")
    return command.run(parser.parse_args(["permutations", *argv]))


def test_command_writes_the_set_and_prints_stats(tmp_path, capsys) -> None:
    out = tmp_path / "sets" / "perms.npy"
    code = run_command(["--grid", "3", "--count", "64", "--out", str(out)])
    assert code == 0
    saved = np.load(out, allow_pickle=False)
    assert_valid(saved, 3, 64)
    assert np.array_equal(saved, build_permutations(3, 64, "maximal", 0))
    text = capsys.readouterr().out
    mean, smallest = hamming_stats(saved)
    assert "64" in text and f"{mean:.4f}" in text and f"min {smallest}" in text
    assert not list(out.parent.glob("*.tmp")), "temporary file left behind"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--grid", "2", "--count", "100"], "--count: a 2x2 jigsaw has 24 permutations"),
        (["--grid", "1"], "--grid"),
    ],
)
def test_command_bad_arguments_give_one_line_and_2(argv, message, capsys) -> None:
    assert run_command(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_factorial_bound_used_in_message() -> None:
    assert P.check_permutation_args(3, math.factorial(9), "random") == []


def test_distances_do_not_wrap_at_256_tiles() -> None:
    """A 16x16 grid (the schema's maximum) has Hamming distances up to 256: stored as
    uint8 a distance of 256 counted as 0."""
    tiles = 256
    perm = np.arange(tiles, dtype=np.uint8)  # indices 0..255 fit; distances do not
    candidates = np.stack([np.roll(perm, 1), perm, np.roll(perm, 2)])
    dist = P._distances_to(np.ascontiguousarray(candidates.T), perm)
    assert dist.tolist() == [256, 0, 256]


def test_grid_16_selection_sees_full_distances() -> None:
    # Among 10,000 random candidates hundreds share no position with 3 chosen ones:
    # max_min must find them (distance 256), and maximal's mean is above what a 255 cap gives.
    max_min = build_permutations(16, 4, "max_min", seed=0, use_cache=False)
    assert_valid(max_min, 16, 4)
    assert hamming_stats(max_min) == (256.0, 256)
    maximal = build_permutations(16, 20, "maximal", seed=0, use_cache=False)
    assert_valid(maximal, 16, 20)
    assert hamming_stats(maximal)[0] > 255.5


def test_grid_16_cached_set_round_trips() -> None:
    first = build_permutations(16, 3, "random", seed=9)
    assert np.load(P._cache_path(16, 3, "random", 9)).dtype == np.uint8  # indices 0..255
    assert np.array_equal(build_permutations(16, 3, "random", seed=9), first)
    assert P.index_dtype(17 * 17) == np.uint16 and P.distance_dtype(256) == np.uint16


def test_limits_are_refused_at_once(monkeypatch) -> None:
    started = time.perf_counter()
    problems = P.check_permutation_args(10**7, 1, "maximal")  # (10^14)! would never end
    assert [key for key, _ in problems] == ["grid"] and "at most 16" in problems[0][1]
    assert P.check_permutation_args(16, 1, "maximal") == []
    with pytest.raises(UserError, match="count: .* need about .* GiB of memory"):
        build_permutations(4, 10**10, "random")
    monkeypatch.setattr(P, "memory_budget_bytes", lambda: 10**6)
    with pytest.raises(UserError, match="100 permutations of a 4x4 grid need about"):
        build_permutations(4, 100, "maximal", use_cache=False)
    assert time.perf_counter() - started < 2

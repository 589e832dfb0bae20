"""Permutation sets for jigsaw puzzles (Noroozi & Favaro 2016, Algorithm 1, and variants).

A set is an int array ``(K, N*N)`` of 0-based tile indices; row ``k`` is the permutation
whose index ``k`` the network must predict. Selections:

- ``maximal``: greedy; each new permutation maximises the *average* Hamming distance to
  those already chosen (the paper's Algorithm 1).
- ``max_min``: greedy; each new permutation maximises the *minimum* Hamming distance to
  those already chosen (ties broken by the average), so no two are easy to confuse.
- ``random``: ``K`` distinct permutations drawn uniformly.

Candidates are all ``(N*N)!`` permutations for ``N <= 3`` and a seeded pool of
``max(20*K, 10000)`` distinct random permutations beyond that. The first permutation is
drawn from the seed, so a set is reproducible from ``(N, K, selection, seed)``; sets are
cached on disk under ``cache_dir("permutations")``.

Every grid the experiment schema allows (up to ``MAX_GRID``) works: tile indices and
Hamming distances are stored in the smallest unsigned type that holds them (``uint8`` up
to 255, ``uint16`` beyond: a 16x16 grid has distances up to 256). Requests that cannot be
met are refused at once (``check_permutation_args``): grids beyond ``MAX_GRID``, counts
above ``(N*N)!``, and counts whose candidate pool would not fit in memory.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jigsawkit.atomic import atomic_write
from jigsawkit.errors import UserError
from jigsawkit.paths import cache_dir
from jigsawkit.pretext import JIGSAW_SCHEMA
from jigsawkit.progress import progress_bar

SELECTIONS = ("maximal", "max_min", "random")
# Bump when the algorithm changes so stale cached sets are not reused.
# 2: distances no longer wrap at 256 tiles (16x16 sets built by version 1 were wrong).
_ALGORITHM_VERSION = 2
# Grids up to this size enumerate every permutation as candidates (9! = 362,880 rows).
_EXACT_MAX_GRID = 3
# The largest grid an experiment accepts; the same limit for the permutations command.
MAX_GRID: int = JIGSAW_SCHEMA["properties"]["grid"]["maximum"]
# Bytes per candidate row and tile while a sampled pool is drawn (float64 keys and int64
# argsort indices, each for 10% extra rows, plus np.unique's copies), and per row for
# the greedy selection's running sum, minimum, score and mask.
_SAMPLED_BYTES_PER_CELL = 24
_GREEDY_BYTES_PER_ROW = 40
# A request may use at most this fraction of the machine's physical memory.
_MEMORY_FRACTION = 0.5


def index_dtype(tiles: int) -> np.dtype:
    """The smallest unsigned type holding tile indices ``0 .. tiles - 1``."""
    return np.min_scalar_type(tiles - 1)


def distance_dtype(tiles: int) -> np.dtype:
    """The smallest unsigned type holding Hamming distances ``0 .. tiles``."""
    return np.min_scalar_type(tiles)


def _pool_size(grid: int, count: int) -> int:
    """Rows in the candidate pool: every permutation, or a sample of them."""
    total = math.factorial(grid * grid)
    return total if grid <= _EXACT_MAX_GRID else min(max(20 * count, 10_000), total)


def selection_memory_bytes(grid: int, count: int) -> int:
    """About how many bytes building a set of ``count`` for ``grid`` needs at its peak."""
    tiles = grid * grid
    rows = _pool_size(grid, count)
    if grid <= _EXACT_MAX_GRID:
        per_row = 2 * tiles * index_dtype(tiles).itemsize  # the pool and its transpose
    else:
        per_row = tiles * _SAMPLED_BYTES_PER_CELL
    return rows * (per_row + _GREEDY_BYTES_PER_ROW) + count * tiles * 8


def memory_budget_bytes() -> int:
    """The memory one permutation set may take: a fraction of physical memory."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        physical = 8 * 2**30  # unknown (not POSIX): assume a small machine
    return int(physical * _MEMORY_FRACTION)


def _gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB"


def check_permutation_args(grid: int, count: int, selection: str) -> list[tuple[str, str]]:
    """Problems with a request, as ``(key, message)`` pairs (empty when it is valid)."""
    problems = []
    if not isinstance(grid, int) or grid < 2:
        problems.append(("grid", f"expected an integer >= 2, found {grid!r}"))
    elif grid > MAX_GRID:
        # Checked first: (N*N)! of a huge N would take forever to compute.
        problems.append(
            (
                "grid",
                f"expected at most {MAX_GRID} (the largest grid an experiment accepts), "
                f"found {grid}",
            )
        )
    if not isinstance(count, int) or count < 1:
        problems.append(("count", f"expected an integer >= 1, found {count!r}"))
    if selection not in SELECTIONS:
        problems.append(
            ("selection", f"expected one of {', '.join(SELECTIONS)}, found {selection!r}")
        )
    if not problems:
        total = math.factorial(grid * grid)
        if count > total:
            problems.append(
                (
                    "count",
                    f"a {grid}x{grid} jigsaw has {total} permutations; count is {count}",
                )
            )
    if not problems:
        need, budget = selection_memory_bytes(grid, count), memory_budget_bytes()
        if need > budget:
            problems.append(
                (
                    "count",
                    f"{count} permutations of a {grid}x{grid} grid need about {_gib(need)} of "
                    f"memory to select; at most {_gib(budget)} is available (half of this "
                    "machine's memory): ask for fewer",
                )
            )
    return problems


def _candidates(grid: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Candidate permutations, ``(M, N*N)`` of ``index_dtype``: all of them, or a seeded
    random pool."""
    tiles = grid * grid
    dtype = index_dtype(tiles)
    if grid <= _EXACT_MAX_GRID:
        flat = np.fromiter(
            itertools.chain.from_iterable(itertools.permutations(range(tiles))),
            dtype=dtype,
            count=math.factorial(tiles) * tiles,
        )
        return flat.reshape(-1, tiles)
    pool = _pool_size(grid, count)
    found = np.empty((0, tiles), dtype=dtype)
    while len(found) < pool:
        need = pool - len(found)
        draw = np.argsort(rng.random((need + need // 10 + 8, tiles)), axis=1).astype(dtype)
        found = np.unique(np.concatenate([found, draw]), axis=0)
    # np.unique sorts rows; shuffle so the pool order does not favour small indices.
    return found[rng.permutation(len(found))[:pool]]


def _distances_to(candidates_t: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Hamming distance of every candidate to ``perm``; candidates given column-major
    (``(N*N, M)``) so each comparison streams one contiguous column."""
    tiles = candidates_t.shape[0]
    # Distances reach N*N: uint8 would wrap to 0 at 256 tiles (grid 16).
    dist = np.zeros(candidates_t.shape[1], dtype=distance_dtype(tiles))
    for position, tile in enumerate(perm):
        dist += candidates_t[position] != tile
    return dist


def _greedy(candidates: np.ndarray, count: int, first: int, use_min: bool) -> np.ndarray:
    """Greedy selection keeping a running sum (and min) of distances to the chosen set."""
    columns = np.ascontiguousarray(candidates.T)
    total = np.zeros(len(candidates), dtype=np.int64)
    nearest = np.full(len(candidates), np.iinfo(np.int64).max, dtype=np.int64)
    chosen = np.zeros(len(candidates), dtype=bool)
    picks = [first]
    scale = len(candidates) * candidates.shape[1] + 1  # total < scale, so min dominates
    # Only worth a bar when it takes seconds (about 2e8 comparisons per second here).
    show = count * candidates.size > 1e9
    with progress_bar("selecting permutations", total=count, unit="perm", enabled=show) as bar:
        for _ in range(count):
            index = picks[-1]
            chosen[index] = True
            dist = _distances_to(columns, candidates[index])
            total += dist
            np.minimum(nearest, dist, out=nearest)
            bar.advance(1)
            if len(picks) == count:
                break
            score = nearest * scale + total if use_min else total.copy()
            score[chosen] = -1
            picks.append(int(np.argmax(score)))
    return candidates[np.asarray(picks)]


def _select(grid: int, count: int, selection: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    candidates = _candidates(grid, count, rng)
    if selection == "random":
        return candidates[rng.choice(len(candidates), size=count, replace=False)]
    first = int(rng.integers(len(candidates)))
    return _greedy(candidates, count, first, use_min=selection == "max_min")


def _cache_path(grid: int, count: int, selection: str, seed: int) -> Path:
    name = f"v{_ALGORITHM_VERSION}_grid{grid}_k{count}_{selection}_seed{seed}.npy"
    return cache_dir("permutations") / name


def save_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary file next to ``path``, then rename it into place."""
    atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


def _load_cached(path: Path, grid: int, count: int) -> np.ndarray | None:
    try:
        perms = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None  # missing or damaged: rebuild
    if perms.shape != (count, grid * grid):
        return None
    return perms.astype(np.int64)


def build_permutations(
    grid: int, count: int, selection: str = "maximal", seed: int = 0, use_cache: bool = True
) -> np.ndarray:
    """A permutation set, ``int64 (count, grid*grid)`` of 0-based tile indices.

    Raises ``UserError`` for an impossible request (e.g. more permutations than ``grid``
    allows). Reproducible from the arguments; cached on disk unless ``use_cache=False``.
    """
    problems = check_permutation_args(grid, count, selection)
    if problems:
        key, message = problems[0]
        raise UserError(f"permutations.{key}: {message}")
    path = _cache_path(grid, count, selection, seed)
    if use_cache:
        cached = _load_cached(path, grid, count)
        if cached is not None:
            return cached
    perms = _select(grid, count, selection, seed).astype(np.int64)
    if use_cache:
        save_npy_atomic(path, perms.astype(index_dtype(grid * grid)))
    return perms


def hamming_stats(perms: np.ndarray, chunk: int = 1024) -> tuple[float, int]:
    """Mean and minimum Hamming distance over all pairs of rows of ``perms``."""
    perms = np.asarray(perms)
    count, tiles = perms.shape
    if count < 2:
        return 0.0, 0
    columns = perms.T.astype(np.int16)
    total, smallest = 0, tiles
    for start in range(0, count, chunk):
        rows = columns[:, start : start + chunk]
        same = np.zeros((rows.shape[1], count), dtype=np.int16)
        for position in range(tiles):
            same += rows[position][:, None] == columns[position][None, :]
        dist = tiles - same
        # Keep only pairs (i, j) with j > i so each pair counts once.
        upper = np.arange(count)[None, :] > np.arange(start, start + rows.shape[1])[:, None]
        pair_dist = dist[upper]
        total += int(pair_dist.sum())
        if pair_dist.size:
            smallest = min(smallest, int(pair_dist.min()))
    pairs = count * (count - 1) // 2
    return total / pairs, smallest


@dataclass(frozen=True)
class PermutationSet:
    """A permutation set and how it was made; ``perms[k]`` is the permutation of class ``k``."""

    grid: int
    selection: str
    seed: int
    perms: np.ndarray

    @classmethod
    def build(
        cls, grid: int, count: int, selection: str = "maximal", seed: int = 0
    ) -> PermutationSet:
        return cls(grid, selection, seed, build_permutations(grid, count, selection, seed))

    @property
    def count(self) -> int:
        return int(self.perms.shape[0])

    @property
    def tiles(self) -> int:
        return self.grid * self.grid

    def stats(self) -> tuple[float, int]:
        """(mean, min) pairwise Hamming distance."""
        return hamming_stats(self.perms)

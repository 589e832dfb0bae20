"""Seeded train/val/test splits of one pool of images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jigsawkit.data.base import SPLITS
from jigsawkit.errors import UserError


def check_fractions(fractions: list[float] | tuple[float, ...], where: str = "splits") -> None:
    """Three non-negative fractions (train, val, test) summing to 1 within 1e-6."""
    if len(fractions) != 3:
        raise UserError(f"{where}: expected 3 fractions [train, val, test], got {list(fractions)}")
    if any(f < 0 for f in fractions):
        raise UserError(f"{where}: fractions must be >= 0, got {list(fractions)}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise UserError(
            f"{where}: fractions must sum to 1, got {list(fractions)} (sum {sum(fractions):.6g})"
        )


def fraction_problems(fractions: list[float], key: str = "splits") -> list[tuple[str, str]]:
    """The ``check=`` form of ``check_fractions`` for a registration."""
    try:
        check_fractions(fractions, key)
    except UserError as exc:
        return [(key, str(exc).split(": ", 1)[-1])]
    return []


def split_indices(
    n: int, fractions: list[float] | tuple[float, ...], seed: int
) -> dict[str, np.ndarray]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into train/val/test by ``fractions``.

    Sizes are rounded so that they add up to ``n``; each split's indices are sorted (so
    reading them from disk goes front to back). The result depends only on
    ``(n, fractions, seed)``.
    """
    check_fractions(fractions)
    order = np.random.default_rng([int(seed), 0x5EED]).permutation(n)
    bounds = np.round(np.cumsum([0.0, *fractions]) * n).astype(np.int64)
    bounds[-1] = n
    return {name: np.sort(order[bounds[i] : bounds[i + 1]]) for i, name in enumerate(SPLITS)}


def stratified_holdout(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into ``(rest, held_out)`` with ``fraction`` of each class held out.

    Each class contributes ``round(fraction * class_count)`` images to the held-out part,
    chosen with a generator seeded by ``seed``; both parts are returned sorted.
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"val_fraction: expected a number in [0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), 0xC1A55])
    held: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = int(round(fraction * len(members)))
        if take:
            held.append(rng.choice(members, size=take, replace=False))
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held_out] = False
    return np.flatnonzero(mask), held_out


class ValFromTrain:
    """Base of the datasets with an official train and test set (CIFAR, Fashion-MNIST, Tiny
    ImageNet): ``test`` is the official test set, ``val`` a class-stratified, seeded
    ``val_fraction`` of the official train set and ``train`` the rest of it.

    Keywords: ``root`` (folder, ``~`` expanded), ``download`` (fetch what is missing),
    ``val_fraction`` (in [0, 1)), ``seed``; ``name`` prefixes the messages about them.
    """

    def __init__(
        self,
        name: str,
        *,
        root: str | os.PathLike,
        download: bool,
        val_fraction: float,
        seed: int,
    ) -> None:
        if not 0.0 <= float(val_fraction) < 1.0:
            raise UserError(f"{name}.val_fraction: expected [0, 1), got {val_fraction}")
        self.root = Path(root).expanduser()
        self.download = bool(download)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)

    def carve(self, split: str, labels: np.ndarray) -> np.ndarray:
        """The indices into the official train set (whose labels are ``labels``) that make
        ``split``: its held-out part for ``val``, the rest for ``train``."""
        rest, held_out = stratified_holdout(labels, self.val_fraction, self.seed)
        return held_out if split == "val" else rest

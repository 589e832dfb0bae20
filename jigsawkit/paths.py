"""Where jigsawkit keeps caches: ``$JIGSAWKIT_CACHE`` or ``~/.cache/jigsawkit``."""

from __future__ import annotations

import os
from pathlib import Path

# POSIX limits of one file name and of a whole path, in bytes (Linux, macOS: 255 / 4096
# or 1024); a longer name fails with ENAMETOOLONG half-way through writing a run.
NAME_MAX = 255
PATH_MAX = 4096


def cache_root() -> Path:
    """Root of all on-disk caches (permutation sets, decoded images, features)."""
    return Path(os.environ.get("JIGSAWKIT_CACHE") or "~/.cache/jigsawkit").expanduser()


def cache_dir(*parts: str) -> Path:
    """A sub-folder of the cache root, created on demand."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path

"""Where jigsawkit keeps caches (``$JIGSAWKIT_CACHE`` or ``~/.cache/jigsawkit``), and the
checks made on a folder before a run writes anything into it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from jigsawkit.errors import UserError

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


def _limit(folder: Path, name: str, fallback: int) -> int:
    try:
        return int(os.pathconf(folder, name))
    except (OSError, ValueError):
        return fallback


def _shown(path: Path) -> str:
    """A path as messages show it: a very long one is shortened in the middle."""
    text = str(path)
    return text if len(text) <= 100 else f"{text[:48]}...{text[-40:]}"


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Refuse, in one line naming ``what`` (``--out``, ``output_dir``, ...), a folder a run
    could not create or write: a regular file on the way, a name or path longer than the
    filesystem takes, a folder without write permission. Nothing is created here."""
    path = Path(path).expanduser()
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if os.path.lexists(existing) and not existing.is_dir():
        if existing.is_symlink() and not existing.exists():
            raise UserError(f"{what} {_shown(path)}: {_shown(existing)} is a broken link")
        if existing == path:
            raise UserError(f"{what} {_shown(path)}: is a file, expected a folder (or a new name)")
        raise UserError(
            f"{what} {_shown(path)}: {_shown(existing)} is a file, so no folder can be made under it"
        )
    name_max = _limit(existing, "PC_NAME_MAX", NAME_MAX)
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise UserError(
                f"{what} {_shown(path)}: the name {part[:24]!r}... is {len(os.fsencode(part))} bytes; "
                f"file names are limited to {name_max} bytes here"
            )
    path_max = _limit(existing, "PC_PATH_MAX", PATH_MAX)
    if len(os.fsencode(os.path.abspath(path))) >= path_max - 64:  # room for the run's files
        raise UserError(
            f"{what} {_shown(path)}: the path is {len(os.fsencode(os.path.abspath(path)))} bytes; "
            f"paths are limited to {path_max} bytes here, including the files a run writes"
        )
    if os.path.lexists(existing) and not os.access(existing, os.W_OK | os.X_OK):
        reason = os.strerror(errno.EACCES)
        raise UserError(f"{what} {_shown(path)}: cannot write in {_shown(existing)} ({reason})")
    return path

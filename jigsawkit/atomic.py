"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

The data goes to a temporary file in the target's folder (same filesystem, so the rename
is atomic), is fsynced, then ``os.replace``-d over the target. A failure at any point
removes the temporary file and leaves the previous target untouched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(
    path: str | Path, write: Callable[[BinaryIO], None], kill_point: str | None = None
) -> None:
    """Call ``write(handle)`` on a temp file next to ``path``, fsync, then rename it over.

    The file gets the mode a plain ``open()`` would give (not ``mkstemp``'s private 0600).
    ``write`` streams into the handle, so large outputs are never held in memory twice.
    ``kill_point`` names the spot, mid-write, where the crash tests may kill the process
    (``jigsawkit.killpoints``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # results, checkpoints and caches are for sharing
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if kill_point is not None:
                from jigsawkit.killpoints import kill_point as maybe_kill

                maybe_kill(kill_point)  # the temp file written, not yet synced or renamed
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable; best effort, as not every platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

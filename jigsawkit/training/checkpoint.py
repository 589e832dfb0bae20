"""Training checkpoints: atomic writes, and loads that never unpickle arbitrary objects.

A checkpoint holds only tensors and plain values (dict, list, tuple, str, int, float, bool,
None), so ``torch.load(weights_only=True)`` reads it. Writes go to a temporary file in the
same folder, are fsynced, then renamed over the target: a crash mid-write leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from jigsawkit.atomic import atomic_write, fsync_dir
from jigsawkit.errors import CheckpointError, one_line

CHECKPOINT_FORMAT = "jigsawkit.checkpoint/1"

_PLAIN = (torch.Tensor, str, int, float, bool, type(None), torch.dtype, torch.device, torch.Size)


def check_plain(value: Any, where: str = "state") -> None:
    """Raise ``TypeError`` naming the first value a weights-only load could not read."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}")
            check_plain(item, f"{where}.{key}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}; "
        "only tensors and plain values can be saved"
    )


def atomic_torch_save(path: str | Path, obj: dict, kill_point: str | None = None) -> None:
    """``torch.save`` to a temp file next to ``path``, fsync, then ``os.replace``."""
    check_plain(obj)
    path = Path(path)
    atomic_write(path, lambda handle: torch.save(obj, handle), kill_point)
    fsync_dir(path.parent)


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)``; every failure becomes one-line ``CheckpointError``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file")
    try:
        with warnings.catch_warnings():
            # Plain pickles make torch warn about their protocol; the error below says more.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found:
            # weights_only refused a global: the file wants to build objects we did not vet.
            raise CheckpointError(
                f"{path}: refused to load: it holds a pickled {found.group(1)}, not only "
                "tensors and plain values (never unpickle files you did not write)"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable torch file (corrupt, truncated or another format)"
        ) from None
    except Exception as error:  # torch reports corruption as RuntimeError, KeyError, EOFError...
        raise CheckpointError(
            f"{path}: not a readable torch file (corrupt, truncated or another format: "
            f"{one_line(error, first_line=True)[:120]})"
        ) from None


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Atomically save a training checkpoint (tensors and plain values only)."""
    atomic_torch_save(path, {"format": CHECKPOINT_FORMAT, **state}, "checkpoint-write")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a training checkpoint written by ``save_checkpoint`` (weights-only unpickling)."""
    state = safe_torch_load(path, map_location)
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt != CHECKPOINT_FORMAT:
        hint = ""
        if isinstance(fmt, str) and fmt.startswith("jigsawkit.feature_extractor"):
            hint = "; it is an exported feature extractor, not a training checkpoint"
        raise CheckpointError(
            f"{path}: not a jigsawkit training checkpoint (format {fmt!r}, "
            f"expected {CHECKPOINT_FORMAT!r}){hint}"
        )
    return state

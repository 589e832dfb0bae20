"""Read W&B offline run files (``run-<id>.wandb``) without W&B's servers.

wandb 0.31 writes these files from its Go core and ships no Python reader any more. The
format (checked against files wandb-core 0.31 writes):

- a 7-byte header: ``b":W&B"``, magic ``0xBEE1`` (uint16 little-endian), version ``0``;
- then a LevelDB log: 32 KiB blocks (counted from the start of the file, header
  included) of chunks, each with a 7-byte header — checksum (uint32 LE), length
  (uint16 LE), type (1 byte: FULL=1, FIRST=2, MIDDLE=3, LAST=4) — and its data. A block
  whose remaining space is under 7 bytes is padded with zeros.
- The checksum is the plain IEEE CRC-32 (zlib's) of the type byte followed by the data,
  not LevelDB's masked CRC-32C (wandb uses its "IEEE" variant of the LevelDB writer).
- Each reassembled record is a protobuf ``wandb.proto.wandb_internal_pb2.Record``.

The package only needs to know when wandb-core has finished writing a run file
(:func:`wait_until_complete`, which the ``wandb`` tracker calls): it decodes the last
records and looks for the run's ``exit``. A run that was killed mid-write leaves a
truncated last record, which is ignored (as LevelDB's reader does). The tests read whole
files with ``tests/wandb_records.py`` (history, summary, config), built on
:func:`iter_chunks`.
"""

from __future__ import annotations

import collections
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from jigsawkit.errors import UserError

FILE_IDENT = b":W&B"
FILE_MAGIC = 0xBEE1
FILE_VERSION = 0
FILE_HEADER = struct.Struct("<4sHB")  # 7 bytes
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type: 7 bytes
BLOCK_SIZE = 32 * 1024

FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class RunFileError(UserError):
    """A file that is not a W&B run file, or one whose contents are damaged."""


def _crc(chunk_type: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(bytes((chunk_type,)))) & 0xFFFFFFFF


def iter_chunks(data: bytes, path: str = "<bytes>", verify: bool = True) -> Iterator[bytes]:
    """The reassembled records (raw bytes) of a whole run file held in ``data``."""
    if len(data) < FILE_HEADER.size:
        raise RunFileError(f"{path}: too short to be a W&B run file")
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if ident != FILE_IDENT or magic != FILE_MAGIC:
        raise RunFileError(f"{path}: not a W&B run file (no ':W&B' header)")
    if version != FILE_VERSION:
        raise RunFileError(f"{path}: W&B run file version {version}; this reader knows 0")
    pos = FILE_HEADER.size
    pending: list[bytes] | None = None
    while True:
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER.size:
            pos += left_in_block  # zero padding at the end of a block
            continue
        if pos + CHUNK_HEADER.size > len(data):
            return  # end of file (or a truncated chunk header from an interrupted run)
        crc, length, chunk_type = CHUNK_HEADER.unpack_from(data, pos)
        start = pos + CHUNK_HEADER.size
        if crc == 0 and length == 0 and chunk_type == 0:
            pos += left_in_block  # zeroed space (e.g. preallocated): skip the rest of the block
            continue
        if start + length > len(data):
            return  # truncated last record
        chunk = data[start : start + length]
        if verify and _crc(chunk_type, chunk) != crc:
            raise RunFileError(f"{path}: damaged record at byte {pos} (checksum mismatch)")
        pos = start + length
        if chunk_type == FULL:
            pending = None
            yield chunk
        elif chunk_type == FIRST:
            pending = [chunk]
        elif chunk_type in (MIDDLE, LAST):
            if pending is None:
                raise RunFileError(f"{path}: record fragment without a start at byte {pos}")
            pending.append(chunk)
            if chunk_type == LAST:
                yield b"".join(pending)
                pending = None
        else:
            raise RunFileError(f"{path}: unknown chunk type {chunk_type} at byte {pos}")


def find_run_file(path: str | Path) -> Path:
    """``path`` itself if it is a file, else the ``run-*.wandb`` inside a run folder."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(path.glob("run-*.wandb")) or sorted(path.glob("*/run-*.wandb"))
        if found:
            return found[-1]
    raise RunFileError(f"{path}: no W&B run file (run-*.wandb) there")


def is_complete(path: str | Path) -> bool:
    """True once the run's ``exit`` record is on disk (the run finished writing).

    wandb-core writes the file in the background: ``run.finish()`` can return before the
    records reach the disk. Only the last few records are decoded, so this stays cheap.
    """
    from wandb.proto import wandb_internal_pb2

    try:
        file = find_run_file(path)
        tail = collections.deque(iter_chunks(file.read_bytes(), str(file), verify=False), 3)
    except (RunFileError, OSError):
        return False
    for raw in tail:
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(raw)
        except Exception:
            continue
        if record.WhichOneof("record_type") in ("exit", "final", "footer"):
            return True
    return False


def wait_until_complete(path: str | Path, timeout: float = 20.0) -> bool:
    """Poll until :func:`is_complete` (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not is_complete(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    return True

"""Fetching datasets: streamed downloads with an md5 check, and safe archive extraction.

Both steps are atomic: a download goes to a temporary file that is renamed once complete
and verified, and an archive is extracted into a temporary folder beside the target that is
renamed into place at the end. An interrupted step leaves nothing half-written at the final
path. Extraction refuses any archive member that would land outside the target folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from jigsawkit.atomic import atomic_write
from jigsawkit.errors import DataMissingError, UserError
from jigsawkit.progress import progress_bar

CHUNK_BYTES = 1 << 20
# Python's own "data" extraction filter (3.11.4+) on top of our checks: it also strips
# setuid bits and refuses device files.
_DATA_FILTER = getattr(tarfile, "data_filter", None)
_FILTER_ERRORS = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()


def file_md5(path: str | os.PathLike) -> str:
    """The md5 hex digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_md5(path: str | os.PathLike, md5: str | None) -> bool:
    """True when ``path`` exists and (if ``md5`` is given) has that md5 digest."""
    path = Path(path)
    if not path.is_file():
        return False
    return md5 is None or file_md5(path) == md5.lower()


def download_url(
    url: str, dest: str | os.PathLike, md5: str | None = None, progress: bool = True
) -> Path:
    """Download ``url`` to ``dest`` (streamed to a temp file, md5 checked, then renamed).

    An existing ``dest`` with the right md5 is kept as it is. A network failure raises
    ``DataMissingError`` naming the URL and where to put the file by hand.
    """
    dest = Path(dest)
    if check_md5(dest, md5):
        return dest

    def fetch(out: BinaryIO) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        _stream(url, _Hashed(out, digest), dest, progress)
        if md5 is not None and digest.hexdigest() != md5.lower():
            raise DataMissingError(
                f"downloaded {url} but its md5 is not {md5} (corrupted or changed upstream); "
                f"download it by hand and put it at {dest}"
            )

    atomic_write(dest, fetch)  # a failed or corrupt download leaves nothing behind
    return dest


class _Hashed:
    """A file being written that digests what goes through it (the md5 without a re-read)."""

    def __init__(self, out: BinaryIO, digest: Any):
        self.out, self.digest = out, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.out.write(data)


def _stream(url: str, out, dest: Path, progress: bool) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress_bar(
                f"downloading {dest.name}", total=total, unit="B", enabled=progress
            ) as bar:
                started = time.perf_counter()
                done = 0
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    out.write(chunk)
                    done += len(chunk)
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    bar.advance(len(chunk), MB_per_s=done / elapsed / 1e6)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataMissingError(
            f"could not download {url} ({reason}); download it by hand and put it at {dest}"
        ) from exc


def _archive_kind(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    raise UserError(f"{archive}: unsupported archive type (expected .zip, .tar, .tar.gz or .tgz)")


def _inside(root: Path, path: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def _resolve_member(root: Path, name: str, archive: Path) -> Path:
    """Where member ``name`` would land under ``root``; refuse anything that escapes it."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        raise UserError(f"{archive}: refusing archive member '{name}' with an absolute path")
    # The final path is resolved with os.path.realpath so that links already created by
    # earlier members (or directories that are links) cannot redirect a later member.
    target = Path(os.path.realpath(root / normalised))
    if not _inside(root, target):
        raise UserError(
            f"{archive}: refusing archive member '{name}' whose path escapes the target folder"
        )
    return target


def _check_tar_member(root: Path, member: tarfile.TarInfo, archive: Path) -> None:
    where = _resolve_member(root, member.name, archive)
    if member.issym():
        link = member.linkname
        if link.startswith("/") or not _inside(root, Path(os.path.realpath(where.parent / link))):
            raise UserError(
                f"{archive}: refusing symlink '{member.name}' -> '{link}' that points outside "
                "the target folder"
            )
    elif member.islnk():
        if not _inside(root, Path(os.path.realpath(root / member.linkname))):
            raise UserError(
                f"{archive}: refusing hard link '{member.name}' -> '{member.linkname}' that "
                "points outside the target folder"
            )
    elif not (member.isfile() or member.isdir()):
        raise UserError(
            f"{archive}: refusing archive member '{member.name}' of an unsupported type "
            "(device, fifo)"
        )


def _check_zip_member(root: Path, info: zipfile.ZipInfo, archive: Path) -> None:
    _resolve_member(root, info.filename, archive)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        # Zip symlinks are extracted by zipfile as plain files holding the link text, but
        # an archive that carries them is not what a dataset ships: refuse it outright.
        raise UserError(f"{archive}: refusing symlink member '{info.filename}' in a zip archive")


def _extract_members(
    archive: Path,
    root: Path,
    members: list[Any],
    check: Callable[[Path, Any, Path], None],
    extract: Callable[[Any], None],
    progress: bool,
) -> None:
    """Check every member before writing any, then extract them one by one."""
    for member in members:
        check(root, member, archive)
    with progress_bar(
        f"extracting {archive.name}", total=len(members), unit="file", enabled=progress
    ) as bar:
        for member in members:
            # Re-check at extraction time: an earlier member may have created a link.
            check(root, member, archive)
            extract(member)
            bar.advance(1)


def _extract_tar(archive: Path, root: Path, progress: bool) -> None:
    with tarfile.open(archive) as tar:

        def extract(member: tarfile.TarInfo) -> None:
            if _DATA_FILTER is not None:
                tar.extract(member, root, set_attrs=False, filter=_DATA_FILTER)
            else:  # Python < 3.11.4: our own checks are the only guard
                tar.extract(member, root, set_attrs=False)

        _extract_members(archive, root, tar.getmembers(), _check_tar_member, extract, progress)


def _extract_zip(archive: Path, root: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        _extract_members(
            archive,
            root,
            zf.infolist(),
            _check_zip_member,
            lambda info: zf.extract(info, root),
            progress,
        )


def safe_extract(
    archive: str | os.PathLike, target: str | os.PathLike, progress: bool = True
) -> Path:
    """Extract a .zip, .tar, .tar.gz or .tgz archive so that its contents appear in ``target``.

    Every member is checked first: absolute paths, ``..`` components and links pointing
    outside ``target`` are refused with ``UserError`` before anything is written. The
    archive is extracted into a temporary folder in ``target``'s parent and its top-level
    entries are then renamed into ``target``, so an interrupted extraction leaves nothing
    half-written at the final paths. Existing top-level entries are replaced.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise DataMissingError(f"archive {archive} does not exist")
    kind = _archive_kind(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract-", dir=target.parent))
    try:
        root = Path(os.path.realpath(staging))
        try:
            if kind == "zip":
                _extract_zip(archive, root, progress)
            else:
                _extract_tar(archive, root, progress)
        except _FILTER_ERRORS as exc:
            raise UserError(f"{archive}: refusing unsafe archive member ({exc})") from exc
        except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
            raise UserError(f"{archive}: not a readable archive ({exc})") from exc
        target.mkdir(parents=True, exist_ok=True)
        for entry in sorted(root.iterdir()):
            final = target / entry.name
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)
            elif final.exists() or final.is_symlink():
                final.unlink()
            os.replace(entry, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target

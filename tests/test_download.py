"""Downloads (md5, atomic rename, clear failures) and safe archive extraction."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from jigsawkit.data import download
from jigsawkit.data.download import check_md5, download_url, safe_extract
from jigsawkit.errors import DataMissingError, UserError


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- md5 and download -----------------------------------------------------------------


def test_check_md5(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello")
    assert check_md5(path, _md5(b"hello"))
    assert check_md5(path, None)
    assert not check_md5(path, _md5(b"other"))
    assert not check_md5(tmp_path / "missing", None)


def test_download_streams_checks_md5_and_renames(tmp_path):
    source = tmp_path / "server" / "archive.bin"
    source.parent.mkdir()
    payload = os.urandom(3 * download.CHUNK_BYTES + 17)
    source.write_bytes(payload)
    dest = tmp_path / "data" / "archive.bin"
    out = download_url(source.as_uri(), dest, md5=_md5(payload), progress=False)
    assert out == dest and dest.read_bytes() == payload
    assert _leftovers(dest.parent) == []


def test_download_with_wrong_md5_leaves_nothing(tmp_path):
    source = tmp_path / "archive.bin"
    source.write_bytes(b"corrupted")
    dest = tmp_path / "data" / "archive.bin"
    with pytest.raises(DataMissingError, match="md5"):
        download_url(source.as_uri(), dest, md5=_md5(b"expected"), progress=False)
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_download_failure_names_url_and_destination(tmp_path):
    url = (tmp_path / "nowhere" / "file.zip").as_uri()
    dest = tmp_path / "data" / "file.zip"
    with pytest.raises(DataMissingError) as info:
        download_url(url, dest, progress=False)
    message = str(info.value)
    assert url in message and str(dest) in message and "\n" not in message
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_download_keeps_a_good_existing_file(tmp_path, monkeypatch):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"already here")
    monkeypatch.setattr(download.urllib.request, "urlopen", lambda *a, **k: pytest.fail("fetched"))
    assert download_url("http://example.invalid/file.bin", dest, md5=_md5(b"already here"))


# -- safe extraction ------------------------------------------------------------------


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")])
def test_extract_tar_variants(tmp_path, suffix, mode):
    archive = _tar(
        tmp_path / f"a{suffix}",
        [("top/a.txt", b"A"), ("top/sub/b.txt", b"B"), _link("top/link", "a.txt")],
        mode,
    )
    target = tmp_path / "out"
    safe_extract(archive, target, progress=False)
    assert (target / "top" / "a.txt").read_bytes() == b"A"
    assert (target / "top" / "sub" / "b.txt").read_bytes() == b"B"
    assert (target / "top" / "link").read_bytes() == b"A"  # a link inside is fine
    assert _leftovers(tmp_path) == []


def test_extract_zip_replaces_existing_entry(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("top/a.txt", "new")
        zf.writestr("top/dir/", "")
    target = tmp_path / "out"
    (target / "top").mkdir(parents=True)
    (target / "top" / "stale.txt").write_text("old")
    (target / "keep.txt").write_text("untouched")
    safe_extract(archive, target, progress=False)
    assert (target / "top" / "a.txt").read_text() == "new"
    assert (target / "top" / "dir").is_dir()
    assert not (target / "top" / "stale.txt").exists()
    assert (target / "keep.txt").read_text() == "untouched"


@pytest.mark.parametrize(
    "members",
    [
        [("ok.txt", b"x"), ("../evil.txt", b"evil")],
        [("ok.txt", b"x"), ("top/../../evil.txt", b"evil")],
        [("/ABSOLUTE/evil.txt", b"evil")],
        [_link("top/escape", "../../evil.txt")],
        [_link("top/escape", "/etc/passwd")],
        [_link("top/hard", "../evil.txt", hard=True)],
        # A link to a folder outside, then a file written through it.
        [_link("top/dir", "../.."), ("top/dir/evil.txt", b"evil")],
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "symlink-abs", "hardlink", "via-link"],
)
def test_extract_refuses_members_escaping_the_target(tmp_path, members):
    work = tmp_path / "work"
    work.mkdir()
    absolute = str(tmp_path / "abs")
    members = [
        (m[0].replace("/ABSOLUTE", absolute), m[1]) if isinstance(m, tuple) else m for m in members
    ]
    archive = _tar(tmp_path / "evil.tar", members)
    target = work / "out"
    with pytest.raises(UserError, match="refusing"):
        safe_extract(archive, target, progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (work / "evil.txt").exists()
    assert not (tmp_path / "abs").exists()
    assert not target.exists()  # nothing was written at the final path
    assert _leftovers(work) == []


def test_extract_refuses_zip_with_dotdot_absolute_or_symlink(tmp_path):
    for name, data, is_link in [
        ("../evil.txt", b"evil", False),
        (str(tmp_path / "abs.txt"), b"evil", False),
        ("top/link", b"../../evil.txt", True),
    ]:
        archive = tmp_path / "evil.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            info = zipfile.ZipInfo(name)
            if is_link:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, data)
        with pytest.raises(UserError, match="refusing"):
            safe_extract(archive, tmp_path / "out", progress=False)
        assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "abs.txt").exists()
        assert not (tmp_path / "out").exists()


def test_interrupted_extraction_leaves_nothing_at_the_final_path(tmp_path, monkeypatch):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(5):
            zf.writestr(f"top/{i}.txt", str(i))
    real_extract = zipfile.ZipFile.extract
    calls = []

    def flaky(self, member, path=None, pwd=None):
        calls.append(member)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_extract(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", flaky)
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        safe_extract(archive, target, progress=False)
    assert not target.exists() and _leftovers(tmp_path) == []
    monkeypatch.setattr(zipfile.ZipFile, "extract", real_extract)
    safe_extract(archive, target, progress=False)
    assert sorted(p.name for p in (target / "top").iterdir()) == [f"{i}.txt" for i in range(5)]


def test_extract_rejects_unknown_or_broken_archives(tmp_path):
    other = tmp_path / "a.rar"
    other.write_bytes(b"x")
    with pytest.raises(UserError, match="unsupported archive"):
        safe_extract(other, tmp_path / "out", progress=False)
    broken = tmp_path / "b.zip"
    broken.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable archive"):
        safe_extract(broken, tmp_path / "out", progress=False)
    with pytest.raises(DataMissingError):
        safe_extract(tmp_path / "missing.zip", tmp_path / "out", progress=False)

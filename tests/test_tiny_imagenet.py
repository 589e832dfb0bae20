"""tiny_imagenet: the official zip layout, val labels from val_annotations.txt, safe unzip."""

from __future__ import annotations

import io
import shutil
import stat
import zipfile

import numpy as np
import pytest
from PIL import Image

import jigsawkit.data.tiny_imagenet as tiny
from jigsawkit.data import download
from jigsawkit.errors import DataMissingError, UserError
from jigsawkit.registry import registry

WNIDS = ["n02124075", "n01443537", "n09193705"]  # deliberately not in sorted order
NAMES = {"n01443537": "goldfish", "n02124075": "Egyptian cat", "n09193705": "alp"}
PER_CLASS = 10
VAL_CLASSES = [2, 0, 1, 1, 2, 0, 0, 2, 1]  # index into sorted(WNIDS), per val image


def _red(label: int) -> int:
    return 30 + 90 * label  # the red channel encodes the class; far apart survives JPEG


def _jpeg(label: int, index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (_red(label), 20 * (index % 12), 50)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _make_zip(path) -> None:
    """A small zip in the exact layout of tiny-imagenet-200.zip."""
    top = "tiny-imagenet-200/"
    sorted_ids = sorted(WNIDS)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(top, "")
        zf.writestr(top + "wnids.txt", "\n".join(WNIDS) + "\n")
        words = [f"{w}\t{NAMES[w]}, other name" for w in WNIDS] + ["n00000001\tunused"]
        zf.writestr(top + "words.txt", "\n".join(words) + "\n")
        for wnid in WNIDS:
            label = sorted_ids.index(wnid)
            boxes = []
            for i in range(PER_CLASS):
                name = f"{wnid}_{i}.JPEG"
                zf.writestr(f"{top}train/{wnid}/images/{name}", _jpeg(label, i))
                boxes.append(f"{name}\t0\t0\t63\t63")
            zf.writestr(f"{top}train/{wnid}/{wnid}_boxes.txt", "\n".join(boxes) + "\n")
        annotations = []
        for i, label in enumerate(VAL_CLASSES):
            zf.writestr(f"{top}val/images/val_{i}.JPEG", _jpeg(label, i))
            annotations.append(f"val_{i}.JPEG\t{sorted_ids[label]}\t1\t2\t40\t50")
        zf.writestr(top + "val/val_annotations.txt", "\n".join(annotations) + "\n")
        zf.writestr(top + "test/images/test_0.JPEG", _jpeg(0, 0))


@pytest.fixture
def served_zip(tmp_path, monkeypatch):
    """``download_url`` copies a locally built zip instead of fetching the URL."""
    archive = tmp_path / "server" / tiny.ARCHIVE
    archive.parent.mkdir()
    _make_zip(archive)
    calls = []

    def fake_download(url, dest, md5=None, progress=True):
        assert url == tiny.URL and md5 == tiny.MD5
        calls.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(archive, dest)
        return dest

    monkeypatch.setattr(download, "download_url", fake_download)
    return calls


def _build(root, **params):
    return registry("dataset").build("tiny_imagenet", root=str(root), **params)


def test_download_extracts_and_every_val_image_gets_its_annotated_class(tmp_path, served_zip):
    ds = _build(tmp_path / "data", download=True)
    assert ds.has_labels and ds.num_classes == 200
    test = ds.load("test", 32, tmp_path / "cache")
    assert served_zip == [tiny.URL]
    assert (tmp_path / "data" / "tiny-imagenet-200" / "wnids.txt").is_file()
    assert len(test) == len(VAL_CLASSES) and test.labels.tolist() == VAL_CLASSES
    red = test.images[:, 16, 16, 0].astype(int)
    assert np.all(np.abs(red - [_red(k) for k in test.labels]) <= 6)
    assert ds.class_names == ["goldfish", "Egyptian cat", "alp"]  # sorted wnids


def test_train_and_val_come_from_the_official_train_split(tmp_path, served_zip):
    ds = _build(tmp_path / "data", download=True, val_fraction=0.2, seed=3)
    train = ds.load("train", 16, tmp_path / "cache")
    val = ds.load("val", 16, tmp_path / "cache")
    assert np.bincount(val.labels).tolist() == [2, 2, 2]  # stratified: 20% of each class
    assert np.bincount(train.labels).tolist() == [8, 8, 8]
    for split in (train, val):
        red = split.images[:, 8, 8, 0].astype(int)
        assert np.all(np.abs(red - [_red(k) for k in split.labels]) <= 6)
    # Disjoint: (class, index) pairs from the green channel never repeat.
    pairs = {
        (int(k), int(g))
        for split in (train, val)
        for k, g in zip(split.labels, np.round(split.images[:, 8, 8, 1] / 20))
    }
    assert len(pairs) == 3 * PER_CLASS
    other = _build(tmp_path / "data", val_fraction=0.2, seed=4).load("val", 16, tmp_path / "c2")
    assert not np.array_equal(np.asarray(other.images), np.asarray(val.images))


def test_an_existing_folder_is_used_without_downloading(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _make_zip(tmp_path / "local.zip")
    download.safe_extract(tmp_path / "local.zip", root, progress=False)
    monkeypatch.setattr(download, "download_url", lambda *a, **k: pytest.fail("downloaded"))
    assert len(_build(root, download=True).load("test", 8, tmp_path / "cache")) == 9


def test_a_zip_placed_by_hand_is_checked_and_extracted(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    _make_zip(root / tiny.ARCHIVE)
    with pytest.raises(DataMissingError, match="not the official archive"):
        _build(root).load("test", 8, tmp_path / "cache")
    monkeypatch.setattr(tiny, "MD5", download.file_md5(root / tiny.ARCHIVE))
    assert len(_build(root).load("test", 8, tmp_path / "cache")) == 9


def test_missing_data_says_what_to_download(tmp_path):
    with pytest.raises(DataMissingError) as info:
        _build(tmp_path / "data").load("train", 8, tmp_path / "cache")
    message = str(info.value)
    assert tiny.URL in message and str(tmp_path / "data") in message and "download: true" in message
    assert _build(tmp_path / "data").class_names is None
    with pytest.raises(UserError, match="val_fraction"):
        _build(tmp_path / "data", val_fraction=1.5)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_extraction_refuses_members_escaping_the_target(tmp_path, monkeypatch, kind):
    root = tmp_path / "data"
    root.mkdir()
    archive = root / tiny.ARCHIVE
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "n01443537\n")
        if kind == "dotdot":
            zf.writestr("../evil.txt", "evil")
        elif kind == "absolute":
            zf.writestr(str(tmp_path / "evil.txt"), "evil")
        else:
            info = zipfile.ZipInfo("tiny-imagenet-200/link")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "../../evil.txt")
    monkeypatch.setattr(tiny, "MD5", download.file_md5(archive))
    with pytest.raises(UserError, match="refusing"):
        _build(root).load("test", 8, tmp_path / "cache")
    assert not (tmp_path / "evil.txt").exists()
    assert not (root / "tiny-imagenet-200").exists()  # nothing half-extracted
    assert sorted(p.name for p in root.iterdir()) == [tiny.ARCHIVE]

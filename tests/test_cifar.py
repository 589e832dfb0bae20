"""cifar10/cifar100 through torchvision, on fake batch files in the real pickle layout.

torchvision checks each batch file's md5 before unpickling it; the tests point its md5
table at the fake files, so that check still runs (and a corrupted file still fails).
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import tarfile

import numpy as np
import pytest
from torchvision.datasets import CIFAR10, CIFAR100

from jigsawkit.data import download
from jigsawkit.errors import DataMissingError
from jigsawkit.registry import registry


def _batch(labels: list[int], start: int, key: str) -> dict:
    """Rows of 3072 bytes (R plane, G plane, B plane): R encodes the label, G the index."""
    data = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
    data[:, 0] = (np.array(labels) * 20 + 5)[:, None, None]
    data[:, 1] = (np.arange(start, start + len(labels)) % 256)[:, None, None]
    return {"data": data.reshape(len(labels), 3072), key: labels, "batch_label": "fake"}


def _write(path, obj) -> str:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar10_root(tmp_path, monkeypatch):
    folder = tmp_path / "data" / CIFAR10.base_folder
    folder.mkdir(parents=True)
    train_list = []
    for b in range(5):  # 5 batches x 20 images: 10 per class overall
        labels = [(b * 20 + i) % 10 for i in range(20)]
        name = f"data_batch_{b + 1}"
        train_list.append([name, _write(folder / name, _batch(labels, b * 20, "labels"))])
    test_md5 = _write(folder / "test_batch", _batch([i % 10 for i in range(10)], 100, "labels"))
    names = [f"class{i}" for i in range(10)]
    meta_md5 = _write(folder / "batches.meta", {"label_names": names})
    monkeypatch.setattr(CIFAR10, "train_list", train_list)
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", test_md5]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": meta_md5})
    return tmp_path / "data"


def _check_pixels(split):
    red = split.images[:, 16, 16, 0].astype(int)
    assert red.tolist() == (split.labels * 20 + 5).tolist()


def test_cifar10_splits(cifar10_root, tmp_path):
    ds = registry("dataset").build("cifar10", root=str(cifar10_root), val_fraction=0.2)
    assert ds.has_labels and ds.num_classes == 10
    splits = {s: ds.load(s, 32, tmp_path / "cache") for s in ("train", "val", "test")}
    assert [len(s) for s in splits.values()] == [80, 20, 10]
    assert np.bincount(splits["val"].labels).tolist() == [2] * 10  # stratified
    assert splits["test"].labels.tolist() == [i % 10 for i in range(10)]
    for split in splits.values():
        _check_pixels(split)
        assert split.class_names == [f"class{i}" for i in range(10)]
    # train and val are disjoint parts of the official train split (green = index)
    green = [int(g) for s in ("train", "val") for g in splits[s].images[:, 0, 0, 1]]
    assert sorted(green) == list(range(100))
    assert ds.class_names[3] == "class3"
    resized = ds.load("test", 16, tmp_path / "cache")
    assert resized.images.shape == (10, 16, 16, 3)


def test_cached_split_is_read_without_torchvision(cifar10_root, tmp_path, monkeypatch):
    ds = registry("dataset").build("cifar10", root=str(cifar10_root))
    first = ds.load("test", 32, tmp_path / "cache")
    monkeypatch.setattr(CIFAR10, "__init__", lambda *a, **k: pytest.fail("re-read the pickles"))
    again = registry("dataset").build("cifar10", root=str(cifar10_root))
    assert np.array_equal(again.load("test", 32, tmp_path / "cache").labels, first.labels)


def test_corrupted_or_missing_batches(cifar10_root, tmp_path):
    (cifar10_root / CIFAR10.base_folder / "data_batch_3").write_bytes(b"corrupted")
    ds = registry("dataset").build("cifar10", root=str(cifar10_root))
    with pytest.raises(DataMissingError, match="missing or corrupted"):
        ds.load("train", 32, tmp_path / "cache")
    empty = registry("dataset").build("cifar10", root=str(tmp_path / "nothing"))
    with pytest.raises(DataMissingError) as info:
        empty.load("test", 32, tmp_path / "cache")
    assert CIFAR10.url in str(info.value) and "download: true" in str(info.value)
    assert empty.class_names is None


def test_download_uses_the_safe_path(cifar10_root, tmp_path, monkeypatch):
    archive = tmp_path / "server" / CIFAR10.filename
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar10_root / CIFAR10.base_folder, arcname=CIFAR10.base_folder)
    calls = []

    def fake_download(url, dest, md5=None, progress=True):
        assert (url, md5) == (CIFAR10.url, CIFAR10.tgz_md5)
        calls.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(archive, dest)
        return dest

    monkeypatch.setattr(download, "download_url", fake_download)
    root = tmp_path / "fresh"
    ds = registry("dataset").build("cifar10", root=str(root), download=True)
    assert len(ds.load("test", 32, tmp_path / "cache")) == 10 and calls == [CIFAR10.url]
    assert (root / CIFAR10.base_folder / "test_batch").is_file()


def test_cifar100(tmp_path, monkeypatch):
    folder = tmp_path / "data" / CIFAR100.base_folder
    folder.mkdir(parents=True)
    train_md5 = _write(folder / "train", _batch([i % 100 for i in range(200)], 0, "fine_labels"))
    test_md5 = _write(folder / "test", _batch([i % 100 for i in range(100)], 0, "fine_labels"))
    meta_md5 = _write(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    monkeypatch.setattr(CIFAR100, "train_list", [["train", train_md5]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", test_md5]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": meta_md5})
    ds = registry("dataset").build("cifar100", root=str(tmp_path / "data"), val_fraction=0.5)
    assert ds.num_classes == 100
    val = ds.load("val", 32, tmp_path / "cache")
    assert len(val) == 100 and np.bincount(val.labels).tolist() == [1] * 100
    assert val.class_names[42] == "c42" and val.images.shape == (100, 32, 32, 3)

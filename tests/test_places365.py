"""places365: torchvision's on-disk layout, seeded 70/15/15 splits, clear missing-data errors."""

from __future__ import annotations

import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

import jigsawkit.data.places365 as places365
from jigsawkit.data import download
from jigsawkit.errors import DataMissingError, UserError
from jigsawkit.registry import registry

LABELS = [3, 60, 120, 180, 250]  # the red channel of each image encodes its label


def _devkit_files(folder, val_labels):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"/{chr(97 + i % 26)}/class{i:03d} {i}" for i in range(365)]
    lines[3] = "/a/apartment_building/outdoor 3"
    (folder / "categories_places365.txt").write_text("\n".join(lines) + "\n")
    (folder / "places365_val.txt").write_text(
        "".join(f"Places365_val_{i + 1:08d}.jpg {label}\n" for i, label in enumerate(val_labels))
    )
    (folder / "places365_train_standard.txt").write_text("/a/class000/00000001.jpg 0\n")
    (folder / "places365_test.txt").write_text(
        "".join(f"Places365_test_{i + 1:08d}.jpg\n" for i in range(4))
    )


def _val_images(folder, val_labels, broken=()):
    folder.mkdir(parents=True, exist_ok=True)
    for i, label in enumerate(val_labels):
        path = folder / f"Places365_val_{i + 1:08d}.jpg"
        if i in broken:
            path.write_bytes(b"\xff\xd8 truncated jpeg")
        else:
            Image.new("RGB", (40, 30), (label, 128, 64)).save(path, format="JPEG", quality=95)


def _labels(n):
    return [LABELS[i % len(LABELS)] for i in range(n)]


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "data"
    labels = _labels(20)
    _devkit_files(root, labels)
    _val_images(root / "val_256", labels, broken={5})
    return root


def test_val_split_in_torchvision_layout(root, tmp_path):
    ds = registry("dataset").build("places365", root=str(root))
    assert ds.has_labels and ds.num_classes == 365
    assert ds.class_names[3] == "apartment_building/outdoor" and ds.class_names[7] == "class007"
    splits = {s: ds.load(s, 16, tmp_path / "cache") for s in ("train", "val", "test")}
    assert [len(s) + s.skipped for s in splits.values()] == [14, 3, 3]  # 70/15/15 of 20
    assert sum(s.skipped for s in splits.values()) == 1
    for split in splits.values():
        red = split.images[:, 8, 8, 0].astype(int)
        assert np.all(np.abs(red - split.labels) <= 6), (red, split.labels)
        assert split.class_names[3] == "apartment_building/outdoor"


def test_splits_depend_on_the_seed(root, tmp_path):
    def train_labels(seed):
        ds = registry("dataset").build("places365", root=str(root), seed=seed)
        return ds.load("train", 8, tmp_path / "cache").labels.tolist()

    assert train_labels(0) == train_labels(0)
    assert any(train_labels(0) != train_labels(s) for s in (1, 2, 3))


def test_official_test_split_has_no_labels(root, tmp_path):
    _val_images(root / "test_256", [10] * 4)
    for i in range(4):
        (root / "test_256" / f"Places365_val_{i + 1:08d}.jpg").rename(
            root / "test_256" / f"Places365_test_{i + 1:08d}.jpg"
        )
    ds = registry("dataset").build("places365", root=str(root), split="test", splits=[1, 0, 0])
    assert not ds.has_labels and ds.num_classes is None and ds.class_names is None
    train = ds.load("train", 8, tmp_path / "cache")
    assert len(train) == 4 and train.labels is None


def test_missing_data_names_the_files_and_urls(tmp_path):
    ds = registry("dataset").build("places365", root=str(tmp_path / "data"))
    with pytest.raises(DataMissingError) as info:
        ds.load("train", 8, tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message and "download: true" in message
    assert places365.BASE_URL + "filelist_places365-standard.tar" in message
    assert places365.BASE_URL + "val_256.tar" in message
    assert str(tmp_path / "data") in message


def test_download_fetches_checks_and_extracts_the_archives(tmp_path, monkeypatch):
    server = tmp_path / "server"
    labels = _labels(10)
    _devkit_files(server / "devkit", labels)
    _val_images(server / "images" / "val_256", labels)
    with tarfile.open(server / "filelist_places365-standard.tar", "w") as tar:
        for path in sorted((server / "devkit").iterdir()):
            tar.add(path, arcname=path.name)
    with tarfile.open(server / "val_256.tar", "w") as tar:
        tar.add(server / "images" / "val_256", arcname="val_256")
    fetched = []

    def fake_download(url, dest, md5=None, progress=True):
        name = url.rsplit("/", 1)[1]
        assert url == places365.BASE_URL + name
        known = dict(places365.DEVKIT_META.values()) | dict(places365.IMAGES_META.values())
        assert md5 == known[name]
        fetched.append(name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(server / name, dest)
        return dest

    monkeypatch.setattr(download, "download_url", fake_download)
    root = tmp_path / "data"
    ds = registry("dataset").build("places365", root=str(root), download=True)
    train = ds.load("train", 8, tmp_path / "cache")
    assert fetched == ["filelist_places365-standard.tar", "val_256.tar"]
    assert (root / "val_256" / "Places365_val_00000001.jpg").is_file()
    assert len(train) == 7 and np.all(np.abs(train.images[:, 4, 4, 0] - train.labels) <= 6)
    # Everything is on disk now: nothing is fetched again.
    registry("dataset").build("places365", root=str(root), download=True).load(
        "val", 8, tmp_path / "cache"
    )
    assert len(fetched) == 2


def test_urls_and_md5s_are_torchvision_s():
    from torchvision.datasets import Places365

    assert places365.BASE_URL == Places365._BASE_URL
    assert places365.DEVKIT_META == Places365._DEVKIT_META
    assert places365.IMAGES_META == Places365._IMAGES_META
    assert places365.FILE_LISTS == {k: v[0] for k, v in Places365._FILE_LIST_META.items()}
    assert places365.CATEGORIES_FILE == Places365._CATEGORIES_META[0]
    for split in places365.OFFICIAL_SPLITS:
        for small in (True, False):
            tv = Places365.__new__(Places365)
            tv.root, tv.split, tv.small = "r", split, small
            assert tv.images_dir == "r/" + places365.images_dir_name(split, small)


def test_bad_parameters(tmp_path):
    with pytest.raises(
        UserError, match="dataset 'places365': split: expected one of .* found 'train'"
    ):
        registry("dataset").build("places365", split="train")
    with pytest.raises(UserError, match="sum to 1"):
        registry("dataset").build("places365", splits=[0.7, 0.2, 0.2])
    root = tmp_path / "data"
    _devkit_files(root, [1, 2])
    (root / "val_256").mkdir()
    (root / "places365_val.txt").write_text("Places365_val_00000001.jpg 999\n")
    ds = registry("dataset").build("places365", root=str(root))
    with pytest.raises(UserError, match="places365_val.txt:1: label 999"):
        ds.load("train", 8, tmp_path / "cache")

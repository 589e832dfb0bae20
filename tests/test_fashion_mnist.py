"""fashion_mnist on tiny IDX files built here, in the real layout (gzip and raw).

The real files (Debian's ``dataset-fashion-mnist``) are used by one test when present.
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jigsawkit.data import fashion_mnist
from jigsawkit.errors import DataMissingError, UserError
from jigsawkit.registry import registry

TRAIN_PER_CLASS, TEST_PER_CLASS = 4, 1


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) as an IDX file: magic 0x0000 08 <ndim>, big-endian dims, data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def fake_set(per_class: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose pixel (0, 0) is the label * 20 and pixel (0, 1) the image's index."""
    labels = np.tile(np.arange(10, dtype=np.uint8), per_class)
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    images[:, 0, 0] = labels * 20
    images[:, 0, 1] = np.arange(len(labels)) + offset
    images[:, 10:18, 10:18] = 200  # an "object" on black
    return images, labels


def write_files(folder: Path, compress: bool = True) -> dict[str, bytes]:
    """The four files in ``folder`` (``.gz`` or raw); returns name -> bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    train, test = fake_set(TRAIN_PER_CLASS, 0), fake_set(TEST_PER_CLASS, 100)
    contents = {}
    for (images_stem, labels_stem), (images, labels) in zip(
        fashion_mnist.FILES.values(), (train, test), strict=True
    ):
        for stem, array in ((images_stem, images), (labels_stem, labels)):
            data = idx_bytes(array)
            name = f"{stem}.gz" if compress else stem
            data = gzip.compress(data) if compress else data
            (folder / name).write_bytes(data)
            contents[name] = data
    return contents


def build(root: Path, **params):
    return registry("dataset").build("fashion_mnist", root=str(root), **params)


@pytest.mark.parametrize("compress", [True, False])
def test_splits_labels_and_pixels(tmp_path, compress):
    write_files(tmp_path / "fm", compress=compress)
    ds = build(tmp_path / "fm", val_fraction=0.25, seed=3)
    assert ds.has_labels and ds.num_classes == 10
    splits = {s: ds.load(s, 28, tmp_path / "cache") for s in ("train", "val", "test")}
    assert [len(s) for s in splits.values()] == [30, 10, 10]
    assert np.bincount(splits["val"].labels).tolist() == [1] * 10  # stratified
    for split in splits.values():
        image = split.images
        assert image.shape[1:] == (28, 28, 3)
        # three identical channels; pixel (0, 0) carries the label
        assert np.array_equal(image[..., 0], image[..., 1])
        assert np.array_equal(image[..., 0], image[..., 2])
        assert image[:, 0, 0, 0].tolist() == (split.labels * 20).tolist()
        assert split.class_names[0] == "T-shirt/top"
    # train and val are disjoint and together the official train set; test is t10k
    seen = sorted(int(i) for s in ("train", "val") for i in splits[s].images[:, 0, 1, 0])
    assert seen == list(range(40))
    assert sorted(splits["test"].images[:, 0, 1, 0].tolist()) == list(range(100, 110))
    assert (
        build(tmp_path / "fm", val_fraction=0.25, seed=4)
        .load("val", 28, tmp_path / "cache")
        .images[:, 0, 1, 0]
        .tolist()
        != splits["val"].images[:, 0, 1, 0].tolist()
    )


def test_resized_to_the_requested_size(tmp_path):
    write_files(tmp_path / "fm")
    test = build(tmp_path / "fm").load("test", 64, tmp_path / "cache")
    assert test.images.shape == (10, 64, 64, 3)
    assert test.images[:, 32, 32, 0].tolist() == [200] * 10  # the object, upsampled


def test_torchvision_layout_is_found(tmp_path):
    write_files(tmp_path / "data" / "FashionMNIST" / "raw")
    assert len(build(tmp_path / "data").load("test", 28, tmp_path / "cache")) == 10


def test_class_names_are_torchvisions():
    from torchvision.datasets import FashionMNIST

    assert fashion_mnist.CLASS_NAMES == list(FashionMNIST.classes)


def test_default_root_is_the_debian_package_folder():
    ds = registry("dataset").build("fashion_mnist")
    assert str(ds.root) == "/usr/share/datasets/fashion-mnist"


def test_missing_files_name_the_package_folder_and_files(tmp_path):
    write_files(tmp_path / "fm")
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataMissingError) as info:
        build(tmp_path / "fm").ensure_present()
    message = str(info.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path / "fm") in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "train-images" not in message  # only what is missing


@pytest.mark.parametrize(
    ("name", "damage", "expected"),
    [
        ("train-images-idx3-ubyte.gz", lambda b: gzip.compress(b"\0\0\x08\x01" + b[4:]), "magic"),
        ("t10k-labels-idx1-ubyte.gz", lambda b: gzip.compress(b[:-3]), "truncated"),
        ("t10k-images-idx3-ubyte.gz", lambda b: b[:40], "cannot read"),  # cut-off gzip
        ("train-labels-idx1-ubyte.gz", lambda b: gzip.compress(b"\0\0\x08"), "truncated"),
    ],
)
def test_corrupt_files_are_named(tmp_path, name, damage, expected):
    contents = write_files(tmp_path / "fm")
    raw = gzip.decompress(contents[name])
    (tmp_path / "fm" / name).write_bytes(
        damage(contents[name] if expected == "cannot read" else raw)
    )
    ds = build(tmp_path / "fm")
    split = "test" if name.startswith("t10k") else "train"
    with pytest.raises(UserError, match=expected) as info:
        ds.load(split, 28, tmp_path / "cache")
    assert str(tmp_path / "fm" / name) in str(info.value) and "\n" not in str(info.value)


def test_image_and_label_counts_must_agree(tmp_path):
    write_files(tmp_path / "fm")
    images, _ = fake_set(TEST_PER_CLASS, 100)
    (tmp_path / "fm" / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(images[:7]))
    )
    with pytest.raises(UserError, match="holds 7 images but .* holds 10 labels"):
        build(tmp_path / "fm").load("test", 28, tmp_path / "cache")


def test_download_fetches_the_missing_files_md5_checked(tmp_path, monkeypatch):
    """``download: true`` fetches from torchvision's mirrors (a dead one is skipped) with
    torchvision's md5 list; served here from file:// URLs, md5s pointed at the fakes."""
    from torchvision.datasets import FashionMNIST

    served = write_files(tmp_path / "server")
    md5s = [(name, hashlib.md5(data).hexdigest()) for name, data in served.items()]
    monkeypatch.setattr(FashionMNIST, "resources", md5s)
    dead = (tmp_path / "gone").as_uri() + "/"
    monkeypatch.setattr(FashionMNIST, "mirrors", [dead, (tmp_path / "server").as_uri() + "/"])
    root = tmp_path / "fresh"
    write_files(root)
    (root / "train-labels-idx1-ubyte.gz").unlink()
    ds = build(root, download=True)
    ds.ensure_present()
    assert (root / "train-labels-idx1-ubyte.gz").read_bytes() == served[
        "train-labels-idx1-ubyte.gz"
    ]
    # a served file whose md5 is not torchvision's is refused, not used
    (tmp_path / "server" / "t10k-images-idx3-ubyte.gz").write_bytes(b"tampered")
    (root / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataMissingError, match="md5"):
        build(root, download=True).ensure_present()
    assert not (root / "t10k-images-idx3-ubyte.gz").exists()


def test_cli_exit_2_and_one_line_when_missing(tmp_path):
    experiment = Path(__file__).parents[1] / "experiments" / "fashion_mnist.yaml"
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jigsawkit",
            "run",
            str(experiment),
            "--out",
            str(out),
            "--set",
            f"pretrain.data.root={tmp_path / 'nowhere'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "apt-get install dataset-fashion-mnist" in lines[0], lines
    assert lines[0].startswith("error: pretrain.data: fashion_mnist:")
    assert not out.exists()


REAL = Path(fashion_mnist.DEBIAN_ROOT)


@pytest.mark.skipif(
    not (REAL / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"the real files are not installed ({REAL}; apt-get install dataset-fashion-mnist)",
)
def test_real_files(tmp_path):
    ds = registry("dataset").build("fashion_mnist")
    images, labels = ds.read("test")
    assert images.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10
    val = ds.load("val", 28, tmp_path / "cache")
    assert len(val) == 6000 and np.bincount(val.labels).tolist() == [600] * 10
    assert val.images.mean() > 20  # photos, not an empty array


def test_cached_splits_are_reused_where_their_pixels_are_the_same(tmp_path, monkeypatch):
    """t10k does not depend on the seed, val not on max_train_images: one cache entry each."""
    write_files(tmp_path / "fm")
    build(tmp_path / "fm", seed=0).load("test", 28, tmp_path / "cache")
    build(tmp_path / "fm", seed=0, val_fraction=0.25).load("val", 28, tmp_path / "cache")
    monkeypatch.setattr(
        fashion_mnist.FashionMnistDataset, "read", lambda *a: pytest.fail("re-read the files")
    )
    assert len(build(tmp_path / "fm", seed=5).load("test", 28, tmp_path / "cache")) == 10
    limited = build(tmp_path / "fm", seed=0, val_fraction=0.25, max_train_images=20)
    assert len(limited.load("val", 28, tmp_path / "cache")) == 10


def test_max_train_images_keeps_a_stratified_subset_and_the_same_val(tmp_path):
    write_files(tmp_path / "fm")
    full = build(tmp_path / "fm", val_fraction=0.25)
    limited = build(tmp_path / "fm", val_fraction=0.25, max_train_images=20)
    train = limited.load("train", 28, tmp_path / "cache")
    assert len(train) == 20 and np.bincount(train.labels).tolist() == [2] * 10
    full_train = full.load("train", 28, tmp_path / "cache").images[:, 0, 1, 0].tolist()
    assert set(train.images[:, 0, 1, 0].tolist()) <= set(full_train)
    assert np.array_equal(
        limited.load("val", 28, tmp_path / "cache").images,
        full.load("val", 28, tmp_path / "cache").images,
    )
    with pytest.raises(UserError, match="max_train_images"):
        build(tmp_path / "fm", max_train_images=0)

"""image_folder: classes from sub-folders, seeded splits, unreadable images skipped."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jigsawkit.data.splits import split_indices
from jigsawkit.errors import DataMissingError, UserError
from jigsawkit.registry import registry

RED = {"cat": 40, "dog": 200}


def _save(path, red: int, index: int, size=(20, 12)) -> None:
    """PNG whose red channel encodes the class and green channel the image index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (red, index, 0)).save(path, format="PNG")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "images"
    index = 0
    for name, count in (("cat", 6), ("dog", 5)):
        for i in range(count):
            sub = "nested/" if (name == "dog" and i % 2) else ""
            suffix = ".PNG" if i == 0 else ".png"
            _save(root / name / f"{sub}{i}{suffix}", RED[name], index)
            index += 1
    (root / "dog" / "broken.png").write_bytes(b"this is not an image")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"ignored")
    (root / "empty").mkdir()
    return root


def _load_all(ds, cache, size=8):
    return {split: ds.load(split, size, cache) for split in ("train", "val", "test")}


def test_labelled_folder(tree, tmp_path):
    ds = registry("dataset").build("image_folder", root=str(tree), splits=[0.5, 0.25, 0.25])
    assert ds.has_labels and ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    splits = _load_all(ds, tmp_path / "cache")
    assert sum(len(s) for s in splits.values()) == 11  # 6 cats + 5 dogs, broken skipped
    assert sum(s.skipped for s in splits.values()) == 1
    seen = []
    for split in splits.values():
        assert split.class_names == ["cat", "dog"] and split.images.shape[1:] == (8, 8, 3)
        red = split.images[:, 4, 4, 0].astype(int)
        assert [RED[ds.class_names[k]] for k in split.labels] == red.tolist()
        seen.extend(split.images[:, 4, 4, 1].tolist())
    assert sorted(seen) == list(range(11))  # the splits are disjoint and cover everything


def test_splits_are_seeded(tree, tmp_path):
    def members(seed):
        ds = registry("dataset").build("image_folder", root=str(tree), seed=seed)
        return sorted(ds.load("train", 8, tmp_path / "cache").images[:, 4, 4, 1].tolist())

    assert members(0) == members(0)
    assert any(members(0) != members(s) for s in (1, 2, 3))


def test_split_indices_rounding_and_checks():
    parts = split_indices(10, [0.7, 0.15, 0.15], seed=3)
    sizes = [len(parts[s]) for s in ("train", "val", "test")]
    assert sizes[0] == 7 and all(abs(n - f * 10) < 1 for n, f in zip(sizes, [0.7, 0.15, 0.15]))
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(10))
    again = split_indices(10, [0.7, 0.15, 0.15], seed=3)
    assert all(np.array_equal(parts[s], again[s]) for s in parts)
    with pytest.raises(UserError, match="sum to 1"):
        split_indices(10, [0.5, 0.2, 0.2], seed=0)


def test_unlabelled_folder_reads_every_image_recursively(tree, tmp_path):
    ds = registry("dataset").build(
        "image_folder", root=str(tree), labelled=False, splits=[1.0, 0.0, 0.0]
    )
    assert not ds.has_labels and ds.num_classes is None and ds.class_names is None
    train = ds.load("train", 8, tmp_path / "cache")
    assert train.labels is None and len(train) == 11 and train.skipped == 1
    assert len(ds.load("val", 8, tmp_path / "cache")) == 0


def test_non_square_images_are_centre_cropped(tmp_path):
    root = tmp_path / "wide" / "only"
    img = np.zeros((10, 30, 3), dtype=np.uint8)
    img[:, 10:20] = 255  # only the centre third is white
    root.mkdir(parents=True)
    Image.fromarray(img).save(root / "a.png")
    ds = registry("dataset").build("image_folder", root=str(tmp_path / "wide"), splits=[1, 0, 0])
    out = ds.load("train", 10, tmp_path / "cache").images[0]
    assert (out[:, 1:-1] == 255).all()


def test_missing_or_empty_root_and_bad_fractions(tmp_path):
    ds = registry("dataset").build("image_folder", root=str(tmp_path / "nope"))
    with pytest.raises(DataMissingError, match="does not exist"):
        ds.load("train", 8, tmp_path / "cache")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    ds = registry("dataset").build("image_folder", root=str(tmp_path / "empty"))
    with pytest.raises(DataMissingError, match="no images"):
        ds.load("train", 8, tmp_path / "cache")
    with pytest.raises(UserError, match="sum to 1"):
        registry("dataset").build("image_folder", root="x", splits=[0.5, 0.5, 0.5])
    entry = registry("dataset").get("image_folder")
    assert entry.check({"root": "x", "splits": [0.5, 0.5, 0.5]})[0][0] == "splits"
    assert entry.check({"root": "x", "splits": [0.8, 0.1, 0.1]}) == []

"""The datasets with an official train and test set share one ValFromTrain base: one check of
val_fraction (naming the dataset) and one way to carve val out of the official train set."""

from __future__ import annotations

import numpy as np
import pytest

from jigsawkit.data.cifar import CifarDataset
from jigsawkit.data.fashion_mnist import FashionMnistDataset
from jigsawkit.data.splits import ValFromTrain
from jigsawkit.data.tiny_imagenet import TinyImageNetDataset
from jigsawkit.errors import UserError

BUILDERS = {
    "cifar100": lambda **kw: CifarDataset("cifar100", **kw),
    "fashion_mnist": lambda **kw: FashionMnistDataset(max_train_images=None, **kw),
    "tiny_imagenet": lambda **kw: TinyImageNetDataset(**kw),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_val_fraction_out_of_range_names_the_dataset(name, tmp_path):
    for bad in (1.0, -0.1):
        with pytest.raises(UserError, match=rf"^{name}\.val_fraction: expected \[0, 1\), got"):
            BUILDERS[name](root=tmp_path, download=False, val_fraction=bad, seed=0)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_keywords_are_kept(name, tmp_path):
    dataset = BUILDERS[name](root=str(tmp_path), download=1, val_fraction="0.25", seed="3")
    assert isinstance(dataset, ValFromTrain)
    assert (dataset.root, dataset.download, dataset.val_fraction, dataset.seed) == (
        tmp_path,
        True,
        0.25,
        3,
    )


def test_carve_holds_out_a_stratified_seeded_val_and_keeps_the_rest_for_train(tmp_path):
    labels = np.repeat(np.arange(4), 20)
    dataset = ValFromTrain("demo", root=tmp_path, download=False, val_fraction=0.25, seed=5)
    val, train = dataset.carve("val", labels), dataset.carve("train", labels)
    assert sorted(np.concatenate([val, train]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[val]).tolist() == [5, 5, 5, 5]
    again = ValFromTrain("demo", root=tmp_path, download=False, val_fraction=0.25, seed=5)
    assert again.carve("val", labels).tolist() == val.tolist()

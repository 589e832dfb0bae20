"""Built-in data components (registration only: cheap to import).

Every dataset factory returns a cheap object following ``jigsawkit.contracts.Dataset``
(nothing is read or decoded until ``load`` is called; the optional ``ensure_present()``
lets a run refuse missing probe data in seconds, not after pretraining). The factories are
named ``build_<name>`` so that they do not shadow the submodules of the same name
(``jigsawkit.data.places365``).
"""

from __future__ import annotations

from jigsawkit.config import limits as L
from jigsawkit.registry import register_dataset

_SEED = L.seed_schema(0, description="seed of the split (or of the images)")
_ROOT = {"type": "string", "default": "data", "description": "folder holding the dataset"}
_DOWNLOAD = {
    "type": "boolean",
    "default": False,
    "description": "fetch the archive when it is not on disk (md5 checked, safe extraction)",
}
_VAL_FRACTION = {
    "type": "number",
    "minimum": 0,
    "exclusiveMaximum": 1,
    "default": 0.1,
    "description": "class-stratified fraction of the official train split used as val",
}


def _fractions(default: list[float]) -> dict:
    return {
        "type": "array",
        "items": {"type": "number", "minimum": 0, "maximum": 1},
        "minItems": 3,
        "maxItems": 3,
        "default": default,
        "description": "fractions [train, val, test] of the images, summing to 1",
    }


def _check_splits(params: dict) -> list[tuple[str, str]]:
    fractions = params.get("splits") or []
    if len(fractions) == 3 and abs(sum(fractions) - 1.0) > 1e-6:
        return [
            ("splits", f"fractions must sum to 1, got {list(fractions)} (sum {sum(fractions):.6g})")
        ]
    return []


register_dataset(
    "synthetic",
    schema={
        "properties": {
            "train_size": {
                "type": "integer",
                "minimum": 1,
                "maximum": L.IMAGES_MAX,
                "default": 5000,
            },
            "val_size": {"type": "integer", "minimum": 1, "maximum": L.IMAGES_MAX, "default": 1000},
            "test_size": {
                "type": "integer",
                "minimum": 1,
                "maximum": L.IMAGES_MAX,
                "default": 1000,
            },
            "image_size": {
                "type": "integer",
                "minimum": 8,
                "maximum": L.IMAGE_SIDE_MAX,
                "default": 96,
                "description": "side at which images are generated (resized to what the task asks)",
            },
            "seed": _SEED,
        }
    },
    description="Offline labelled shapes (10 classes) on random gradient + blob backgrounds.",
    target=".synthetic:SyntheticDataset",
)


register_dataset(
    "image_folder",
    schema={
        "properties": {
            "root": {"type": "string", "description": "folder of images"},
            "labelled": {
                "type": "boolean",
                "default": True,
                "description": "classes are the first-level sub-folders; false: all images, no labels",
            },
            "splits": _fractions([0.8, 0.1, 0.1]),
            "seed": _SEED,
            "extensions": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "default": [
                    ".jpg",
                    ".jpeg",
                    ".png",
                    ".bmp",
                    ".gif",
                    ".webp",
                    ".tif",
                    ".tiff",
                    ".ppm",
                ],
            },
        },
        "required": ["root"],
    },
    check=_check_splits,
    description="Any folder of images: one sub-folder per class, or unlabelled.",
    target=".image_folder:ImageFolderDataset",
)


register_dataset(
    "places365",
    schema={
        "properties": {
            "root": _ROOT,
            "split": {
                "enum": ["train-standard", "train-challenge", "val", "test"],
                "default": "val",
                "description": "official split to use as the pool of images (test has no labels)",
            },
            "small": {"type": "boolean", "default": True, "description": "256x256 images"},
            "download": _DOWNLOAD,
            "splits": _fractions([0.7, 0.15, 0.15]),
            "seed": _SEED,
        }
    },
    check=_check_splits,
    description="Places365 (torchvision layout); one official split cut into train/val/test.",
    target=".places365:Places365Dataset",
)


register_dataset(
    "tiny_imagenet",
    schema={
        "properties": {
            "root": _ROOT,
            "download": _DOWNLOAD,
            "val_fraction": _VAL_FRACTION,
            "seed": _SEED,
        }
    },
    description="Tiny ImageNet (200 classes); test = official val, val carved from train.",
    target=".tiny_imagenet:TinyImageNetDataset",
)


_CIFAR_SCHEMA = {
    "properties": {
        "root": _ROOT,
        "download": _DOWNLOAD,
        "val_fraction": _VAL_FRACTION,
        "seed": _SEED,
    }
}


@register_dataset("cifar10", schema=_CIFAR_SCHEMA)
def build_cifar10(**params):
    """CIFAR-10 through torchvision; test = official test, val carved from train."""
    from jigsawkit.data.cifar import CifarDataset

    return CifarDataset("cifar10", **params)


@register_dataset("cifar100", schema=_CIFAR_SCHEMA)
def build_cifar100(**params):
    """CIFAR-100 through torchvision; test = official test, val carved from train."""
    from jigsawkit.data.cifar import CifarDataset

    return CifarDataset("cifar100", **params)


register_dataset(
    "fashion_mnist",
    schema={
        "properties": {
            "root": {
                "type": "string",
                "default": "/usr/share/datasets/fashion-mnist",
                "description": "folder holding the four IDX files (.gz or raw); the default "
                "is where `apt-get install dataset-fashion-mnist` puts them",
            },
            "download": {
                **_DOWNLOAD,
                "description": "fetch missing IDX files from torchvision's mirrors (md5 checked)",
            },
            "val_fraction": _VAL_FRACTION,
            "seed": _SEED,
            "max_train_images": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": L.IMAGES_MAX,
                "default": None,
                "description": "keep a class-stratified subset of this many train images "
                "(val is carved first and does not change); null: all",
            },
        }
    },
    description="Fashion-MNIST (10 classes, 28x28 grey) from its IDX files; test = official t10k.",
    target=".fashion_mnist:FashionMnistDataset",
)

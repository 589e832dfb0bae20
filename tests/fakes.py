"""Fakes shared by the evaluator tests (test_features, test_linear_probe, test_knn): a tiny
backbone and a labelled dataset that follow the contracts in docs/architecture.md, feature
clusters, and an ``EvalContext`` around them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from jigsawkit.data.base import ImageSplit
from jigsawkit.evaluators.base import EvalContext


class TinyBackbone(nn.Module):
    """Conv -> BatchNorm -> ReLU -> 2x2 pool -> Dropout ("conv") -> Linear ("fc").

    Counts ``probe_features`` calls and records the input sizes it saw.
    """

    def __init__(self, width: int = 8, input_size: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(width * 4, 6)
        self.out_dim, self.input_size = 6, input_size
        self.feature_layers = {"conv": width * 4, "fc": 6}
        self.default_probe_layer = "conv"
        self.calls = 0
        self.sizes: list[int] = []

    def probe_features(self, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        self.calls += 1
        self.sizes.append(int(x.shape[-1]))
        h = torch.relu(self.bn(self.conv(x)))
        h = self.drop(nn.functional.adaptive_avg_pool2d(h, 2).flatten(1))
        out = {"conv": h, "fc": self.fc(h)}
        return {name: out[name] for name in layers}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probe_features(x, ["fc"])["fc"]


class ThreeLayerBackbone(TinyBackbone):
    """``TinyBackbone`` with a third probe layer, ``stem``: the conv block's globally pooled
    output (``width`` features), for per-layer tables."""

    def __init__(self, width: int = 8, input_size: int = 16):
        super().__init__(width, input_size)
        self.feature_layers = {"stem": width, **self.feature_layers}

    def probe_features(self, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        self.calls += 1
        self.sizes.append(int(x.shape[-1]))
        h = torch.relu(self.bn(self.conv(x)))
        stem = nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)
        conv = self.drop(nn.functional.adaptive_avg_pool2d(h, 2).flatten(1))
        out = {"stem": stem, "conv": conv, "fc": self.fc(conv)}
        return {name: out[name] for name in layers}


def make_backbone(seed: int = 0, cls: type = TinyBackbone, **kwargs) -> TinyBackbone:
    torch.manual_seed(seed)
    return cls(**kwargs)


def quadrant_split(n: int, seed: int, size: int = 16, classes: int = 4, key: str | None = None):
    """Noise images with a bright quadrant; the quadrant is the class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n).astype(np.int64)
    images = rng.integers(0, 90, (n, size, size, 3), dtype=np.uint8)
    half = size // 2
    for i, label in enumerate(labels):
        row, col = divmod(int(label) % 4, 2)
        images[i, row * half : (row + 1) * half, col * half : (col + 1) * half] += 150
    key = f"quadrants-{seed}-{n}-{size}" if key is None else key
    return ImageSplit(images, labels, classes, None, key=key)


class FakeDataset:
    """A labelled dataset whose splits are built from small numpy arrays."""

    has_labels = True
    num_classes = 4
    class_names = None

    def __init__(self, sizes=(240, 80, 80), image_size: int = 16, splits: dict | None = None):
        self.sizes, self.image_size = sizes, image_size
        self.splits = splits or {}
        self.loads: list[tuple[str, int]] = []

    def load(self, split: str, image_size: int, cache_dir) -> ImageSplit:
        self.loads.append((split, image_size))
        if split in self.splits:
            return self.splits[split]
        n = dict(zip(("train", "val", "test"), self.sizes))[split]
        seed = {"train": 1, "val": 2, "test": 3}[split]
        return quadrant_split(n, seed, size=self.image_size)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_identical(before: dict[str, torch.Tensor], module: nn.Module) -> None:
    after = module.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"{key} changed"


def clusters(n: int, seed: int, classes: int = 4, dim: int = 12, spread: float = 0.6):
    """Gaussian blobs around random centres: linearly separable with high probability."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3
    labels = torch.randint(0, classes, (n,), generator=generator)
    return centres[labels] + spread * torch.randn(n, dim, generator=generator), labels


class Recorder:
    def __init__(self):
        self.rows: list[tuple[int | None, dict]] = []

    def log(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))


def make_context(tmp_path, backbone, dataset, made=None, tracker=None, seed=0):
    made = [] if made is None else made

    def make_random():
        made.append(make_backbone(seed=123, cls=type(backbone)))
        return made[-1]

    return EvalContext(
        backbone=backbone,
        make_random_backbone=make_random,
        checkpoint_id="pretrained-weights",
        device=torch.device("cpu"),
        seed=seed,
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run",
        tracker=tracker,
        build_dataset=lambda selection: dataset,
    )


def with_defaults(cls: type, **params) -> object:
    """An evaluator class built as the registry builds it (every parameter, the schema's
    defaults where ``params`` gives none), on the fake probe data the registry does not know."""
    from jigsawkit.registry import registry

    defaults = registry("evaluator").get(cls.name).resolve({})
    return cls(**{**defaults, **params})

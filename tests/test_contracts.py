"""Every registered component follows its contract (jigsawkit/contracts.py), like timm's
test_models: one test per kind, parametrised over the registry (built-ins and
plugins/rotation.py, loaded through the plugin loader), each component built from its
schema defaults (small overrides only where a default is slow or needs real data).

A component registered later is picked up by the parametrisation; the last tests show that
the checks catch a component that breaks its contract.
"""

from __future__ import annotations

import math
import numbers
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from registry_state import registries_restored

from jigsawkit import contracts
from jigsawkit.config.validate import validate_data
from jigsawkit.config.yaml_marks import Marks
from jigsawkit.data.base import SPLITS, ImageSplit
from jigsawkit.errors import DataMissingError, PluginError, UserError
from jigsawkit.plugins import load_plugin_dir
from jigsawkit.registry import KINDS, registry

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _names(kind: str) -> list[str]:
    """Names registered for ``kind`` with the repository's plugins loaded (state restored)."""
    with registries_restored():
        load_plugin_dir(PLUGINS)
        return registry(kind).names()


@pytest.fixture
def with_plugins(clean_registries):
    """The repository's plugins (plugins/rotation.py) loaded as a run loads them."""
    load_plugin_dir(PLUGINS)
    return clean_registries


def resolved(kind: str, name: str, **overrides) -> dict:
    """The component's parameters as a run resolves them: schema defaults filled in and its
    ``check()`` passed, with ``overrides`` on top."""
    schema = {
        "type": "object",
        "properties": {
            "slot": {
                "x-component": kind,
                "type": ["object", "string"],
                "required": ["name"],
                "properties": {"name": {"type": "string"}},
            }
        },
    }
    data = validate_data({"slot": {"name": name, **overrides}}, Marks("contract"), schema)
    return {k: v for k, v in data["slot"].items() if k != "name"}


def build(kind: str, name: str, *args, overrides: dict | None = None, **extra):
    """Build from the resolved defaults and check the contract (what a run does)."""
    built = registry(kind).build(name, *args, **extra, **resolved(kind, name, **(overrides or {})))
    return contracts.check_component(kind, built, name)


# -- backbone --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _names("backbone"))
def test_backbone_contract(name, with_plugins):
    """(B,3,S,S) -> (B,out_dim); every declared probe layer has its declared width, at the
    backbone's input size and at a larger probe size; an unknown layer is a UserError."""
    torch.manual_seed(0)
    model = build("backbone", name).eval()
    size = model.input_size
    assert isinstance(model, contracts.Backbone)
    assert model.default_probe_layer is None or model.default_probe_layer in model.feature_layers
    layers = list(model.feature_layers)
    assert layers, f"backbone '{name}' declares no probe layers"
    with torch.no_grad():
        x = torch.rand(2, 3, size, size)
        out = model(x)
        assert out.shape == (2, model.out_dim) and out.dtype == torch.float32
        for side in (size, size + size // 2):
            features = model.probe_features(torch.rand(2, 3, side, side), layers)
            assert set(features) == set(layers)
            for layer, width in model.feature_layers.items():
                assert features[layer].shape == (2, width), (layer, side)
                assert torch.isfinite(features[layer]).all()
        with pytest.raises(UserError, match="no_such_layer"):
            model.probe_features(x, ["no_such_layer"])


# -- pretext task ----------------------------------------------------------------------------

# A small CNN trunk for every task: the task, not the trunk, is under test here.
TRUNK = {"channels": [8, 16], "kernel_sizes": [3, 3], "tile_fc": 32}
PRETEXT_OVERRIDES = {
    # 100 'maximal' permutations of 9 tiles take seconds to select; the contract does not
    # depend on how many there are.
    "jigsaw": {"permutations": {"count": 12}},
}


@pytest.mark.parametrize("name", _names("pretext"))
def test_pretext_contract(name, with_plugins):
    """prepare gives int64 targets in [0, num_classes), reproducibly from the generator;
    forward gives (B, num_classes); loss is a finite scalar; chance is 1 / num_classes."""
    torch.manual_seed(0)
    params = resolved("pretext", name, **PRETEXT_OVERRIDES.get(name, {}))
    trunk_size = params.get("tile") or params.get("image_size") or 64
    backbone = build("backbone", "cfn", overrides={**TRUNK, "input_size": trunk_size})
    task = contracts.check_component(
        "pretext", registry("pretext").build(name, backbone=backbone, **params), name
    )
    assert isinstance(task, contracts.PretextTask) and task.backbone is backbone
    assert task.chance == pytest.approx(1 / task.num_classes)
    batch, side = 4, task.image_size
    images = torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(1))
    for train in (True, False):
        inputs, targets = task.prepare(images, torch.Generator().manual_seed(2), train=train)
        again, targets_again = task.prepare(images, torch.Generator().manual_seed(2), train=train)
        assert torch.equal(inputs, again) and torch.equal(targets, targets_again)
        assert targets.dtype == torch.int64 and targets.shape == (batch,)
        assert int(targets.min()) >= 0 and int(targets.max()) < task.num_classes
        task.train(train)
        logits = task(inputs)
        assert logits.shape == (batch, task.num_classes)
        loss = task.loss(logits, targets)
        assert loss.dim() == 0 and math.isfinite(float(loss.detach()))


# -- dataset ---------------------------------------------------------------------------------


def _image_folder(tmp: Path, monkeypatch) -> dict:
    from PIL import Image

    for c, cls in enumerate(("cat", "dog")):
        (tmp / "pets" / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (20, 16), (40 + 150 * c, 10 * i, 90)).save(
                tmp / "pets" / cls / f"{i}.png"
            )
    return {"root": str(tmp / "pets")}


def _places365(tmp: Path, monkeypatch) -> dict:
    from test_places365 import _devkit_files, _labels, _val_images

    labels = _labels(20)
    _devkit_files(tmp / "data", labels)
    _val_images(tmp / "data" / "val_256", labels)
    return {"root": str(tmp / "data")}


def _tiny_imagenet(tmp: Path, monkeypatch) -> dict:
    from test_tiny_imagenet import _make_zip

    _make_zip(tmp / "tiny.zip")
    with zipfile.ZipFile(tmp / "tiny.zip") as archive:  # built just above: safe to extract
        archive.extractall(tmp / "data")
    return {"root": str(tmp / "data")}


def _cifar10(tmp: Path, monkeypatch) -> dict:
    _fake_cifar(tmp, monkeypatch, "cifar10")
    return {"root": str(tmp / "data")}


def _cifar100(tmp: Path, monkeypatch) -> dict:
    _fake_cifar(tmp, monkeypatch, "cifar100")
    return {"root": str(tmp / "data")}


def _fake_cifar(tmp: Path, monkeypatch, variant: str) -> None:
    """Batch files in torchvision's pickle layout (one train, one test), its md5 table
    pointed at them: 10 train and 2 test images per class."""
    from test_cifar import _batch, _write
    from torchvision.datasets import CIFAR10, CIFAR100

    cls, classes = (CIFAR10, 10) if variant == "cifar10" else (CIFAR100, 100)
    key, meta_key = (
        ("labels", "label_names") if classes == 10 else ("fine_labels", "fine_label_names")
    )
    folder = tmp / "data" / cls.base_folder
    folder.mkdir(parents=True)
    train = _write(folder / "train", _batch([i % classes for i in range(10 * classes)], 0, key))
    test = _write(folder / "test", _batch([i % classes for i in range(2 * classes)], 0, key))
    meta = _write(folder / "meta", {meta_key: [f"c{i}" for i in range(classes)]})
    monkeypatch.setattr(cls, "train_list", [["train", train]])
    monkeypatch.setattr(cls, "test_list", [["test", test]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "filename": "meta", "md5": meta})


def _fashion_mnist(tmp: Path, monkeypatch) -> dict:
    from test_fashion_mnist import write_files

    write_files(tmp / "fmnist")  # 4 train images per class: val needs a quarter of them
    return {"root": str(tmp / "fmnist"), "val_fraction": 0.25}


# Small data in each dataset's real on-disk layout (the builders of its own tests), and
# overrides where a default is slow (synthetic's 7,000 generated images).
DATASET_FIXTURES = {
    "synthetic": lambda tmp, mp: {"train_size": 24, "val_size": 12, "test_size": 12},
    "image_folder": _image_folder,
    "places365": _places365,
    "tiny_imagenet": _tiny_imagenet,
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "fashion_mnist": _fashion_mnist,
}


@pytest.mark.parametrize("name", _names("dataset"))
def test_dataset_contract(name, with_plugins, tmp_path, monkeypatch):
    """Building reads nothing; ensure_present passes on present data; load gives an
    ImageSplit of uint8 (N,S,S,3) images, int64 labels in [0, num_classes) (or None
    without labels), the same images and key when loaded again."""
    make = DATASET_FIXTURES.get(name)
    overrides = make(tmp_path, monkeypatch) if make else {}
    dataset = build("dataset", name, overrides=overrides)
    assert isinstance(dataset, contracts.Dataset)
    try:
        ensure = contracts.optional_method(dataset, "ensure_present")
        if ensure is not None:
            ensure()
        first = dataset.load("train", 24, tmp_path / "cache")
    except DataMissingError as error:
        assert make is None, error  # our own fixtures must be complete
        pytest.skip(f"dataset '{name}' needs real data on disk (no offline fixture): {error}")
    labelled = dataset.has_labels
    if labelled:
        assert isinstance(dataset.num_classes, int) and dataset.num_classes >= 1
    names = dataset.class_names
    assert names is None or all(isinstance(n, str) for n in names)
    for split in SPLITS:
        data = dataset.load(split, 24, tmp_path / "cache")
        assert isinstance(data, ImageSplit)
        assert len(data) > 0, split
        assert data.images.dtype == np.uint8 and data.images.shape == (len(data), 24, 24, 3)
        assert isinstance(data.key, str) and data.key
        if labelled:
            assert data.labels is not None and data.labels.dtype == np.int64
            assert data.labels.shape == (len(data),)
            assert 0 <= int(data.labels.min()) and int(data.labels.max()) < dataset.num_classes
            assert names is None or int(data.labels.max()) < len(names)  # every label named
        again = dataset.load(split, 24, tmp_path / "cache")
        assert again.key == data.key and np.array_equal(again.images, data.images)
    assert first.key == dataset.load("train", 24, tmp_path / "cache").key


# -- evaluator -------------------------------------------------------------------------------

EVALUATOR_OVERRIDES = {"linear_probe": {"epochs": 2, "lr": [1e-2]}}


@pytest.mark.parametrize("name", _names("evaluator"))
def test_evaluator_contract(name, with_plugins, tmp_path):
    """evaluate(ctx) returns a flat {str: value} (numbers, strings, None, lists of them;
    no nested mapping) and leaves the backbone untouched."""
    from fakes import FakeDataset, assert_identical, make_backbone, make_context, snapshot

    evaluator = build("evaluator", name, overrides=EVALUATOR_OVERRIDES.get(name, {}))
    assert isinstance(evaluator, contracts.Evaluator)
    backbone = make_backbone()
    before = snapshot(backbone)
    results = evaluator.evaluate(make_context(tmp_path, backbone, FakeDataset((64, 32, 32))))
    assert results and all(isinstance(key, str) and key for key in results)
    scalar = (type(None), numbers.Number, str)
    for key, value in results.items():
        items = value if isinstance(value, list) else [value]
        assert all(isinstance(item, scalar) for item in items), (key, value)
    assert_identical(before, backbone)


# -- tracker ---------------------------------------------------------------------------------

# The defaults of `wandb` (offline) start a W&B run in a subprocess: seconds. Disabled, it
# goes through the same calls.
TRACKER_OVERRIDES = {"wandb": {"mode": "disabled"}}


@pytest.mark.parametrize("name", _names("tracker"))
def test_tracker_contract(name, with_plugins, tmp_path):
    """preflight (when present), start, log, summary, artifact, finish: in that order."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tracker = build(
        "tracker",
        name,
        overrides=TRACKER_OVERRIDES.get(name, {}),
        run_dir=run_dir,
        experiment="contract",
    )
    assert isinstance(tracker, contracts.Tracker)
    preflight = contracts.optional_method(tracker, "preflight")
    if preflight is not None:
        preflight()
    artifact = run_dir / "feature_extractor.pt"
    artifact.write_bytes(b"weights")
    tracker.start({"name": "contract", "seed": 0})
    tracker.log({"pretrain/train_loss": 1.5, "pretrain/lr": 0.01}, 1)
    tracker.log({"probe/knn/val_top1": 0.5}, None)
    tracker.summary({"pretrain.test_top1": 0.25, "run.state": "finished"})
    tracker.artifact(artifact, "contract-feature-extractor", "model")
    tracker.finish(True)


# -- search strategy -------------------------------------------------------------------------


@pytest.mark.parametrize("name", _names("search"))
def test_search_strategy_contract(name, with_plugins, tmp_path):
    """Offline by default, no credentials needed; trial_options() fits the experiment
    trials; open/run/records run a small grid with a fake trial function."""
    import inspect

    from test_optuna import PLUGIN, objective, spec_for

    from jigsawkit.search.sweep_runner import ExperimentTrials, run_sweep

    strategy = build("search", name)
    assert isinstance(strategy, contracts.SearchStrategy)
    assert strategy.online is False
    strategy.check_credentials()
    options = strategy.trial_options()
    inspect.signature(ExperimentTrials).bind(None, None, **options)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "op.py").write_text(PLUGIN)
    spec = spec_for(tmp_path, "grid", "evaluate.0.lr: {values: [0.001, 0.01]}", f"{{name: {name}}}")
    result = run_sweep(
        spec, tmp_path / "sweep", trial_function=objective, strategy=strategy, progress=False
    )
    records = strategy.records(result.session)
    assert sorted(r.params["evaluate.0.lr"] for r in records) == [0.001, 0.01]
    assert all(r.state == "finished" for r in records)


# -- the checks catch a component that breaks its contract -------------------------------------


def test_every_kind_has_a_protocol_and_a_check():
    assert set(contracts.PROTOCOLS) == set(KINDS) == set(contracts.CHECKS)


class _NoWidths(torch.nn.Module):
    """A backbone that forgot ``feature_layers``."""

    out_dim, input_size, default_probe_layer = 4, 8, None

    def forward(self, x):
        return x.mean(dim=(2, 3)).repeat(1, 2)[:, :4]

    def probe_features(self, x, layers):
        return {name: self(x) for name in layers}


class _WrongWidth(_NoWidths):
    """A backbone whose probe layer is narrower than it declares."""

    def __init__(self):
        super().__init__()
        self.feature_layers, self.default_probe_layer = {"pooled": 5}, "pooled"

    def probe_features(self, x, layers):
        from jigsawkit.backbones.probe_pool import check_probe_layers

        check_probe_layers(self, layers, "liar")
        return super().probe_features(x, layers)


BAD_PLUGIN = '''\
from jigsawkit import register_backbone


@register_backbone("forgetful")
def forgetful():
    """A backbone that forgot its probe layers."""
    from test_contracts import _NoWidths

    return _NoWidths()


@register_backbone("liar")
def liar():
    """A backbone whose probe layer is narrower than it declares."""
    from test_contracts import _WrongWidth

    return _WrongWidth()
'''


def test_a_bad_component_registered_later_is_picked_up_and_fails_its_check(tmp_path):
    """Plugins registered after import time show up in the parametrisation, and the
    registry-driven test fails on them: the member check in one line naming the plugin
    file, the component and the member; the behaviour check on a wrong declared width."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "bad.py").write_text(BAD_PLUGIN)
    with registries_restored():
        load_plugin_dir(plugins)
        assert {"forgetful", "liar"} <= set(_names("backbone"))
        with pytest.raises(PluginError) as error:
            test_backbone_contract("forgetful", None)
        with pytest.raises(AssertionError, match="pooled"):
            test_backbone_contract("liar", None)
    message = str(error.value)
    assert "\n" not in message
    assert f"plugin {(plugins / 'bad.py').resolve()}: backbone 'forgetful'" in message
    assert "no attribute 'feature_layers'" in message and "contracts.Backbone" in message
    assert "forgetful" not in _names("backbone")  # the temporary scope is gone


@pytest.mark.parametrize(
    ("kind", "obj", "problem"),
    [
        ("backbone", None, "the factory returned None"),
        ("evaluator", object(), "has no method evaluate()"),
        ("tracker", type("T", (), {"start": 1})(), "has no method start()"),
        ("search", type("S", (), {"online": "no"})(), "has no method check_credentials()"),
    ],
)
def test_missing_members_are_one_line_errors(kind, obj, problem):
    with pytest.raises(PluginError, match=rf"^{kind} 'x': .*{problem}.* \(see jigsawkit"):
        contracts.CHECKS[kind](obj, f"{kind} 'x'")


def test_wrong_values_are_named():
    model = _NoWidths()
    model.feature_layers = {"pooled": 0}
    with pytest.raises(PluginError, match=r"feature_layers\['pooled'\] is 0; expected >= 1"):
        contracts.check_backbone(model, "backbone 'b'")
    model.feature_layers, model.default_probe_layer = {"pooled": 4}, "conv"
    with pytest.raises(PluginError, match="default_probe_layer 'conv' is not in feature_layers"):
        contracts.check_backbone(model, "backbone 'b'")
    model.default_probe_layer, model.out_dim = "pooled", 0
    with pytest.raises(PluginError, match=r"out_dim is 0; expected an int >= 1"):
        contracts.check_backbone(model, "backbone 'b'")


def test_a_dataset_check_reads_no_data():
    """``class_names`` may be a property that reads files: the check never evaluates it."""

    class Lazy:
        has_labels, num_classes = True, 3

        @property
        def class_names(self):
            raise AssertionError("read at check time")

        def load(self, split, image_size, cache_dir):
            raise AssertionError("loaded at check time")

    assert isinstance(contracts.check_dataset(Lazy(), "dataset 'lazy'"), Lazy)
    Lazy.has_labels = "yes"
    with pytest.raises(PluginError, match="has_labels is 'yes'; expected a bool"):
        contracts.check_dataset(Lazy(), "dataset 'lazy'")


def test_the_runner_checks_what_it_builds(tmp_path, clean_registries):
    """A run refuses a plugin's non-conforming component before it writes anything."""
    from jigsawkit.config.experiment import load_experiment
    from jigsawkit.runner import run_experiment

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "half.py").write_text(
        "from jigsawkit import register_evaluator\n\n"
        "@register_evaluator('half')\n"
        "def half():\n"
        "    '''Returns something without evaluate().'''\n"
        "    return object()\n"
    )
    experiment = tmp_path / "e.yaml"
    experiment.write_text(
        "name: e\ncheckpoint: null\nevaluate: [half]\ntrackers: []\n"
        "backbone: {name: cfn, channels: [4], kernel_sizes: [3], tile_fc: 8, input_size: 12}\n"
        "pretext: {name: jigsaw, grid: 2, crop: 24, tile: 12, permutations: {count: 2}}\n"
        "pretrain: {epochs: 1, data: {name: synthetic, train_size: 8, val_size: 4, "
        "test_size: 4, image_size: 24}}\n"
    )
    config = load_experiment(experiment)
    with pytest.raises(PluginError, match=r"evaluator 'half': object has no method evaluate\(\)"):
        run_experiment(config, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_the_documented_plugin_example_follows_the_backbone_contract(tmp_path):
    """docs/plugins.md's complete plugin, loaded as a plugin, passes the registry test."""
    from test_plugins import extract_example

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "example.py").write_text(extract_example(PLUGINS.parent / "docs" / "plugins.md"))
    with registries_restored():
        load_plugin_dir(plugins)
        assert "tiny_convnet" in _names("backbone")
        test_backbone_contract("tiny_convnet", None)

"""The registered schema is the one source of defaults (issue 15 section 2).

The registry validates the given parameters against a component's schema and fills its
defaults when it builds the component, so ``create_backbone("cfn")``,
``registry(kind).build(...)`` and an experiment file get the same values, and no factory
or class restates a default.
"""

from __future__ import annotations

import copy
import inspect

import pytest

import jigsawkit
from jigsawkit.config.validate import validate_data
from jigsawkit.config.yaml_marks import Marks
from jigsawkit.errors import ConfigError, PluginError
from jigsawkit.registry import KINDS, registry

ENTRIES = [entry for kind in KINDS for entry in registry(kind).entries()]
IDS = [f"{e.kind}:{e.name}" for e in ENTRIES]
# What each kind is built around (not parameters), and the required parameters of those
# built-ins that have some.
CONTEXT = {"pretext": {"backbone": "a backbone"}, "tracker": {"run_dir": "r", "experiment": "e"}}
REQUIRED = {("dataset", "image_folder"): {"root": "images"}}


def _as_in_an_experiment(entry, given: dict) -> dict:
    """The parameters an experiment file selecting ``entry`` with ``given`` resolves to."""
    schema = {"type": "object", "properties": {"slot": {"x-component": entry.kind}}}
    resolved = validate_data({"slot": {"name": entry.name, **given}}, Marks("t.yaml"), schema)
    return {k: v for k, v in resolved["slot"].items() if k != "name"}


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_build_hands_the_factory_every_schema_default(entry, monkeypatch):
    """Built with no parameters, the factory receives exactly what an experiment resolves."""
    received = {}

    def spy(*args, **kwargs):
        received.update(kwargs)
        return "built"

    monkeypatch.setattr(entry, "load", lambda: spy)  # its factory or its lazy target
    given = REQUIRED.get((entry.kind, entry.name), {})
    context = CONTEXT.get(entry.kind, {})
    assert registry(entry.kind).build(entry.name, **context, **given) == "built"
    assert received == {**context, **_as_in_an_experiment(entry, given)}
    assert set(entry.params_schema["properties"]) <= set(received)


def test_a_changed_schema_default_is_what_gets_built():
    """Change the defaults of a temporary registration: the built objects follow them."""
    from jigsawkit.backbones import CFN_SCHEMA, check_cfn
    from jigsawkit.pretext import JIGSAW_SCHEMA, check_jigsaw
    from jigsawkit.pretext.permutations import build_permutations

    backbone_schema = copy.deepcopy(CFN_SCHEMA)
    props = backbone_schema["properties"]
    props["channels"]["default"], props["kernel_sizes"]["default"] = [4], [3]
    props["tile_fc"]["default"], props["input_size"]["default"] = 24, 16
    task_schema = copy.deepcopy(JIGSAW_SCHEMA)
    props = task_schema["properties"]
    props["grid"]["default"], props["crop"]["default"], props["tile"]["default"] = 2, 40, 16
    props["permutations"]["default"] = {"count": 5, "selection": "random", "seed": 1}
    props["head_hidden"]["default"] = 7
    backbones, pretexts = registry("backbone"), registry("pretext")
    backbones.register("tmp_cfn", schema=backbone_schema, check=check_cfn)(
        backbones.get("cfn").load()
    )
    pretexts.register("tmp_jigsaw", schema=task_schema, check=check_jigsaw)(
        pretexts.get("jigsaw").load()
    )
    try:
        backbone = jigsawkit.create_backbone("tmp_cfn")
        task = jigsawkit.create_pretext("tmp_jigsaw", backbone)
    finally:
        backbones.unregister("tmp_cfn")
        pretexts.unregister("tmp_jigsaw")
    assert backbone.out_dim == 24 and backbone.input_size == 16
    assert task.spec.grid == 2 and task.spec.crop == 40 and task.spec.tile == 16
    assert task.num_classes == 5 and task.image_size == 40
    assert task.permutations.tolist() == build_permutations(2, 5, "random", 1).tolist()
    assert task.head[0].out_features == 7


def _built_in_classes():
    from jigsawkit.backbones.cfn import CFN
    from jigsawkit.backbones.cfn_alexnet import CFNAlexNet
    from jigsawkit.backbones.timm_backbone import TimmBackbone
    from jigsawkit.data.cifar import CifarDataset
    from jigsawkit.data.fashion_mnist import FashionMnistDataset
    from jigsawkit.data.image_folder import ImageFolderDataset
    from jigsawkit.data.places365 import Places365Dataset
    from jigsawkit.data.synthetic import SyntheticDataset
    from jigsawkit.data.tiny_imagenet import TinyImageNetDataset
    from jigsawkit.pretext.jigsaw import JigsawTask
    from jigsawkit.search.optuna_strategy import OptunaStrategy
    from jigsawkit.search.wandb_strategy import WandbStrategy
    from jigsawkit.tracking.console import ConsoleTracker
    from jigsawkit.tracking.wandb_tracker import WandbTracker

    return {
        ("backbone", "cfn"): CFN,
        ("backbone", "cfn_alexnet"): CFNAlexNet,
        ("backbone", "timm"): TimmBackbone,
        ("pretext", "jigsaw"): JigsawTask,
        ("dataset", "synthetic"): SyntheticDataset,
        ("dataset", "image_folder"): ImageFolderDataset,
        ("dataset", "places365"): Places365Dataset,
        ("dataset", "tiny_imagenet"): TinyImageNetDataset,
        ("dataset", "cifar10"): CifarDataset,
        ("dataset", "cifar100"): CifarDataset,
        ("dataset", "fashion_mnist"): FashionMnistDataset,
        ("tracker", "console"): ConsoleTracker,
        ("tracker", "wandb"): WandbTracker,
        ("search", "optuna"): OptunaStrategy,
        ("search", "wandb"): WandbStrategy,
    }


def _init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The keywords ``cls(...)`` takes: its ``__init__``'s, and where that passes ``**params``
    on to a base class's ``__init__`` (data.splits.ValFromTrain), the base's as well."""
    parameters: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        own = inspect.signature(klass.__init__).parameters
        for key, parameter in own.items():
            parameters.setdefault(key, parameter)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()):
            break
    return parameters


def test_no_built_in_class_restates_a_schema_default():
    """Every schema parameter of a built-in class is keyword-only and has no default."""
    classes = _built_in_classes()
    built_in = {(e.kind, e.name) for e in ENTRIES if e.origin == "built-in"}
    # The evaluators keep their resolved parameters as one mapping (``self.params``).
    assert built_in - set(classes) == {("evaluator", "linear_probe"), ("evaluator", "knn")}
    for (kind, name), cls in classes.items():
        signature = _init_parameters(cls)
        for key in registry(kind).get(name).params_schema["properties"]:
            parameter = signature[key]
            assert parameter.default is inspect.Parameter.empty, f"{cls.__name__}({key}=...)"
            assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, f"{cls.__name__}.{key}"


def test_a_wrong_parameter_is_one_line_naming_the_component_and_the_key():
    with pytest.raises(ConfigError) as caught:
        jigsawkit.create_backbone("cfn", tile_fc=0)
    assert (
        str(caught.value)
        == "backbone 'cfn': tile_fc: expected an integer >= 1 and <= 65536, found 0"
    )
    with pytest.raises(ConfigError) as caught:
        jigsawkit.create_backbone("cfn", chanels=[8])
    assert str(caught.value) == "backbone 'cfn': chanels: unknown key; did you mean 'channels'?"
    with pytest.raises(ConfigError) as caught:  # the component's own check() runs too
        jigsawkit.create_backbone("cfn", channels=[8, 16])
    message = str(caught.value)
    assert message.startswith("backbone 'cfn': kernel_sizes: has 3 entries but channels has 2")
    assert "\n" not in message


def test_a_pretext_is_built_around_a_backbone_that_is_no_parameter():
    backbone = jigsawkit.create_backbone("cfn", channels=[4], kernel_sizes=[3], tile_fc=8)
    task = jigsawkit.create_pretext(
        "jigsaw", backbone, grid=2, crop=64, tile=24, permutations={"count": 24}
    )
    assert task.backbone is backbone
    assert task.num_classes == 24 and task.spec.grayscale_prob == 0.3  # defaults filled


def test_a_schema_may_not_declare_what_its_kind_is_built_around():
    reg = registry("pretext")
    with pytest.raises(PluginError) as caught:
        reg.register("tmp_clash", schema={"properties": {"backbone": {"type": "string"}}})(
            lambda backbone: backbone
        )
    assert "declares backbone" in str(caught.value) and "tmp_clash" not in reg

"""jigsawkit: self-supervised pretraining of image backbones and measuring what they learned.

The public API (what plugins may import) is small and cheap to import:

- ``register_backbone``, ``register_pretext``, ``register_dataset``, ``register_evaluator``,
  ``register_search``, ``register_tracker``: decorators registering a factory function,
  or calls naming a lazy ``target="module:attr"`` class imported only when built; the
  schema given is the one source of the parameters' defaults (filled by every build).
- ``registry(kind)``: the registry of one kind (``list``/``get``/``build``).
- ``load_feature_extractor(path)``: an exported, frozen feature extractor.
- ``load_experiment(path, overrides=(), plugin_dirs=())`` and ``run_experiment(config, ...)``:
  what ``jigsawkit run`` does, from Python (a notebook need not import ``jigsawkit.runner``).
- ``create_backbone(name, **params)``, ``create_pretext(name, backbone, **params)``: build a
  registered component, as timm's ``create_model``; ``list_components(kind=None,
  pattern=None)``: registered names, as timm's ``list_models``.
- ``UserError`` and its subclasses: errors reported as one line with exit code 2.
- ``jigsawkit.contracts``: the contract of every component kind (``typing.Protocol`` classes
  stating every rule) and ``check_<kind>(obj, where)``.
- ``jigsawkit.data.base.ImageSplit``, ``jigsawkit.pretext.base.PretextTask``: base types.
"""

from __future__ import annotations

from typing import Any

from jigsawkit.errors import ConfigError, DataMissingError, UserError
from jigsawkit.registry import (
    register_backbone,
    register_dataset,
    register_evaluator,
    register_pretext,
    register_search,
    register_tracker,
    registry,
)

__all__ = [
    "ConfigError",
    "DataMissingError",
    "UserError",
    "create_backbone",
    "create_pretext",
    "list_components",
    "load_experiment",
    "load_feature_extractor",
    "register_backbone",
    "register_dataset",
    "register_evaluator",
    "register_pretext",
    "register_search",
    "register_tracker",
    "registry",
    "run_experiment",
]


def __getattr__(name: str) -> Any:
    # The version is setup.cfg's, read from the installed package's metadata: one place.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("jigsawkit")
        except PackageNotFoundError:
            return "unknown (not installed; pip install -e .)"
    raise AttributeError(f"module 'jigsawkit' has no attribute {name!r}")


def load_feature_extractor(path: Any, map_location: str = "cpu") -> Any:
    """Load an exported feature extractor (frozen, eval mode) with ``weights_only=True``."""
    from jigsawkit.training.export import load_feature_extractor as _load

    return _load(path, map_location=map_location)


def load_experiment(path: Any, overrides: Any = (), plugin_dirs: Any = ()) -> dict:
    """Read, override (``["pretrain.epochs=1", ...]``), load plugins for and validate an
    experiment file: the resolved config ``run_experiment`` takes (``ConfigError`` lists
    every problem with its file:line:col)."""
    from jigsawkit.config.experiment import load_experiment as _load

    return _load(path, overrides=overrides, plugin_dirs=plugin_dirs)


def run_experiment(config: dict, out: Any = None, **options: Any) -> Any:
    """Run a resolved experiment (pretrain, export, evaluate) into ``out`` (default: a new
    folder under its ``output_dir``); returns ``RunResult(run_dir, summary)``. ``options``:
    ``resume``, ``progress``, ``callbacks`` (see ``jigsawkit.runner.run_experiment`` and
    ``jigsawkit.callbacks``)."""
    from jigsawkit.runner import run_experiment as _run

    return _run(config, out=out, **options)


def create_backbone(name: str, **params: Any) -> Any:
    """A registered backbone (``cfn``, ``cfn_alexnet``, ``timm``, or a plugin's) built with
    ``params``; unknown names fail with the nearest names and where components were looked for."""
    from jigsawkit.contracts import check_component
    from jigsawkit.registry import load_builtins

    load_builtins()
    return check_component("backbone", registry("backbone").build(name, **params), name)


def create_pretext(name: str, backbone: Any, **params: Any) -> Any:
    """A registered pretext task (``jigsaw``, or a plugin's) around ``backbone``."""
    from jigsawkit.contracts import check_component
    from jigsawkit.registry import load_builtins

    load_builtins()
    built = registry("pretext").build(name, backbone=backbone, **params)
    return check_component("pretext", built, name)


def list_components(kind: str | None = None, pattern: str | None = None) -> list[str]:
    """Registered component names, sorted: of one ``kind`` (``backbone``, ``pretext``,
    ``dataset``, ``evaluator``, ``search``, ``tracker``) as ``name``, or of every kind as
    ``kind:name``; ``pattern`` is a glob on the name (``"cfn*"``)."""
    import fnmatch

    from jigsawkit.registry import KINDS, load_builtins

    load_builtins()
    if kind is not None and kind not in KINDS:
        raise UserError(f"list_components: unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
    names = []
    for each in [kind] if kind is not None else list(KINDS):
        for name in registry(each).names():
            if pattern is None or fnmatch.fnmatchcase(name, pattern):
                names.append(name if kind is not None else f"{each}:{name}")
    return names

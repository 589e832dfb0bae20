"""Registries of components: one ``Registry`` class, one instance per component kind.

A component is registered with a decorator on a *factory function* whose module is cheap to
import. The factory imports heavy libraries (torch, timm, wandb) inside its body, so listing
components and validating experiments never pays for them::

    from jigsawkit import register_backbone

    @register_backbone("tiny", schema={"properties": {"width": {"type": "integer", "default": 8}}})
    def tiny(*, width: int):
        \"\"\"A tiny CNN for tests.\"\"\"
        from my_models import Tiny   # heavy import happens only when built
        return Tiny(width=width)

or with a *lazy target*, the class itself, imported only when the component is built (a
relative module is relative to the registering module's package: for a plugin file, its
plugin folder)::

    register_backbone("tiny", schema=SCHEMA, description="A tiny CNN.", target="._tiny:Tiny")

The schema is the one source of defaults: ``build`` validates the given parameters against
it, fills every default and passes every parameter, so factories and classes restate none.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from jigsawkit.errors import (
    DuplicateComponentError,
    PluginError,
    UnknownComponentError,
    UserError,
    one_line,
)

KINDS = ("backbone", "pretext", "dataset", "evaluator", "search", "tracker")

# What a kind is built around, given by the code that builds it rather than by a config:
# these keyword arguments of ``build`` are not parameters and no schema may declare them.
BUILD_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "pretext": ("backbone",),
    "tracker": ("run_dir", "experiment"),
}

# Where the component being registered right now comes from. The plugin loader sets it
# while it imports a plugin file or an entry-point package.
_current_origin: list[str] = []


@contextlib.contextmanager
def registering_from(origin: str) -> Iterator[None]:
    """Mark every registration inside the block as coming from ``origin``."""
    _current_origin.append(origin)
    try:
        yield
    finally:
        _current_origin.pop()


def _origin_of(factory: Callable) -> str:
    if _current_origin:
        return _current_origin[-1]
    module = getattr(factory, "__module__", "") or ""
    if module == "jigsawkit" or module.startswith("jigsawkit."):
        return "built-in"
    try:
        return inspect.getsourcefile(factory) or module
    except TypeError:
        return module or "unknown"


def _origin_of_module(module_globals: dict) -> str:
    """The origin of a registration made by the module whose globals these are."""
    name = module_globals.get("__name__") or ""
    if name == "jigsawkit" or name.startswith("jigsawkit."):
        return "built-in"
    return module_globals.get("__file__") or name or "unknown"


def _who(origin: str) -> str:
    return "jigsawkit" if origin == "built-in" else f"plugin {origin}"


_TARGET = re.compile(r"^\.*[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _absolute_target(origin: str, kind: str, name: Any, target: Any, package: Any) -> str:
    """The module of ``target`` (``module:attr``) made absolute, without importing it.

    A relative module resolves inside the registering module's package and never above
    it: a plugin file's package stands for its plugin folder, so a plugin's relative
    target loads from the folder the user named and nowhere else.
    """
    what = f"{_who(origin)}: {kind} '{name}': target {target!r}"
    if not isinstance(target, str) or not _TARGET.match(target):
        raise PluginError(f"{what} is not 'module:attr' (e.g. '._task:RotationTask')")
    module = target.partition(":")[0]
    try:
        return importlib.util.resolve_name(module, package) if module.startswith(".") else module
    except (ImportError, ValueError) as error:
        raise PluginError(f"{what} cannot be resolved: {one_line(error)}") from error


def _first_line(text: str | None) -> str:
    for line in (text or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def call_plugin(origin: str, what: str, call: Callable[[], Any]) -> Any:
    """Run third-party code; any exception but ``UserError`` becomes one-line ``PluginError``
    naming ``origin`` (the plugin file) and ``what`` (the component and the phase).

    Built-ins are called as they are: an exception there is a bug in jigsawkit, and its
    traceback is what the report needs.
    """
    if origin == "built-in":
        return call()
    try:
        return call()
    except UserError:
        raise
    except Exception as error:
        raise PluginError(f"plugin {origin}: {what} raised {one_line(error)}") from error


def check_schema(origin: str, kind: str, name: str, schema: dict) -> None:
    """Refuse a parameter schema that is not valid JSON Schema (draft 2020-12 metaschema)."""
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as error:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise PluginError(
            f"plugin {origin}: {kind} '{name}': its schema is not valid JSON Schema at "
            f"{where}: {' '.join(error.message.split())}"
        ) from error


def normalize_schema(schema: dict | None) -> dict:
    """A parameter schema is an object schema; ``properties`` alone is enough to give."""
    schema = copy.deepcopy(schema or {})
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    schema.setdefault("additionalProperties", False)
    return schema


@dataclass
class Entry:
    """One registered component: what listing and validation need, and how to build it."""

    name: str
    kind: str
    factory: Callable[..., Any] | None
    description: str
    origin: str
    params_schema: dict
    check: Callable[[dict], list[tuple[str, str]]] | None = None
    extra: dict = field(default_factory=dict)
    # A lazy target instead of a factory: ``module:attr`` as registered (``._task:Task``)
    # and with its module made absolute; imported by ``load`` when the component is built.
    target: str | None = None
    target_module: str | None = None

    def load(self) -> Callable[..., Any]:
        """What builds the component: its factory, or its lazy target, imported now.

        A target that cannot be imported (no such module, no such attribute, an error in
        the module) or that is not callable is one ``PluginError`` line naming the
        plugin, the component and the target.
        """
        if self.target is None or self.target_module is None:
            return self.factory
        attr = self.target.partition(":")[2]
        what = f"{_who(self.origin)}: {self.kind} '{self.name}': target '{self.target}'"
        try:
            found: Any = importlib.import_module(self.target_module)
            for part in attr.split("."):
                found = getattr(found, part)
        except Exception as error:
            raise PluginError(f"{what} cannot be imported: {one_line(error)}") from error
        if not callable(found):
            raise PluginError(f"{what} is a {type(found).__name__}, not a class or function")
        return found

    def resolve(self, params: dict | None = None) -> dict:
        """``params`` validated against the schema, every default filled and ``check()``
        passed: the parameters this component is built with (``ConfigError``, one line
        naming the component and the key, when they are wrong)."""
        from jigsawkit.config.validate import resolve_params

        return resolve_params(self, dict(params or {}))

    def build(self, *args: Any, **kwargs: Any) -> Any:
        """Build the component: keyword arguments its kind is built around (a pretext's
        ``backbone``, a tracker's ``run_dir`` and ``experiment``; ``BUILD_ARGUMENTS``) pass
        as they are, the rest are its parameters, resolved by ``resolve``: the schema is
        the one source of defaults, so the factory receives every parameter."""
        context = {k: kwargs.pop(k) for k in BUILD_ARGUMENTS.get(self.kind, ()) if k in kwargs}
        params = self.resolve(kwargs)
        make = self.load()
        return call_plugin(
            self.origin,
            f"{self.kind} '{self.name}' {'factory' if self.target is None else self.target}",
            lambda: make(*args, **context, **params),
        )

    def run_check(self, params: dict) -> list[tuple[str, str]]:
        """The component's ``check(params)``: ``(dotted key, message)`` pairs (none if no check)."""
        if self.check is None:
            return []
        found = call_plugin(
            self.origin, f"{self.kind} '{self.name}' check()", lambda: self.check(params)
        )
        try:
            return [(str(key), str(message)) for key, message in found or []]
        except (TypeError, ValueError) as error:
            raise PluginError(
                f"plugin {self.origin}: {self.kind} '{self.name}' check() returned "
                f"{type(found).__name__}, expected a list of (key, message) pairs"
            ) from error

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "origin": self.origin,
            "description": self.description,
            "params_schema": self.params_schema,
            "target": self.target,
        }


class Registry:
    """A name -> component map for one kind, with a registering decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str | None = None,
        *,
        schema: dict | None = None,
        description: str | None = None,
        check: Callable[[dict], list[tuple[str, str]]] | None = None,
        target: str | None = None,
        **extra: Any,
    ) -> Any:
        """Decorator registering a factory under ``name`` (default: the function's name);
        or, given ``target="module:attr"``, a registration of that class or function, which
        is imported only when the component is built (the call returns its ``Entry``).

        ``schema`` is the JSON Schema of the factory's keyword parameters and the one place
        their defaults are written: ``build`` validates the given parameters against it and
        passes every parameter, defaults filled, so the factory restates none.
        ``check`` receives the resolved parameters and returns ``(dotted_key, message)``
        pairs for cross-field problems that JSON Schema cannot express.
        A ``target`` whose module starts with ``.`` is relative to the registering module's
        package, like a relative import (a plugin file's package is its plugin folder):
        ``"._rotation_task:RotationTask"``. Its ``description`` must be given, as reading
        the target's docstring would import it.
        """
        if target is not None:
            caller = sys._getframe(1).f_globals
            origin = _current_origin[-1] if _current_origin else _origin_of_module(caller)
            if not name or not description:
                raise PluginError(
                    f"{_who(origin)}: {self.kind} registered with target {target!r} needs a "
                    "name and a description (the target is not imported to read them)"
                )
            module = _absolute_target(origin, self.kind, name, target, caller.get("__package__"))
            self._add(name, None, origin, schema, description, check, extra, target, module)
            return self._entries[name]

        def decorator(factory: Callable) -> Callable:
            entry_name = name or factory.__name__
            description_text = description or _first_line(factory.__doc__)
            origin = _origin_of(factory)
            self._add(entry_name, factory, origin, schema, description_text, check, extra)
            return factory

        return decorator

    def _add(
        self,
        name: str,
        factory: Callable | None,
        origin: str,
        schema: dict | None,
        description: str,
        check: Callable | None,
        extra: dict,
        target: str | None = None,
        target_module: str | None = None,
    ) -> None:
        params_schema = normalize_schema(schema)
        if origin != "built-in":  # built-in schemas are checked by the test suite
            check_schema(origin, self.kind, name, params_schema)
        reserved = set(BUILD_ARGUMENTS.get(self.kind, ())) & set(params_schema["properties"])
        if reserved:
            raise PluginError(
                f"{_who(origin)}: {self.kind} '{name}': its schema declares "
                f"{', '.join(sorted(reserved))}, which every {self.kind} is built around; "
                "rename the parameter"
            )
        if name in self._entries:
            other = self._entries[name]
            raise DuplicateComponentError(
                f"{self.kind} '{name}' is registered twice: by {other.origin} "
                f"and by {origin}; rename one of them"
            )
        self._entries[name] = Entry(
            name=name,
            kind=self.kind,
            factory=factory,
            description=description,
            origin=origin,
            params_schema=params_schema,
            check=check,
            extra=extra,
            target=target,
            target_module=target_module,
        )

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def closest(self, name: str, n: int = 3) -> list[str]:
        return difflib.get_close_matches(str(name), self.names(), n=n, cutoff=0.5)

    def unknown_message(self, name: str) -> str:
        from jigsawkit.plugins import search_locations_text

        hint = self.closest(name)
        text = f"unknown {self.kind} '{name}'"
        if hint:
            text += "; did you mean " + " or ".join(f"'{h}'" for h in hint) + "?"
        text += f" (known: {', '.join(self.names()) or 'none'}; looked for in "
        return text + f"{search_locations_text()})"

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise UnknownComponentError(self.unknown_message(name))
        return self._entries[name]

    def build(self, name: str, *args: Any, **params: Any) -> Any:
        return self.get(name).build(*args, **params)


REGISTRIES: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}

backbones = REGISTRIES["backbone"]
pretexts = REGISTRIES["pretext"]
datasets = REGISTRIES["dataset"]
evaluators = REGISTRIES["evaluator"]
searches = REGISTRIES["search"]
trackers = REGISTRIES["tracker"]

register_backbone = backbones.register
register_pretext = pretexts.register
register_dataset = datasets.register
register_evaluator = evaluators.register
register_search = searches.register
register_tracker = trackers.register

_builtins_loaded = False


def load_builtins() -> None:
    """Import the light modules that register jigsawkit's own components (once)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    import jigsawkit.backbones  # noqa: F401
    import jigsawkit.data  # noqa: F401
    import jigsawkit.evaluators  # noqa: F401
    import jigsawkit.pretext  # noqa: F401
    import jigsawkit.search  # noqa: F401
    import jigsawkit.tracking  # noqa: F401


@contextlib.contextmanager
def registration_transaction() -> Iterator[None]:
    """All registrations inside the block stay, or (when it raises) none of them does:
    a plugin file that fails half-way leaves no component of its own behind."""
    saved = {kind: dict(reg._entries) for kind, reg in REGISTRIES.items()}
    try:
        yield
    except BaseException:
        for kind, reg in REGISTRIES.items():
            reg._entries = saved[kind]
        raise


def registry(kind: str) -> Registry:
    load_builtins()
    if kind not in REGISTRIES:
        raise UnknownComponentError(
            f"unknown component kind '{kind}'; kinds are {', '.join(KINDS)}"
        )
    return REGISTRIES[kind]

"""Registries: registration, origins, descriptions, errors; every registered entry is sound."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest

from jigsawkit.config.validate import validate_data
from jigsawkit.config.yaml_marks import Marks
from jigsawkit.errors import ConfigError, DuplicateComponentError, UnknownComponentError
from jigsawkit.registry import KINDS, REGISTRIES, Registry, registering_from, registry


def _factory(module: str | None = None, doc: str | None = None, name: str = "thing"):
    def factory(**params):
        return params

    factory.__name__ = name
    factory.__doc__ = doc
    if module is not None:
        factory.__module__ = module
    return factory


def test_every_kind_has_a_registry_and_a_decorator():
    import jigsawkit

    for kind in KINDS:
        assert registry(kind) is REGISTRIES[kind]
        assert registry(kind).kind == kind
        decorator = getattr(jigsawkit, f"register_{kind}")
        assert decorator.__self__ is REGISTRIES[kind]


def test_unknown_kind():
    with pytest.raises(UnknownComponentError, match="kinds are backbone, pretext"):
        registry("backbones")


def test_decorator_inside_the_package_is_built_in():
    reg = Registry("backbone")
    reg.register("inside")(_factory(module="jigsawkit.backbones.fake", doc="Inside."))
    assert reg.get("inside").origin == "built-in"


def test_decorator_outside_the_package_records_the_source_file():
    reg = Registry("backbone")

    @reg.register()
    def outside_net(width: int = 4):
        """A network defined in a test file."""
        return width

    entry = reg.get("outside_net")
    assert Path(entry.origin).resolve() == Path(__file__).resolve()
    assert entry.name == "outside_net", "the name defaults to the function's name"
    assert entry.kind == "backbone"


def test_origin_while_loading_a_plugin_or_package():
    reg = Registry("dataset")
    with registering_from("/somewhere/plugins/mine.py"):
        reg.register("from_file")(_factory(module="jigsawkit.fake"))
        with registering_from("package tinyplug"):
            reg.register("from_package")(_factory())
        reg.register("again_file")(_factory())
    reg.register("after")(_factory(module="jigsawkit.fake"))
    assert reg.get("from_file").origin == "/somewhere/plugins/mine.py"
    assert reg.get("from_package").origin == "package tinyplug"
    assert reg.get("again_file").origin == "/somewhere/plugins/mine.py"
    assert reg.get("after").origin == "built-in"


def test_description_is_the_docstrings_first_line():
    reg = Registry("evaluator")
    reg.register("a")(_factory(doc="\n\n   First line here.\n\n   More details follow.\n"))
    reg.register("b", description="Given explicitly.")(_factory(doc="Docstring."))
    reg.register("c")(_factory(doc=None))
    assert reg.get("a").description == "First line here."
    assert reg.get("b").description == "Given explicitly."
    assert reg.get("c").description == ""


def test_schema_is_normalized_and_not_shared():
    reg = Registry("tracker")
    given = {"properties": {"mode": {"enum": ["a", "b"], "default": "a"}}}
    reg.register("t", schema=given)(_factory())
    reg.register("open", schema={"additionalProperties": True})(_factory())
    reg.register("bare")(_factory())
    schema = reg.get("t").params_schema
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["properties"]["mode"]["default"] == "a"
    assert "type" not in given, "the caller's schema is copied, not modified"
    assert reg.get("open").params_schema["additionalProperties"] is True
    assert reg.get("bare").params_schema == {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }


def test_build_passes_arguments_and_returns_the_decorated_function():
    reg = Registry("pretext")
    factory = _factory()
    schema = {"properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}
    assert reg.register("p", schema=schema)(factory) is factory
    assert reg.build("p", a=1, b="x") == {"a": 1, "b": "x"}
    assert reg.build("p", a=1, backbone="net") == {"a": 1, "backbone": "net"}, "built around"
    assert "p" in reg and len(reg) == 1 and reg.names() == ["p"]
    reg.unregister("p")
    assert "p" not in reg


def test_duplicate_name_names_both_origins():
    reg = Registry("backbone")
    with registering_from("/plugins/first.py"):
        reg.register("net")(_factory())
    with registering_from("package second"), pytest.raises(DuplicateComponentError) as info:
        reg.register("net")(_factory())
    message = str(info.value)
    assert "backbone 'net'" in message
    assert "/plugins/first.py" in message and "package second" in message
    assert "\n" not in message
    assert reg.get("net").origin == "/plugins/first.py", "the first registration is kept"


def test_duplicate_of_a_built_in_is_refused():
    name = registry("backbone").names()[0]
    with registering_from("/tmp/plugins/clash.py"), pytest.raises(DuplicateComponentError) as info:
        registry("backbone").register(name)(_factory())
    assert "built-in" in str(info.value) and "/tmp/plugins/clash.py" in str(info.value)


def test_unknown_name_suggests_and_says_where_components_are_looked_for():
    reg = Registry("backbone")
    for name in ("resnet18", "resnet50", "cfn"):
        reg.register(name)(_factory())
    with pytest.raises(UnknownComponentError) as info:
        reg.get("resnet19")
    message = str(info.value)
    assert message.startswith("unknown backbone 'resnet19'; did you mean 'resnet18'")
    assert "known: cfn, resnet18, resnet50" in message
    assert "built-ins" in message and "--plugins" in message and "JIGSAWKIT_PLUGINS" in message
    assert "jigsawkit.plugins" in message
    with pytest.raises(UnknownComponentError) as info:
        reg.build("zzzzzz")
    assert "did you mean" not in str(info.value)


def test_empty_registry_says_none_known():
    with pytest.raises(UnknownComponentError, match=r"known: none"):
        Registry("search").get("grid")


# --- every registered component, whatever registered it -------------------------------


def _all_entries():
    return [entry for kind in KINDS for entry in registry(kind).entries()]


ENTRIES = _all_entries()


def _defaults(schema: dict) -> dict:
    return {
        k: copy.deepcopy(s["default"]) for k, s in schema["properties"].items() if "default" in s
    }


def _property_schemas(schema: dict, path: str = ""):
    """Every (dotted key, property schema) pair, nested object properties included."""
    for key, sub in (schema.get("properties") or {}).items():
        if isinstance(sub, dict):
            yield f"{path}{key}", sub
            yield from _property_schemas(sub, f"{path}{key}.")


def test_some_components_are_built_in():
    kinds = {e.kind for e in ENTRIES if e.origin == "built-in"}
    assert {"backbone", "pretext", "dataset", "evaluator", "tracker"} <= kinds


@pytest.mark.parametrize("entry", ENTRIES, ids=[f"{e.kind}:{e.name}" for e in ENTRIES])
def test_registered_entry_is_sound(entry):
    schema = entry.params_schema
    jsonschema.Draft202012Validator.check_schema(schema)
    assert entry.description.strip(), f"{entry.kind} {entry.name} has no description"
    assert "\n" not in entry.description
    assert schema.get("type") == "object"
    for key, sub in _property_schemas(schema):
        if "default" in sub:
            problems = list(jsonschema.Draft202012Validator(sub).iter_errors(sub["default"]))
            assert not problems, f"default of {key} breaks its own schema: {problems[0].message}"
    # The defaults alone are a valid parameter set (required keys aside).
    lenient = {k: v for k, v in schema.items() if k != "required"}
    jsonschema.Draft202012Validator(lenient).validate(_defaults(schema))


@pytest.mark.parametrize("entry", ENTRIES, ids=[f"{e.kind}:{e.name}" for e in ENTRIES])
def test_entry_resolves_from_its_defaults(entry):
    """A selection naming only the component validates, defaults filled, checks passing."""
    if entry.params_schema.get("required"):
        pytest.skip(f"needs {entry.params_schema['required']}")
    schema = {
        "type": "object",
        "properties": {
            "slot": {
                "x-component": entry.kind,
                "type": ["object", "string"],
                "required": ["name"],
                "properties": {"name": {"type": "string"}},
            }
        },
    }
    try:
        resolved = validate_data({"slot": {"name": entry.name}}, Marks("t.yaml"), schema)
    except ConfigError as error:
        pytest.fail(f"{entry.kind} {entry.name} defaults do not resolve: {error}")
    assert resolved["slot"]["name"] == entry.name
    for key, value in _defaults(entry.params_schema).items():
        assert key in resolved["slot"]
        if not isinstance(value, dict):
            assert resolved["slot"][key] == value

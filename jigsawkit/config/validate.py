"""Validation of experiment data: schema assembly, defaults, readable errors, cross-field checks.

The schema a file is checked against is the core schema with every component slot
replaced by the parameter schema of the component the file selects there, so a plugin's
parameters are validated exactly like a built-in's. All problems are collected and
reported together, each as ``file:line:col: dotted.key: message``.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from jigsawkit.config.limits import INT64_MAX, INT64_MIN
from jigsawkit.config.yaml_marks import KeyPath, Marks, dotted
from jigsawkit.errors import ConfigError
from jigsawkit.registry import Entry, registry


def _has_type(schema: dict, name: str) -> bool:
    kind = schema.get("type")
    return kind == name or (isinstance(kind, list) and name in kind)


@dataclass
class _Assembly:
    marks: Marks
    problems: list[tuple[KeyPath, str, bool]] = field(default_factory=list)
    components: list[tuple[KeyPath, Entry]] = field(default_factory=list)

    def problem(self, path: KeyPath, message: str, at_key: bool = False) -> None:
        self.problems.append((tuple(path), message, at_key))

    def walk(self, schema: dict, value: Any, path: KeyPath) -> tuple[dict, Any]:
        """Return (schema with components substituted, value with defaults filled)."""
        if "x-component" in schema:
            schema, value = self._component(schema, value, path)
        if _has_type(schema, "object") and isinstance(value, dict) and "properties" in schema:
            props = {}
            for key, sub in schema["properties"].items():
                if key not in value and isinstance(sub, dict) and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                if key in value and isinstance(sub, dict):
                    props[key], value[key] = self.walk(sub, value[key], path + (key,))
                else:
                    props[key] = sub
            schema = {**schema, "properties": props}
            # Resolved configs read in schema order (name first), unknown keys last.
            ordered = {k: value[k] for k in ("name", *props) if k in value}
            value = {**ordered, **{k: v for k, v in value.items() if k not in ordered}}
        elif _has_type(schema, "array") and isinstance(value, list):
            items = schema.get("items")
            if isinstance(items, dict):
                prefix = []
                for i, item in enumerate(value):
                    sub, value[i] = self.walk(items, item, path + (i,))
                    prefix.append(sub)
                schema = {**schema, "prefixItems": prefix}
        return schema, value

    def _component(self, slot: dict, value: Any, path: KeyPath) -> tuple[dict, Any]:
        kind = slot["x-component"]
        if isinstance(value, str):  # shorthand: `trackers: [console, wandb]`
            value = {"name": value}
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return {k: v for k, v in slot.items() if k != "x-component"}, value
        reg = registry(kind)
        name = value["name"]
        if name not in reg:
            self.problem(path + ("name",), reg.unknown_message(name))
            return {}, value
        entry = reg.get(name)
        schema = copy.deepcopy(entry.params_schema)
        schema["properties"] = {
            "name": {"type": "string", "const": name},
            **schema.get("properties", {}),
        }
        self.components.append((path, entry))
        return schema, value


def run_relative_problem(text: str) -> str | None:
    """Why ``text`` cannot name a file a run writes, or None. Such a path stays inside the
    run directory: relative, no ``..``, no ``~``, and not one of the run's own files."""
    from pathlib import PurePosixPath, PureWindowsPath

    from jigsawkit.paths import NAME_MAX
    from jigsawkit.rundir import is_run_file

    expected = "expected a path relative to the run directory, e.g. feature_extractor.pt"
    parts = PurePosixPath(text).parts
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).anchor or text.startswith("~"):
        return f"{expected}; found the absolute path {text!r} (files a run writes stay inside it)"
    if ".." in parts:
        return f"{expected}; found {text!r}, whose '..' leaves the run directory"
    if not parts or text.endswith("/") or "\0" in text:
        return f"{expected}; found {text!r}, which names no file"
    if is_run_file(parts[0]):
        return f"{expected}; found {text!r}, which would overwrite the run's own {parts[0]}"
    too_long = [part for part in parts if len(part.encode()) > NAME_MAX]
    if too_long:
        return f"{expected}; a file name is limited to {NAME_MAX} bytes, found {text!r}"
    return None


def _run_relative(validator: Any, wanted: Any, instance: Any, schema: dict) -> Iterator:
    if wanted and isinstance(instance, str):
        problem = run_relative_problem(instance)
        if problem:
            yield jsonschema.ValidationError(problem)


# `x-run-relative: true` marks a string naming a file the run writes (pretrain.export; a
# plugin may use it too): checked here so that no experiment file can write elsewhere.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"x-run-relative": _run_relative}
)


def unusable_numbers(value: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, str]]:
    """Numbers no run can use, wherever they stand: NaN and infinite floats (``.nan``,
    ``.inf``, ``1.0e+309``) and integers beyond 64 bits (they overflow in numpy/torch)."""
    if isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        yield path, f"expected a finite number, found {value}"
    elif isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        yield path, f"expected an integer within 64 bits (|n| < 2**63), found {value}"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from unusable_numbers(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from unusable_numbers(item, path + (index,))


def describe(schema: Any) -> str:
    """A short human description of what a schema accepts."""
    if not isinstance(schema, dict):
        return "a valid value"
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    for combo in ("anyOf", "oneOf"):
        if combo in schema:
            return " or ".join(describe(s) for s in schema[combo])
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    names = {
        "integer": "an integer",
        "number": "a number",
        "string": "a string",
        "boolean": "true or false",
        "object": "a mapping",
        "array": "a list",
        "null": "null",
    }
    text = " or ".join(names.get(k, k) for k in kinds) or "a valid value"
    if "array" in kinds and isinstance(schema.get("items"), dict):
        text = text.replace("a list", f"a list of {_plural(describe(schema['items']))}")
    bounds = []
    if "minimum" in schema:
        bounds.append(f">= {schema['minimum']}")
    if "exclusiveMinimum" in schema:
        bounds.append(f"> {schema['exclusiveMinimum']}")
    if "maximum" in schema:
        bounds.append(f"<= {schema['maximum']}")
    if "exclusiveMaximum" in schema:
        bounds.append(f"< {schema['exclusiveMaximum']}")
    if bounds:
        text += " " + " and ".join(bounds)
    return text


def _plural(text: str) -> str:
    """``a mapping or a string`` -> ``mappings or strings``."""
    if " or " in text:
        return " or ".join(_plural(part) for part in text.split(" or "))
    for article in ("an ", "a "):
        if text.startswith(article):
            # `an integer >= 1` -> `integers >= 1`: the noun takes the s, not the bound.
            noun, space, rest = text[len(article) :].partition(" ")
            return noun + "s" + space + rest
    return text


def _found(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value)
    return repr(value)


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=2, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def error_messages(error: jsonschema.ValidationError) -> list[tuple[KeyPath, str, bool]]:
    """``(key path, message, at_key)`` for one JSON Schema error, in jigsawkit's wording."""
    path = tuple(error.absolute_path)
    kind = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        known = list(schema.get("properties", {}))
        out = []
        for key in error.instance:
            if key not in known:
                hint = _did_you_mean(key, known)
                allowed = ", ".join(known) if len(known) <= 24 else f"{len(known)} keys"
                out.append((path + (key,), f"unknown key{hint or f' (allowed: {allowed})'}", True))
        return out
    if kind == "required":
        missing = [k for k in error.validator_value if k not in (error.instance or {})]
        return [(path, f"missing required key {', '.join(repr(k) for k in missing)}", False)]
    if kind == "enum":
        hint = _did_you_mean(error.instance, [str(v) for v in error.validator_value])
        return [(path, f"expected {describe(schema)}, found {_found(error.instance)}{hint}", False)]
    if kind == "const":
        return [
            (path, f"expected {error.validator_value!r}, found {_found(error.instance)}", False)
        ]
    if kind in (
        "type",
        "anyOf",
        "oneOf",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
    ):
        return [(path, f"expected {describe(schema)}, found {_found(error.instance)}", False)]
    if kind == "pattern":
        return [
            (
                path,
                f"expected a string matching {error.validator_value}, "
                f"found {_found(error.instance)}",
                False,
            )
        ]
    if kind in ("minItems", "maxItems", "minLength", "maxLength", "uniqueItems"):
        return [
            (path, f"{kind} {error.validator_value} not met by {_found(error.instance)}", False)
        ]
    return [(path, " ".join(error.message.split()), False)]


def _format(marks: Marks, path: KeyPath, message: str, at_key: bool) -> str:
    return f"{marks.where(path, key=at_key)}: {dotted(path)}: {message}"


def _problems(data: dict, marks: Marks, schema: dict) -> tuple[dict, list]:
    """``data`` with defaults filled (components substituted) and every problem found by
    the schema and by the components' cross-field checks, as ``(path, message, at_key)``."""
    data = copy.deepcopy(data)
    assembly = _Assembly(marks)
    assembled, data = assembly.walk(schema, data, ())
    found: list[tuple[KeyPath, str, bool]] = list(assembly.problems)
    validator = _Validator(assembled)
    schema_errors = sorted(
        validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))
    )
    for error in schema_errors:
        found.extend(error_messages(error))
    # JSON Schema lets NaN through every bound (all comparisons are false): one line per
    # value, the schema's own when it has one (`.nan` where a string is expected).
    wrong = {p for p, _, _ in found}
    found.extend((p, m, False) for p, m in unusable_numbers(data) if p not in wrong)
    bad_paths = [p for p, _, _ in found]

    def clean(path: KeyPath) -> bool:
        return not any(bad[: len(path)] == path for bad in bad_paths)

    for path, entry in assembly.components:
        if entry.check is None or not clean(path):
            continue
        params = _get(data, path)
        for key, message in entry.run_check(params):
            where = path + _split_key(key)
            found.append((where, message + marks.override_note(where, path), False))
    return data, found


def validate_data(
    data: dict,
    marks: Marks,
    schema: dict,
    extra_checks: list | None = None,
) -> dict:
    """Validate ``data`` against ``schema`` (components substituted), fill defaults,
    run component and core cross-field checks; raise ConfigError listing every problem."""
    data, found = _problems(data, marks, schema)
    if not found:
        for check in extra_checks or []:
            for where, message in check(data):
                where = tuple(where)
                found.append((where, message + marks.override_note(where, where[:1]), False))
    if found:
        lines = [_format(marks, p, m, k) for p, m, k in found]
        unique = sorted(dict.fromkeys(lines), key=position_key)
        raise ConfigError(unique)
    return data


def components_in(data: dict, schema: dict) -> list[tuple[KeyPath, Entry]]:
    """Every registered component that ``data`` (validated against ``schema``) selects,
    with the key path of its selection."""
    assembly = _Assembly(Marks(""))
    assembly.walk(schema, copy.deepcopy(data), ())
    return assembly.components


def resolve_params(entry: Entry, params: dict) -> dict:
    """The parameters ``entry`` is built with: ``params`` validated against its schema,
    every default filled (nested component selections too) and its ``check()`` passed,
    exactly as an experiment file's selection of it is resolved.

    Raises ``ConfigError`` as one line naming the component and every wrong key.
    """
    data, found = _problems(
        dict(params), Marks(f"{entry.kind} '{entry.name}'"), entry.params_schema
    )
    if not found:
        found = [(_split_key(key), message, False) for key, message in entry.run_check(data)]
    if found:
        problems = "; ".join(dict.fromkeys(f"{dotted(p)}: {m}" for p, m, _ in found))
        raise ConfigError(f"{entry.kind} '{entry.name}': {problems}")
    return data


def position_key(line: str) -> tuple:
    parts = line.split(":")
    try:
        return (0, int(parts[1]), int(parts[2]))
    except (IndexError, ValueError):
        return (1, 0, 0)


def _split_key(key: str) -> KeyPath:
    return tuple(int(p) if p.isdigit() else p for p in str(key).split(".") if p)


def _get(data: Any, path: KeyPath) -> Any:
    for part in path:
        data = data[part]
    return data

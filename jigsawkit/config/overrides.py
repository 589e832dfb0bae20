"""``--set KEY=VALUE`` overrides: dotted keys (``evaluate[0].epochs`` or ``evaluate.0.epochs``),
values parsed as YAML scalars/flow collections (``--set evaluate[0].lr=[0.1,0.01]``)."""

from __future__ import annotations

import copy
import re
from typing import Any

from jigsawkit.config.yaml_marks import KeyPath, Marks, dotted, parse_yaml_text
from jigsawkit.errors import ConfigError

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_key(key: str, option: str | None = None) -> KeyPath:
    """``evaluate[0].lr`` -> ``("evaluate", 0, "lr")``; ``option`` is the text errors quote."""
    where = f"--set {key if option is None else option}"
    parts: list[str | int] = []
    pos = 0
    key = key.strip()
    while pos < len(key):
        if key[pos] == ".":
            pos += 1
            continue
        match = _PART.match(key, pos)
        if not match:
            raise ConfigError(f"{where}: cannot read the key at '{key[pos:]}'")
        name, index = match.groups()
        if index is not None:
            parts.append(int(index))
        elif name.isdigit():
            parts.append(int(name))
        else:
            parts.append(name)
        pos = match.end()
    if not parts:
        raise ConfigError(f"{where}: empty key; expected KEY=VALUE, e.g. pretrain.epochs=2")
    return tuple(parts)


def parse_override(text: str) -> tuple[KeyPath, Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. --set pretrain.epochs=2")
    key, raw = text.split("=", 1)
    path = parse_key(key, option=text)
    if not raw.strip():
        return path, ""
    try:
        # The file's loader, so a value has the same limits (aliases, depth, tags).
        value, _ = parse_yaml_text(raw, "value")
    except ConfigError as error:
        problem = re.sub(
            r"^value:1:(\d+): (\(top level\): )?", r"at column \1: ", error.problems[0]
        )
        problem = re.sub(r"^value:(\d+):(\d+): ", r"at line \1, column \2: ", problem)
        raise ConfigError(f"--set {text}: cannot read the value {problem}") from None
    return path, value


def _component_params(schema: Any, value: Any) -> Any:
    """Inside a component slot, the schema of the selected component's parameters."""
    if not (isinstance(schema, dict) and "x-component" in schema):
        return schema
    from jigsawkit.registry import registry

    reg = registry(schema["x-component"])
    name = value.get("name") if isinstance(value, dict) else None
    return reg.get(name).params_schema if isinstance(name, str) and name in reg else None


def _child_schema(schema: Any, value: Any, part: str | int) -> Any:
    """The schema of ``value[part]`` given the schema of ``value`` (None: unknown)."""
    schema = _component_params(schema, value)
    if not isinstance(schema, dict):
        return None
    if isinstance(part, int):
        items = schema.get("items")
        return items if isinstance(items, dict) else None
    return schema.get("properties", {}).get(part)


def _new_section(schema: Any, prefix: KeyPath, nxt: str | int, text: str) -> dict | list:
    """A section the file does not have starts from the schema's default (so that
    ``--set backbone.width=8`` keeps the default backbone), else empty; a key whose schema
    takes no mapping (or list) is refused rather than turned into one."""
    wanted = list if isinstance(nxt, int) else dict
    if isinstance(schema, dict) and "x-component" not in schema and "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if ("array" if wanted is list else "object") not in kinds:
            from jigsawkit.config.validate import describe

            what = f"index [{nxt}] does not exist" if wanted is list else f"'{nxt}' cannot be set"
            raise ConfigError(
                f"--set {text}: {what}: {dotted(prefix)} takes {describe(schema)}, "
                f"not a {'list' if wanted is list else 'mapping'}; "
                f"set it whole (--set {dotted(prefix)}=VALUE)"
            )
    default = schema.get("default") if isinstance(schema, dict) else None
    return copy.deepcopy(default) if isinstance(default, wanted) else wanted()


def _found(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    if isinstance(value, str):
        return f"the string {value if len(value) <= 40 else value[:37] + '...'!r}"
    if isinstance(value, list):
        return "a list"
    return f"the number {value!r}" if isinstance(value, int | float) else repr(value)


def _descend(node: Any, prefix: KeyPath, nxt: str | int, schema: Any, text: str) -> None:
    """Make ``node[part]`` something ``nxt`` can be looked up in, or refuse in one line.

    A component given by name (``backbone: cfn``) becomes ``{name: cfn}`` so that
    ``--set backbone.width=8`` can add a parameter; any other value is never silently
    turned into a mapping (``--set name.sub=1`` is an error, not ``name: {sub: 1}``)."""
    part, where = prefix[-1], dotted(prefix)
    value = node[part]
    if isinstance(nxt, int):
        if isinstance(value, list):
            return
        raise ConfigError(
            f"--set {text}: index [{nxt}] does not exist: {where} is "
            f"{_found(value) if not isinstance(value, dict) else 'a mapping'}, not a list"
        )
    if isinstance(value, dict):
        return
    if isinstance(value, str) and isinstance(schema, dict) and "x-component" in schema:
        node[part] = {"name": value}
        return
    raise ConfigError(
        f"--set {text}: '{nxt}' is not inside a mapping: {where} is {_found(value)}; "
        f"set it whole (--set {where}=VALUE)"
    )


def apply_overrides(
    data: dict,
    overrides: list[str],
    marks: Marks,
    schema: dict | None = None,
    within: str | None = None,
) -> dict:
    """Apply overrides in order; each becomes its own location in error messages.

    ``schema``: the schema of ``data`` (default: the experiment's core schema); it says
    where a component may be given by name and what a missing section defaults to.
    ``within``: keys may start with this name (``experiment.pretrain.epochs=2`` on a
    sweep file sets the experiment's ``pretrain.epochs``); messages quote the option as
    the user wrote it."""
    if schema is None:
        from jigsawkit.config.core_schema import CORE_SCHEMA

        schema = CORE_SCHEMA
    for text in overrides or []:
        path, value = parse_override(text)
        if within is not None and len(path) > 1 and path[0] == within:
            path = path[1:]
        node: Any = data
        node_schema: Any = schema
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            child_schema = _child_schema(node_schema, node, part)
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise ConfigError(f"--set {text}: index [{part}] does not exist")
            else:
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {text}: '{part}' is not inside a mapping")
                if part not in node or node[part] is None:
                    node[part] = _new_section(child_schema, path[: i + 1], nxt, text)
                    # The new mapping comes from this option: problems in it point here.
                    marks.set_override(path[: i + 1], f"--set {text}")
            _descend(node, path[: i + 1], nxt, child_schema, text)
            node, node_schema = node[part], child_schema
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last > len(node):
                raise ConfigError(f"--set {text}: index [{last}] does not exist")
            if last == len(node):
                node.append(value)
            else:
                node[last] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {text}: '{last}' is not inside a mapping")
        marks.set_override(path, f"--set {text}")
    return data

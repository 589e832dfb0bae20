"""``--set KEY=VALUE`` overrides: dotted keys (``evaluate[0].epochs`` or ``evaluate.0.epochs``),
values parsed as YAML scalars/flow collections (``--set evaluate[0].lr=[0.1,0.01]``)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from jigsawkit.config.yaml_marks import KeyPath, Marks
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
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"--set {text}: cannot read the value: {' '.join(str(exc).split())}"
        ) from None
    return path, value


def _expand_shorthand(node: dict | list, part: str | int, nxt: str | int) -> None:
    """A component given by name (``backbone: cfn``) becomes ``{name: cfn}`` so that
    ``--set backbone.width=8`` can add a parameter to it."""
    if isinstance(node[part], str) and isinstance(nxt, str):
        node[part] = {"name": node[part]}


def apply_overrides(data: dict, overrides: list[str], marks: Marks) -> dict:
    """Apply overrides in order; each becomes its own location in error messages."""
    for text in overrides or []:
        path, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise ConfigError(f"--set {text}: index [{part}] does not exist")
                _expand_shorthand(node, part, nxt)
                node = node[part]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: '{part}' is not inside a mapping")
            if part not in node or node[part] is None:
                node[part] = [] if isinstance(nxt, int) else {}
                # The new mapping comes from this option: problems in it point here.
                marks.set_override(path[: i + 1], f"--set {text}")
            _expand_shorthand(node, part, nxt)
            node = node[part]
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

"""Load YAML safely and remember where every key and value stands (line, column).

``load_yaml_with_marks(path)`` returns the data (plain dicts, lists, scalars, built by
PyYAML's *safe* constructor only) and a ``Marks`` map from key paths such as
``("pretrain", "epochs")`` or ``("evaluate", 0, "lr")`` to ``(line, column)``, 1-based.
Problems a YAML parser hides are errors here: duplicate keys, tabs, non-UTF-8 bytes,
an empty file, a top level that is not a mapping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from jigsawkit.errors import ConfigError

KeyPath = tuple  # of str | int


class Marks:
    """Positions of keys and values, looked up by key path (falling back to the parent)."""

    def __init__(self, source: str):
        self.source = source
        self.value_marks: dict[KeyPath, tuple[int, int]] = {}
        self.key_marks: dict[KeyPath, tuple[int, int]] = {}
        self.overrides: dict[KeyPath, str] = {}

    def set_override(self, path: KeyPath, text: str) -> None:
        """Values given on the command line are located by the option that set them."""
        self.overrides[tuple(path)] = text

    def where(self, path: KeyPath, key: bool = False) -> str:
        """``file:line:col`` of the value at ``path`` (or of its key), else of its parent."""
        path = tuple(path)
        table = self.key_marks if key else self.value_marks
        for i in range(len(path), 0, -1):
            if path[:i] in self.overrides:
                return self.overrides[path[:i]]
        while True:
            if path in table:
                line, col = table[path]
                return f"{self.source}:{line}:{col}"
            if path in self.value_marks:
                line, col = self.value_marks[path]
                return f"{self.source}:{line}:{col}"
            if not path:
                return f"{self.source}:1:1"
            path = path[:-1]


def dotted(path: KeyPath) -> str:
    """``("evaluate", 0, "lr")`` -> ``evaluate[0].lr``; the empty path -> ``(top level)``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_VALUES = "experiment files hold plain mappings, lists and scalars"


def _tag_text(tag: str) -> str:
    """``tag:yaml.org,2002:int`` -> ``!!int``, as it is written in the file."""
    prefix = "tag:yaml.org,2002:"
    return "!!" + tag[len(prefix) :] if tag.startswith(prefix) else tag


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    def __init__(self, marks: Marks):
        self.marks = marks
        self.constructor = yaml.SafeLoader("")
        self.problems: list[str] = []

    def _problem(self, node: yaml.Node, path: KeyPath, message: str) -> None:
        line, col = _mark(node)
        self.problems.append(f"{self.marks.source}:{line}:{col}: {dotted(path)}: {message}")

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.marks.value_marks[path] = _mark(node)
        # Mappings and lists are built here, not by PyYAML, so a tag on them (e.g.
        # !!python/object) would be silently dropped: refuse it instead.
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
            self._problem(
                node, path, f"unsupported YAML tag {_tag_text(node.tag)}; {_PLAIN_VALUES}"
            )
            return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(child, path + (i,)) for i, child in enumerate(node.value)]
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError:
            self._problem(
                node, path, f"unsupported YAML tag {_tag_text(node.tag)}; {_PLAIN_VALUES}"
            )
        except Exception:  # e.g. `!!int abc`: PyYAML's constructors raise ValueError & co.
            self._problem(node, path, f"cannot read {node.value!r} as {_tag_text(node.tag)}")
        return None

    def _key(self, node: yaml.Node, path: KeyPath) -> str | int | float | bool | None:
        """The key of a mapping entry, or None (and a problem) when it is not a plain name."""
        key = None
        if isinstance(node, yaml.ScalarNode):
            try:
                key = self.constructor.construct_object(node, deep=True)
            except Exception:  # a tagged key PyYAML cannot build: reported below
                key = node
        if isinstance(key, str | int | float | bool):
            return key
        found = {yaml.MappingNode: "a mapping", yaml.SequenceNode: "a list"}.get(type(node))
        found = found or ("null" if key is None else f"{node.value!r} tagged {_tag_text(node.tag)}")
        self._problem(node, path, f"keys must be plain names, found {found}")
        return None

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict:
        explicit = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
        # flatten_mapping puts the pairs merged in with `<<: *anchor` first; the keys
        # written in this mapping may override those (YAML's merge rule), not each other.
        self.constructor.flatten_mapping(node)
        merged = len(node.value) - explicit
        result: dict = {}
        from_merge: set[str] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            key = self._key(key_node, path)
            if key is None:
                continue
            key = str(key)
            child = path + (key,)
            if key in from_merge or index < merged:
                result.pop(key, None)
                from_merge.discard(key)
                if index < merged:
                    from_merge.add(key)
            if key in result:
                line, col = _mark(key_node)
                first_line, _ = self.marks.key_marks[child]
                self.problems.append(
                    f"{self.marks.source}:{line}:{col}: {dotted(child)}: duplicate key "
                    f"(first given on line {first_line}); give each key once"
                )
                continue
            self.marks.key_marks[child] = _mark(key_node)
            result[key] = self.build(value_node, child)
        return result


def parse_yaml_text(text: str, source: str) -> tuple[Any, Marks]:
    """Parse YAML text; raise ConfigError with the location for syntax problems."""
    marks = Marks(source)
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.lstrip(" ")
        if stripped.startswith("\t"):
            raise ConfigError(
                f"{source}:{number}:{len(line) - len(stripped) + 1}: tab used for "
                "indentation; YAML needs spaces"
            )
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    if node is None:
        return None, marks
    builder = _Builder(marks)
    try:
        data = builder.build(node, ())
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(f"{where}: {' '.join(str(exc.problem).split())}") from None
    if builder.problems:
        raise ConfigError(builder.problems)
    return data, marks


def read_text_file(path: str | Path, what: str = "experiment file") -> str:
    """Read a UTF-8 text file, turning every way it can fail into one clear line."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such {what}")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML {what}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"{path}:{line}:{col}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); "
            "save the file as UTF-8"
        ) from None


def load_yaml_mapping(path: str | Path, what: str = "experiment file") -> tuple[dict, Marks]:
    """Load a YAML file whose top level must be a mapping."""
    text = read_text_file(path, what)
    data, marks = parse_yaml_text(text, str(path))
    if data is None:
        raise ConfigError(f"{path}:1:1: empty {what}; expected a mapping of keys (name, ...)")
    if not isinstance(data, dict):
        found = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise ConfigError(f"{path}:1:1: (top level): expected a mapping of keys, found {found}")
    return data, marks

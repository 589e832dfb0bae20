"""Load YAML safely and remember where every key and value stands (line, column).

``load_yaml_with_marks(path)`` returns the data (plain dicts, lists, scalars, built by
PyYAML's *safe* constructor only) and a ``Marks`` map from key paths such as
``("pretrain", "epochs")`` or ``("evaluate", 0, "lr")`` to ``(line, column)``, 1-based.
Problems a YAML parser hides are errors here: duplicate keys, tabs, non-UTF-8 bytes,
control characters, an empty file, a top level that is not a mapping.

Loading is bounded, so a hostile file (an alias bomb, a recursive alias, thousands of nested
brackets, a huge file) ends in one line naming the limit, not in minutes, gigabytes or a
RecursionError: at most ``MAX_FILE_BYTES`` bytes, ``MAX_DEPTH`` levels of nesting (counted
after aliases are expanded) and ``MAX_VALUES`` values after aliases and merges are expanded.
The text is tokenised by libyaml (PyYAML's C parser, which keeps line marks) when it is
available, and composed into nodes by PyYAML's composer from those events.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.reader import Reader
from yaml.resolver import Resolver

from jigsawkit.errors import ConfigError

KeyPath = tuple  # of str | int

# Experiment and sweep files are a few kilobytes; these limits are far above any real one
# and far below what would take a noticeable time or memory to load.
MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 20_000

# libyaml is about 10x faster than PyYAML's pure-Python scanner and keeps the same marks.
_EVENT_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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

    def override_note(self, path: KeyPath, scope: KeyPath) -> str:
        """`` (with --set ...)`` when a cross-field problem located in the file at ``path``
        comes from values set by ``--set`` inside ``scope`` (``--set pretext.grid=2`` makes
        the file's ``pretext.permutations.count`` too large), else ``""``."""
        path, scope = tuple(path), tuple(scope)
        if any(path[:i] in self.overrides for i in range(1, len(path) + 1)):
            return ""  # located by its own --set option already
        near = [text for key, text in self.overrides.items() if key[: len(scope)] == scope]
        return f" (with {', '.join(dict.fromkeys(near))})" if near else ""

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
        self.values = 0
        self.open: set[int] = set()  # ids of the collections being built (cycle check)

    def _problem(self, node: yaml.Node, path: KeyPath, message: str) -> None:
        line, col = _mark(node)
        self.problems.append(f"{self.marks.source}:{line}:{col}: {dotted(path)}: {message}")

    def _limit(self, node: yaml.Node, path: KeyPath, message: str) -> ConfigError:
        line, col = _mark(node)
        return ConfigError(f"{self.marks.source}:{line}:{col}: {dotted(path)}: {message}")

    def _count(self, node: yaml.Node, path: KeyPath) -> None:
        # Aliases share nodes, so a few lines can stand for billions of values (an
        # "alias bomb"): count every value as it is expanded and stop early.
        self.values += 1
        if self.values > MAX_VALUES:
            raise self._limit(
                node,
                path,
                f"more than {MAX_VALUES} values once aliases (*name) and merges (<<) are "
                "expanded; experiment files are limited to that (an alias bomb?)",
            )

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self._count(node, path)
        if len(path) > MAX_DEPTH:
            raise self._limit(
                node,
                path[:3],
                f"nested deeper than {MAX_DEPTH} levels once aliases (*name) are expanded "
                "(limit); experiment files need a few",
            )
        self.marks.value_marks[path] = _mark(node)
        # Mappings and lists are built here, not by PyYAML, so a tag on them (e.g.
        # !!python/object) would be silently dropped: refuse it instead.
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
            self._problem(
                node, path, f"unsupported YAML tag {_tag_text(node.tag)}; {_PLAIN_VALUES}"
            )
            return None
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            if id(node) in self.open:
                raise self._limit(
                    node, path, f"recursive alias: this value contains itself; {_PLAIN_VALUES}"
                )
            self.open.add(id(node))
            try:
                if isinstance(node, yaml.MappingNode):
                    return self._mapping(node, path)
                return [self.build(child, path + (i,)) for i, child in enumerate(node.value)]
            finally:
                self.open.discard(id(node))
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

    def _pairs(self, node: yaml.MappingNode, path: KeyPath, depth: int = 0) -> list:
        """The mapping's entries with `<<: *anchor` merges expanded, merged ones first, in
        the order PyYAML's flatten_mapping gives them, each one counted against MAX_VALUES."""
        merged: list = []
        explicit: list = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                explicit.append((key_node, value_node))
                continue
            sources = (
                value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            )
            parts = []
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    raise self._limit(
                        source, path, "a merge (<<) takes a mapping or a list of mappings"
                    )
                if id(source) in self.open:
                    raise self._limit(source, path, "recursive merge (<<): a mapping merges itself")
                if depth >= MAX_DEPTH:
                    raise self._limit(
                        source, path, f"merges (<<) nested deeper than {MAX_DEPTH} levels (limit)"
                    )
                self.open.add(id(source))
                try:
                    parts.append(self._pairs(source, path, depth + 1))
                finally:
                    self.open.discard(id(source))
            for part in reversed(parts):
                merged.extend(part)
        for key_node, _ in merged:
            self._count(key_node, path)
        return merged + explicit

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict:
        # Pairs merged in with `<<: *anchor` come first; the keys written in this mapping
        # may override those (YAML's merge rule), not each other.
        pairs = self._pairs(node, path)
        merged = len(pairs) - sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
        result: dict = {}
        from_merge: set[str] = set()
        for index, (key_node, value_node) in enumerate(pairs):
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


# Syntax errors about something that was opened and never closed are reported where it
# was opened (the parser only notices at the end of the file or of the value).
_OPENED = {
    "flow sequence": "list opened with '['",
    "flow mapping": "mapping opened with '{'",
    "quoted scalar": "quoted string",
}


def _too_deep(source: str, mark: Any) -> ConfigError:
    return ConfigError(
        f"{source}:{mark.line + 1}:{mark.column + 1}: nested deeper than "
        f"{MAX_DEPTH} levels (limit); experiment files need a few"
    )


def _syntax_error(exc: yaml.MarkedYAMLError, source: str) -> ConfigError:
    problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
    gave_up, opened = exc.problem_mark, exc.context_mark
    if "maximum nesting depth" in problem and gave_up is not None:
        # libyaml >= 0.2.5 (PyYAML 6.0.4's wheels) has its own limit of 1000 flow levels,
        # which its scanner can reach before our event check sees level MAX_DEPTH + 1.
        return _too_deep(source, gave_up)
    context = " ".join(str(exc.context or "").split())
    what = next((text for key, text in _OPENED.items() if key in context), None)
    if opened is not None and gave_up is not None and what:
        return ConfigError(
            f"{source}:{opened.line + 1}:{opened.column + 1}: invalid YAML: a {what} here is "
            f"never closed (the parser gave up at line {gave_up.line + 1}, column "
            f"{gave_up.column + 1}: {problem})"
        )
    mark = gave_up or opened
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
    if context and exc.problem and not context.startswith("while "):
        problem = f"{context}, {problem}"  # `expected a single document, but found another`
    return ConfigError(f"{where}: invalid YAML: {problem}")


def _check_characters(text: str, source: str) -> None:
    """Tabs used for indentation and characters YAML refuses (NUL, other control
    characters), each reported with its line and column."""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.lstrip(" ")
        if stripped.startswith("\t"):
            raise ConfigError(
                f"{source}:{number}:{len(line) - len(stripped) + 1}: tab used for "
                "indentation; YAML needs spaces"
            )
    bad = Reader.NON_PRINTABLE.search(text)
    if bad:
        before = text[: bad.start()]
        line = before.count("\n") + 1
        col = bad.start() - (before.rfind("\n") + 1) + 1
        raise ConfigError(
            f"{source}:{line}:{col}: control character U+{ord(bad.group()):04X} is not "
            "allowed in YAML; remove it (was the file saved as text?)"
        )


def _events(text: str, source: str) -> Iterator[yaml.Event]:
    """libyaml's events for ``text``, refusing nesting deeper than MAX_DEPTH as it goes
    (before anything recursive sees them)."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_EVENT_LOADER):
        if isinstance(event, yaml.NodeEvent):
            # Keys and values: a file of plain values is refused here, before PyYAML's
            # composer spends seconds on hundreds of thousands of them.
            nodes += 1
            if nodes > 2 * MAX_VALUES:
                mark = event.start_mark
                raise ConfigError(
                    f"{source}:{mark.line + 1}:{mark.column + 1}: more than {2 * MAX_VALUES} "
                    "keys and values; experiment files are limited to that"
                )
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _too_deep(source, event.start_mark)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        yield event


class _EventComposer(Composer, Resolver):
    """PyYAML's composer (nodes with marks, anchors, aliases) fed with checked events."""

    def __init__(self, events: list[yaml.Event]):
        Composer.__init__(self)
        Resolver.__init__(self)
        self._queue = events
        self._next = 0

    def check_event(self, *choices: type) -> bool:
        if self._next >= len(self._queue):
            return False
        return not choices or isinstance(self._queue[self._next], choices)

    def peek_event(self) -> yaml.Event:
        return self._queue[self._next]

    def get_event(self) -> yaml.Event:
        event = self._queue[self._next]
        self._next += 1
        return event


def compose(text: str, source: str) -> yaml.Node | None:
    """The single YAML document in ``text`` as a node tree, or None when it is empty;
    syntax errors and the size and depth limits raise ConfigError with the location."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(
            f"{source}: {len(text)} characters; YAML files are limited to {MAX_FILE_BYTES} "
            "bytes (experiment files are a few kilobytes)"
        )
    _check_characters(text, source)
    try:
        return _EventComposer(list(_events(text, source))).get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None


def parse_yaml_text(text: str, source: str) -> tuple[Any, Marks]:
    """Parse YAML text; raise ConfigError with the location for syntax problems."""
    marks = Marks(source)
    node = compose(text, source)
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
        # Read at most one byte past the limit: a pipe or /dev/zero is read once, boundedly.
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_FILE_BYTES} bytes; a YAML {what} is limited to that "
            "(experiment files are a few kilobytes)"
        )
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

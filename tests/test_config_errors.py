"""Malformed experiment files: every problem is one line `file:line:col: key: message`, exit 2.

Each case writes a small experiment file, runs ``jigsawkit validate FILE`` in-process and
checks the exit code, the exact number of problem lines, where each one points (line and
dotted key) and a fragment of its message. A few run through a real subprocess to prove
that no traceback escapes end to end.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_process import run_jigsawkit

from jigsawkit.cli import main

LOCATED = re.compile(r"^(?P<line>\d+):(?P<col>\d+): (?P<rest>.+)$")


@dataclass
class Case:
    """One malformed experiment: its text and the problems expected, in file order.

    ``expected`` holds ``(line, dotted_key, fragment)``; ``line`` None means a file-level
    problem (``error: <file>: ...``); ``dotted_key`` None means a problem not tied to a key
    (YAML syntax, encoding); ``line`` "--set" means the problem is located by the option.
    """

    id: str
    text: str | bytes | None
    expected: list[tuple]
    args: list[str] = field(default_factory=list)


CASES = [
    Case(
        "yaml-syntax-unclosed-list",
        "name: t\npretrain:\n  epochs: [1, 2\n  batch_size: 4\n",
        [(3, None, "opened with '[' here is never closed (the parser gave up at line 4")],
    ),
    Case(
        "yaml-syntax-bad-indent",
        "name: t\npretrain:\n  epochs: 2\n   batch_size: 4\n",
        [(4, None, "invalid YAML")],
    ),
    Case("tab-indentation", "name: t\npretrain:\n\tepochs: 2\n", [(3, None, "tab")]),
    Case("empty-file", "", [(1, None, "empty experiment file")]),
    Case("only-comments", "# nothing here yet\n\n", [(1, None, "empty experiment file")]),
    Case("top-level-list", "- name: t\n- seed: 1\n", [(1, "(top level)", "found a list")]),
    Case("top-level-scalar", "just words\n", [(1, "(top level)", "expected a mapping")]),
    Case(
        "non-utf8-bytes",
        b"name: t\ndescription: caf\xe9 au lait\n",
        [(2, None, "not valid UTF-8")],
    ),
    Case(
        "duplicate-keys",
        "name: t\nseed: 1\npretrain:\n  epochs: 2\n  epochs: 3\nseed: 2\n",
        [(5, "pretrain.epochs", "duplicate key"), (6, "seed", "duplicate key")],
    ),
    Case(
        "duplicate-key-after-a-merge",
        "name: t\nevaluate:\n  - &p {name: knn, k: 3}\n  - {<<: *p, k: 5, k: 6}\n",
        [(4, "evaluate[1].k", "first given on line 4")],
    ),
    Case(
        "python-tag-scalar",
        "name: t\nseed: !!python/name:os.system 1\n",
        [(2, "seed", "tag")],
    ),
    Case(
        "python-tag-mapping",
        "name: t\nbackbone: !!python/object:os.system {name: cfn}\n",
        [(2, "backbone", "tag")],
    ),
    Case("non-scalar-key", "name: t\n? [a, b]\n: 1\n", [(2, "(top level)", "plain names")]),
    Case(
        "wrong-type-integer",
        "name: t\npretrain:\n  epochs: five\n",
        [(3, "pretrain.epochs", "expected an integer")],
    ),
    Case(
        "wrong-type-string-for-mapping",
        "name: t\npretrain:\n  optimizer: fast\n",
        [(3, "pretrain.optimizer", "expected a mapping")],
    ),
    Case(
        "wrong-type-list-of-bounded-integers",
        "name: t\nbackbone: {name: cfn, channels: 64}\n",
        [(2, "backbone.channels", "expected a list of integers >= 1 and <= 65536, found 64")],
    ),
    Case(
        "wrong-type-list-of-evaluators",
        "name: t\nevaluate: {name: knn}\n",
        [(2, "evaluate", "expected a list of mappings or strings")],
    ),
    Case(
        "unknown-top-level-key",
        "name: t\npretrian:\n  epochs: 2\n",
        [(2, "pretrian", "did you mean 'pretrain'")],
    ),
    Case(
        "unknown-top-level-key-lists-the-keys",
        "name: t\nzzz: 1\n",
        [(2, "zzz", "unknown key (allowed: name, description, seed, device, output_dir")],
    ),
    Case(
        "unknown-pretrain-key",
        "name: t\npretrain:\n  epochs: 2\n  batch_sise: 8\n",
        [(4, "pretrain.batch_sise", "did you mean 'batch_size'")],
    ),
    Case(
        "unknown-component-parameter",
        "name: t\nbackbone:\n  name: cfn\n  tile_fcc: 256\n",
        [(4, "backbone.tile_fcc", "did you mean 'tile_fc'")],
    ),
    Case(
        "misspelled-backbone",
        "name: t\nbackbone:\n  name: cnf\n",
        [(3, "backbone.name", "did you mean 'cfn'")],
    ),
    Case(
        "misspelled-pretext",
        "name: t\npretext: {name: jigsw, grid: 3}\n",
        [(2, "pretext.name", "did you mean 'jigsaw'")],
    ),
    Case(
        "misspelled-dataset",
        "name: t\npretrain:\n  data: {name: synthetc}\n",
        [(3, "pretrain.data.name", "did you mean 'synthetic'")],
    ),
    Case(
        "unknown-tracker",
        "name: t\ntrackers:\n  - name: console\n  - name: wandbb\n",
        [(4, "trackers[1].name", "did you mean 'wandb'")],
    ),
    Case(
        "unknown-evaluator",
        "name: t\nevaluate:\n  - name: linear_probe\n  - name: knnn\n",
        [(4, "evaluate[1].name", "did you mean 'knn'")],
    ),
    Case("missing-component-name", "name: t\nbackbone: {}\n", [(2, "backbone", "'name'")]),
    Case(
        "out-of-range-epochs",
        "name: t\npretrain:\n  epochs: 0\n",
        [(3, "pretrain.epochs", ">= 1")],
    ),
    Case("negative-seed", "name: t\nseed: -1\n", [(2, "seed", ">= 0")]),
    Case(
        "out-of-range-grid",
        "name: t\npretext:\n  name: jigsaw\n  grid: 1\n",
        [(4, "pretext.grid", "found 1")],
    ),
    Case("bad-device", "name: t\ndevice: gpu\n", [(2, "device", "found 'gpu'")]),
    Case(
        "bad-enum-with-hint",
        "name: t\npretrain:\n  precision: fp16\n",
        [(3, "pretrain.precision", "did you mean")],
    ),
    Case("bad-name-pattern", "name: my experiment\n", [(1, "name", "found 'my experiment'")]),
    Case(
        "wrong-type-deep-in-evaluator-data",
        "name: t\nevaluate:\n  - name: linear_probe\n    data:\n      name: synthetic\n"
        "      seed: abc\n",
        [(6, "evaluate[0].data.seed", "expected an integer")],
    ),
    Case(
        "wrong-tracker-mode",
        "name: t\ntrackers:\n  - name: wandb\n    mode: onlin\n",
        [(4, "trackers[0].mode", "did you mean 'online'")],
    ),
    Case(
        "jigsaw-2x2-asks-100-permutations",
        "name: t\npretext:\n  name: jigsaw\n  grid: 2\n"
        "  permutations: {count: 100, selection: maximal}\n",
        [(5, "pretext.permutations*", "24")],
    ),
    Case(
        "jigsaw-tile-larger-than-cell",
        "name: t\npretext: {name: jigsaw, grid: 3, crop: 96, tile: 40}\n",
        [(2, "pretext.*", "32")],
    ),
    Case(
        "cfn-kernel-per-stage",
        "name: t\nbackbone:\n  name: cfn\n  channels: [32, 64]\n  kernel_sizes: [3, 3, 3]\n",
        [(5, "backbone.kernel_sizes", "channels")],
    ),
    Case(
        "splits-do-not-sum-to-one",
        "name: t\npretrain:\n  data:\n    name: image_folder\n    root: imgs\n"
        "    splits: [0.5, 0.3, 0.3]\n",
        [(6, "pretrain.data.splits", "sum to 1")],
    ),
    Case(
        "required-parameter-missing",
        "name: t\npretrain:\n  data: {name: image_folder}\n",
        [(3, "pretrain.data", "'root'")],
    ),
    Case(
        "wrong-type-in-a-list",
        "name: t\nbackbone:\n  name: cfn\n  channels: [32, wide, 128]\n",
        [(4, "backbone.channels[1]", "expected an integer")],
    ),
    Case(
        "unknown-key-in-evaluator-data",
        "name: t\nevaluate:\n  - name: knn\n    data: {name: synthetic, train_sise: 10}\n",
        [(4, "evaluate[0].data.train_sise", "did you mean 'train_size'")],
    ),
    Case(
        "pretrain-null-without-checkpoint",
        "name: t\npretrain: null\nevaluate: [knn]\n",
        [(2, "pretrain", "checkpoint")],
    ),
    Case(
        "same-evaluator-twice",
        "name: t\nevaluate:\n  - name: knn\n  - name: linear_probe\n  - name: knn\n",
        [(5, "evaluate[2].name", "listed twice")],
    ),
    Case(
        "same-tracker-twice",
        "name: t\ntrackers: [console, console]\n",
        [(2, "trackers[1]", "listed twice")],
    ),
    Case(
        "several-problems-at-once",
        "name: t\nseed: -3\nbackbone:\n  name: cnf\npretrain:\n  epochs: many\n"
        "  batch_size: 0\n  colour: red\ntrackers:\n  - name: consol\n",
        [
            (2, "seed", ">= 0"),
            (4, "backbone.name", "'cfn'"),
            (6, "pretrain.epochs", "integer"),
            (7, "pretrain.batch_size", ">= 1"),
            (8, "pretrain.colour", "unknown key"),
            (10, "trackers[0].name", "'console'"),
        ],
    ),
    Case(
        "set-unknown-key",
        "name: t\n",
        [("--set", "pretrian", "did you mean 'pretrain'")],
        ["--set", "pretrian.epochs=2"],
    ),
    Case(
        "set-bad-value",
        "name: t\n",
        [("--set", "pretrain.epochs", "found 'two'")],
        ["--set", "pretrain.epochs=two"],
    ),
    Case(
        "set-bad-value-syntax",
        "name: t\n",
        [("--set", None, "cannot read the value")],
        ["--set", "pretrain.epochs=[1,"],
    ),
    Case("set-no-equals", "name: t\n", [("--set", None, "KEY=VALUE")], ["--set", "pretrain"]),
    Case(
        "set-bad-key-syntax",
        "name: t\n",
        [("--set", None, "cannot read the key")],
        ["--set", "evaluate[x].epochs=2"],
    ),
    Case(
        "set-missing-index",
        "name: t\nevaluate: [knn]\n",
        [("--set", None, "[3]")],
        ["--set", "evaluate[3].k=2"],
    ),
]


def _run_validate(capsys, path: Path | str, args: list[str]) -> tuple[int, str, str]:
    rc = main(["validate", str(path), *args])
    out, err = capsys.readouterr()
    return rc, out, err


def problem_lines(err: str) -> list[str]:
    """The `error: ...` lines, after checking the optional `N problems found` footer."""
    lines = err.splitlines()
    if len(lines) > 1:
        assert lines[-1] == f"{len(lines) - 1} problems found", err
        lines = lines[:-1]
    for line in lines:
        assert line.startswith("error: "), err
    return [line[len("error: ") :] for line in lines]


def check_located(line: str, where: str, expected: tuple) -> None:
    """``line`` (without `error: `) is ``<where>:<line>:<col>: <key>: <message>``."""
    want_line, key, fragment = expected
    if want_line == "--set":
        assert line.startswith("--set "), line
        rest = line
        if key is not None:
            assert f": {key}: " in line, line
    elif want_line is None:
        assert line.startswith(f"{where}: "), line
        rest = line[len(where) + 2 :]
    else:
        assert line.startswith(f"{where}:"), line
        match = LOCATED.match(line[len(where) + 1 :])
        assert match, f"not file:line:col: {line}"
        assert int(match["line"]) == want_line, line
        assert int(match["col"]) >= 1, line
        rest = match["rest"]
        if key is not None and key.endswith("*"):  # the component chooses the sub-key
            assert rest.startswith(key[:-1]), f"expected key {key!r}: {line}"
            assert re.match(r"^[\w.\[\]]+: \S", rest), line
        elif key is not None:
            assert rest.startswith(f"{key}: "), f"expected key {key!r}: {line}"
            assert rest[len(key) + 2 :].strip(), line
    assert fragment in rest, f"expected {fragment!r} in: {line}"


def _write_case(tmp_path: Path, case: Case) -> Path:
    path = tmp_path / f"{case.id}.yaml"
    data = case.text if isinstance(case.text, bytes) else case.text.encode("utf-8")
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_experiment_reported_in_one_line_per_problem(tmp_path, capsys, case):
    path = _write_case(tmp_path, case)
    rc, out, err = _run_validate(capsys, path, case.args)
    assert rc == 2, err
    assert "Traceback" not in err + out
    assert out == "", "nothing is printed to stdout for an invalid file"
    lines = problem_lines(err)
    assert len(lines) == len(case.expected), err
    for line, expected in zip(lines, case.expected):
        check_located(line, str(path), expected)


def test_several_problems_are_counted(tmp_path, capsys):
    case = next(c for c in CASES if c.id == "several-problems-at-once")
    path = _write_case(tmp_path, case)
    _, _, err = _run_validate(capsys, path, [])
    assert err.splitlines()[-1] == "6 problems found"


def test_missing_file(tmp_path, capsys):
    path = tmp_path / "nope.yaml"
    rc, out, err = _run_validate(capsys, path, [])
    assert rc == 2
    assert problem_lines(err) == [f"{path}: no such experiment file"]


def test_directory_instead_of_file(tmp_path, capsys):
    rc, _, err = _run_validate(capsys, tmp_path, [])
    assert rc == 2
    (line,) = problem_lines(err)
    assert line.startswith(f"{tmp_path}: ") and "directory" in line


def test_unreadable_file(tmp_path, capsys):
    path = tmp_path / "secret.yaml"
    path.write_text("name: t\n")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user who can read anything")
        rc, _, err = _run_validate(capsys, path, [])
    finally:
        path.chmod(0o644)
    assert rc == 2
    (line,) = problem_lines(err)
    assert line.startswith(f"{path}: cannot read")


def test_every_file_is_reported_when_validating_several(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("name: good\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nseed: -1\n")
    missing = tmp_path / "missing.yaml"
    rc = main(["validate", str(bad), str(good), str(missing), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert f"{good}: OK" in out.splitlines()
    assert err.splitlines() == [
        f"error: {bad}:2:7: seed: expected an integer >= 0 and <= 4294967295, found -1",
        f"error: {missing}: no such experiment file",
    ]


def test_unknown_component_says_where_components_are_looked_for(tmp_path, capsys):
    path = tmp_path / "e.yaml"
    path.write_text("name: t\nbackbone: {name: resnet_from_nowhere}\n")
    _, _, err = _run_validate(capsys, path, [])
    (line,) = problem_lines(err)
    assert "known: " in line and "cfn" in line
    assert "--plugins" in line and "jigsawkit.plugins" in line


SUBPROCESS_CASES = [
    "yaml-syntax-unclosed-list",
    "non-utf8-bytes",
    "misspelled-backbone",
    "several-problems-at-once",
]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_end_to_end_no_traceback(tmp_path, case_id):
    case = next(c for c in CASES if c.id == case_id)
    path = _write_case(tmp_path, case)
    proc = run_jigsawkit("validate", str(path))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == ""
    lines = problem_lines(proc.stderr)
    assert len(lines) == len(case.expected)
    for line, expected in zip(lines, case.expected):
        check_located(line, str(path), expected)


# --- the examples in docs/experiments.md print what the docs say ------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "experiments.md"
DOC_EXAMPLES = re.findall(
    r"```yaml\n# (\S+\.yaml)\n(.*?)```\n\n```\n\$ jigsawkit validate \1\n(.*?)```",
    DOC.read_text(encoding="utf-8"),
    re.S,
)


def test_docs_have_error_examples():
    assert len(DOC_EXAMPLES) >= 2


@pytest.mark.parametrize("name, text, expected", DOC_EXAMPLES, ids=[e[0] for e in DOC_EXAMPLES])
def test_docs_error_example(name, text, expected, tmp_path, monkeypatch, capsys):
    from jigsawkit import plugins
    from jigsawkit.registry import REGISTRIES, load_builtins

    # As in a fresh process: built-ins only, no plugin folder searched yet. Built-ins are
    # loaded first, so the test does not depend on an earlier test having loaded them.
    load_builtins()
    monkeypatch.setattr(plugins, "_searched_dirs", [])
    for reg in REGISTRIES.values():
        builtin = {n: e for n, e in reg._entries.items() if e.origin == "built-in"}
        monkeypatch.setattr(reg, "_entries", builtin)
    monkeypatch.chdir(tmp_path)
    Path(name).write_text(text)
    assert main(["validate", name]) == 2
    assert capsys.readouterr().err == expected

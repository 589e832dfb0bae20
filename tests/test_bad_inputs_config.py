"""A corpus of wrong, hostile and merely unusual inputs, each through the real CLI.

Classes (issue 14): 1 values that validate but cannot run, 2 the YAML loader, 4 paths,
5 files written outside the run directory, 7 ``--set`` locations and meaning.

Every bad case must end with exit code 2, exactly one ``error:`` line on stderr that starts
with where the problem is (``e.yaml:LINE:COL``, the ``--set`` option or the CLI argument)
and names the key, no traceback, nothing on stdout, and nothing written: the working
folder (which holds the cache and every output) is the same before and after. Most cases
run in-process (``jigsawkit.cli.main``); a few run in a subprocess, with a time bound.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_process import run_jigsawkit

from jigsawkit.cli import main

GOOD = """\
name: t
seed: 0
backbone: {name: cfn, channels: [4, 8], kernel_sizes: [3, 3], tile_fc: 8, input_size: 8}
pretext:
  name: jigsaw
  grid: 2
  crop: 16
  tile: 8
  permutations: {count: 4, selection: maximal, seed: 0}
  head_hidden: 8
pretrain:
  data: {name: synthetic, train_size: 8, val_size: 8, test_size: 8, image_size: 16}
  epochs: 1
  batch_size: 4
  optimizer: {name: adam, lr: 0.001}
  export: feature_extractor.pt
evaluate:
  - name: knn
    data: {name: synthetic, train_size: 8, val_size: 8, test_size: 8, image_size: 16}
    k: 3
"""


def good(**replace: str) -> str:
    """GOOD with whole lines replaced: ``good(seed="seed: -1")`` (key: the line's start)."""
    lines = GOOD.splitlines()
    for start, new in replace.items():
        index = next(i for i, line in enumerate(lines) if line.lstrip().startswith(start + ":"))
        lines[index] = new
    return "\n".join(lines) + "\n"


def alias_bomb(levels: int = 9) -> str:
    text = 'name: t\na: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        text += f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
    return text


def merge_bomb() -> str:
    text = "name: t\nm0: &m0 {x: 1, y: 2}\n"
    for i in range(1, 10):
        text += f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 9) + "]}\n"
    return text


SWEEP = (
    "experiment:\n"
    + "".join("  " + line + "\n" for line in GOOD.splitlines())
    + "sweep:\n  method: random\n  metric: {name: probe.knn.val_top1, goal: maximize}\n"
    "  run_cap: 1\n  parameters:\n    evaluate[0].temperature: {min: 0.001, max: 0.1}\n"
    "strategy: {name: wandb, mode: offline}\noutput_dir: sweeps\n"
)


def write_resume_dir(content: str | bytes | None) -> Callable[[Path], None]:
    """A folder `r` whose config.yaml holds ``content`` (None: config.yaml is a folder)."""

    def setup(root: Path) -> None:
        (root / "r").mkdir()
        target = root / "r" / "config.yaml"
        if content is None:
            target.mkdir()
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)

    return setup


def a_file(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).write_text("not a folder\n")


LONG = "x" * 300


@dataclass
class Bad:
    """One bad input. ``where``: how the error line starts (after ``error: ``); ``key``:
    the dotted key the line names (None: not tied to a key); ``fragment``: in the message."""

    id: str
    text: str | bytes
    where: str
    key: str | None
    fragment: str
    args: list[str] = field(default_factory=list)
    command: str = "validate"
    setup: Callable[[Path], None] | None = None


CASES: list[Bad] = [
    # -- class 2: the YAML loader -------------------------------------------------------
    Bad("alias-bomb", alias_bomb(), "e.yaml:", None, "more than 20000 values"),
    Bad("merge-bomb", merge_bomb(), "e.yaml:", None, "more than 20000 values"),
    Bad(
        "too-many-values",
        "name: t\nx: [" + ",".join(["1"] * 45_000) + "]\n",
        "e.yaml:2:",
        None,
        "more than 40000 keys and values",
    ),
    Bad("recursive-alias-list", "name: t\nx: &x [1, *x]\n", "e.yaml:2:4:", "x[1]", "recursive"),
    Bad("recursive-alias-map", "name: t\nx: &x {a: *x}\n", "e.yaml:2:4:", "x.a", "recursive"),
    Bad("recursive-merge", "name: t\nx: &x {b: 1, <<: *x}\n", "e.yaml:2:4:", "x", "recursive"),
    Bad(
        "deep-flow-nesting",
        "name: t\nx: " + "[" * 50_000 + "]" * 50_000 + "\n",
        "e.yaml:2:",
        None,
        "nested deeper than 64",
    ),
    Bad(
        "deep-block-nesting",
        "name: t\n" + "".join("  " * i + f"k{i}:\n" for i in range(120)),
        "e.yaml:",
        None,
        "nested deeper than 64",
    ),
    Bad(
        "deep-through-aliases",
        "name: t\na0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 200)),
        "e.yaml:",
        None,
        "nested deeper than 64 levels once aliases",
    ),
    Bad("nul-byte", "name: t\ndescription: ab\x00c\n", "e.yaml:2:16:", None, "U+0000"),
    Bad("bell-character", "name: t\nseed: 1\x07\n", "e.yaml:2:8:", None, "U+0007"),
    Bad("escape-in-key", "name: t\nse\x1bed: 1\n", "e.yaml:2:3:", None, "U+001B"),
    Bad(
        "huge-file",
        "name: t\ndescription: " + "x" * (1024 * 1024 + 10) + "\n",
        "e.yaml: larger than",
        None,
        "1048576 bytes",
    ),
    Bad(
        "unclosed-bracket",
        "name: t\nbackbone:\n  channels: [4, 8\n  tile_fc: 8\nseed: 1\n",
        "e.yaml:3:13:",
        None,
        "list opened with '[' here is never closed",
    ),
    Bad(
        "unclosed-brace",
        "name: t\npretrain: {epochs: 1\nseed: 2\n",
        "e.yaml:2:11:",
        None,
        "mapping opened with '{' here is never closed",
    ),
    Bad(
        "unclosed-single-quote",
        "name: t\ndescription: 'abc\nseed: 1\n",
        "e.yaml:2:14:",
        None,
        "quoted string here is never closed",
    ),
    Bad(
        "unclosed-double-quote",
        'name: t\nseed: 1\ndescription: "abc\n',
        "e.yaml:3:14:",
        None,
        "quoted string here is never closed",
    ),
    Bad("undefined-alias", "name: t\nseed: *nope\n", "e.yaml:2:7:", None, "undefined alias"),
    Bad(
        "merge-of-a-scalar", "name: t\nx: {<<: 5}\n", "e.yaml:2:", "x", "merge (<<) takes a mapping"
    ),
    Bad("two-documents", "name: t\n---\nname: u\n", "e.yaml:", None, "single document"),
    # -- class 1: values that validate but cannot run -------------------------------------
    Bad(
        "lr-nan",
        good(optimizer="  optimizer: {name: adam, lr: .nan}"),
        "e.yaml:15:",
        "pretrain.optimizer.lr",
        "expected a finite number, found nan",
    ),
    Bad(
        "lr-inf",
        good(optimizer="  optimizer: {name: adam, lr: .inf}"),
        "e.yaml:15:",
        "pretrain.optimizer.lr",
        "finite number, found inf",
    ),
    Bad(
        "lr-1e309",
        good(optimizer="  optimizer: {name: adam, lr: 1.0e+309}"),
        "e.yaml:15:",
        "pretrain.optimizer.lr",
        "finite number, found inf",
    ),
    Bad(
        "weight-decay-minus-inf",
        good(optimizer="  optimizer: {name: adam, weight_decay: -.inf}"),
        "e.yaml:15:",
        "pretrain.optimizer.weight_decay",
        "found -inf",
    ),
    Bad(
        "grayscale-prob-nan",
        good(head_hidden="  grayscale_prob: .nan"),
        "e.yaml:10:",
        "pretext.grayscale_prob",
        "finite number",
    ),
    Bad(
        "temperature-inf",
        good(k="    temperature: .inf"),
        "e.yaml:20:",
        "evaluate[0].temperature",
        "finite number",
    ),
    Bad("seed-negative", good(seed="seed: -1"), "e.yaml:2:7:", "seed", "<= 4294967295, found -1"),
    Bad(
        "seed-beyond-32-bits", good(seed="seed: 4294967296"), "e.yaml:2:7:", "seed", "<= 4294967295"
    ),
    Bad(
        "seed-beyond-64-bits",
        good(seed="seed: 99999999999999999999999"),
        "e.yaml:2:7:",
        "seed",
        "<= 4294967295",
    ),
    Bad("seed-nan", good(seed="seed: .nan"), "e.yaml:2:7:", "seed", "expected an integer"),
    Bad(
        "permutation-seed-negative",
        good(permutations="  permutations: {count: 4, seed: -5}"),
        "e.yaml:9:",
        "pretext.permutations.seed",
        "found -5",
    ),
    Bad(
        "data-seed-negative",
        good(data="  data: {name: synthetic, seed: -1}"),
        "e.yaml:12:",
        "pretrain.data.seed",
        "found -1",
    ),
    Bad(
        "probe-seed-negative", good(k="    seed: -2"), "e.yaml:20:", "evaluate[0].seed", "found -2"
    ),
    Bad(
        "int-beyond-64-bits",
        good(k="    k: 3\ntrackers: [{name: console, every: 99999999999999999999}]"),
        "e.yaml:21:",
        "trackers[0].every",
        "within 64 bits",
    ),
    Bad(
        "epochs-huge",
        good(epochs="  epochs: 1000000000"),
        "e.yaml:13:",
        "pretrain.epochs",
        "<= 100000",
    ),
    Bad(
        "batch-size-huge",
        good(batch_size="  batch_size: 100000000"),
        "e.yaml:14:",
        "pretrain.batch_size",
        "<= 65536",
    ),
    Bad(
        "steps-huge",
        good(epochs="  max_steps_per_epoch: 1000000000000"),
        "e.yaml:13:",
        "pretrain.max_steps_per_epoch",
        "<= 100000000",
    ),
    Bad(
        "prefetch-huge",
        good(epochs="  prefetch: 100000"),
        "e.yaml:13:",
        "pretrain.prefetch",
        "<= 64",
    ),
    Bad(
        "channels-huge",
        good(backbone="backbone: {name: cfn, channels: [10000000]}"),
        "e.yaml:3:",
        "backbone.channels[0]",
        "<= 65536",
    ),
    Bad(
        "input-size-huge",
        good(backbone="backbone: {name: cfn, input_size: 100000}"),
        "e.yaml:3:",
        "backbone.input_size",
        "<= 4096",
    ),
    Bad(
        "synthetic-images-huge",
        good(data="  data: {name: synthetic, train_size: 1000000000}"),
        "e.yaml:12:",
        "pretrain.data.train_size",
        "<= 10000000",
    ),
    Bad("crop-huge", good(crop="  crop: 1000000"), "e.yaml:7:", "pretext.crop", "<= 4096"),
    Bad(
        "head-hidden-huge",
        good(head_hidden="  head_hidden: 100000000"),
        "e.yaml:10:",
        "pretext.head_hidden",
        "<= 65536",
    ),
    Bad(
        "probe-image-size-huge",
        good(k="    image_size: 50000"),
        "e.yaml:20:",
        "evaluate[0].image_size",
        "<= 4096",
    ),
    Bad("knn-k-huge", good(k="    k: 10000000"), "e.yaml:20:", "evaluate[0].k", "<= 10000"),
    Bad(
        "permutations-over-max",
        good(permutations="  permutations: {count: 1000000}"),
        "e.yaml:9:",
        "pretext.permutations.count",
        "<= 100000",
    ),
    Bad(
        "permutations-over-factorial",
        good(permutations="  permutations: {count: 25}"),
        "e.yaml:9:",
        "pretext.permutations.count",
        "a 2x2 jigsaw has 24 permutations",
    ),
    # -- class 5: files written outside the run directory ---------------------------------
    Bad(
        "export-absolute",
        good(export="  export: /tmp/evil.pt"),
        "e.yaml:16:",
        "pretrain.export",
        "absolute path",
    ),
    Bad(
        "export-dotdot",
        good(export="  export: ../../evil.pt"),
        "e.yaml:16:",
        "pretrain.export",
        "'..' leaves the run directory",
    ),
    Bad(
        "export-inner-dotdot",
        good(export="  export: sub/../../evil.pt"),
        "e.yaml:16:",
        "pretrain.export",
        "'..'",
    ),
    Bad(
        "export-home",
        good(export="  export: ~/evil.pt"),
        "e.yaml:16:",
        "pretrain.export",
        "absolute path",
    ),
    Bad(
        "export-windows-drive",
        good(export="  export: 'C:\\evil.pt'"),
        "e.yaml:16:",
        "pretrain.export",
        "absolute path",
    ),
    Bad(
        "export-config",
        good(export="  export: config.yaml"),
        "e.yaml:16:",
        "pretrain.export",
        "overwrite the run's own config.yaml",
    ),
    Bad(
        "export-checkpoint",
        good(export="  export: checkpoints/last.pt"),
        "e.yaml:16:",
        "pretrain.export",
        "checkpoints",
    ),
    Bad(
        "export-probe-file",
        good(export="  export: probe_knn.json"),
        "e.yaml:16:",
        "pretrain.export",
        "overwrite",
    ),
    Bad(
        "export-folder",
        good(export="  export: sub/"),
        "e.yaml:16:",
        "pretrain.export",
        "names no file",
    ),
    Bad(
        "export-long-name",
        good(export=f"  export: {LONG}.pt"),
        "e.yaml:16:",
        "pretrain.export",
        "255 bytes",
    ),
    Bad(
        "export-by-set",
        GOOD,
        "--set pretrain.export=/etc/passwd:",
        "pretrain.export",
        "absolute path",
        ["--set", "pretrain.export=/etc/passwd"],
    ),
    Bad("name-too-long", good(name=f"name: {LONG}"), "e.yaml:1:7:", "name", "maxLength 200"),
    # -- class 4: paths (through `run`: nothing may be written) ---------------------------
    Bad(
        "out-is-a-file",
        GOOD,
        "--out afile:",
        None,
        "is a file",
        ["--out", "afile"],
        "run",
        a_file("afile"),
    ),
    Bad(
        "out-under-a-file",
        GOOD,
        "--out afile/run:",
        None,
        "afile is a file",
        ["--out", "afile/run"],
        "run",
        a_file("afile"),
    ),
    Bad(
        "output-dir-under-a-file",
        good(name="name: t\noutput_dir: afile/runs"),
        "output_dir afile/runs:",
        None,
        "afile is a file",
        [],
        "run",
        a_file("afile"),
    ),
    Bad(
        "output-dir-is-a-file",
        good(name="name: t\noutput_dir: afile"),
        "output_dir afile:",
        None,
        "is a file",
        [],
        "run",
        a_file("afile"),
    ),
    Bad(
        "cache-dir-under-a-file",
        good(name="name: t\ncache_dir: afile/cache"),
        "cache_dir afile/cache:",
        None,
        "afile is a file",
        ["--out", "o"],
        "run",
        a_file("afile"),
    ),
    Bad(
        "out-name-too-long",
        GOOD,
        "--out x",
        None,
        "300 bytes; file names are limited",
        ["--out", LONG],
        "run",
    ),
    Bad(
        "output-dir-name-too-long",
        good(name=f"name: t\noutput_dir: {LONG}"),
        "output_dir x",
        None,
        "file names are limited",
        [],
        "run",
    ),
    Bad(
        "out-path-too-long",
        GOOD,
        "--out ",
        None,
        "paths are limited",
        ["--out", "/".join(["y" * 200] * 25)],
        "run",
    ),
    Bad(
        "resume-config-a-list",
        GOOD,
        "r/config.yaml:1:1:",
        "(top level)",
        "found a list",
        ["--resume", "r"],
        "run",
        write_resume_dir("- a\n- b\n"),
    ),
    Bad(
        "resume-config-invalid",
        GOOD,
        "r/config.yaml:1:4:",
        None,
        "never closed",
        ["--resume", "r"],
        "run",
        write_resume_dir("a: [1\n"),
    ),
    Bad(
        "resume-config-empty",
        GOOD,
        "r/config.yaml:1:1:",
        None,
        "empty run config",
        ["--resume", "r"],
        "run",
        write_resume_dir(""),
    ),
    Bad(
        "resume-config-a-folder",
        GOOD,
        "r/config.yaml:",
        None,
        "is a directory",
        ["--resume", "r"],
        "run",
        write_resume_dir(None),
    ),
    Bad(
        "resume-config-binary",
        GOOD,
        "r/config.yaml:1:",
        None,
        "not valid UTF-8",
        ["--resume", "r"],
        "run",
        write_resume_dir(b"\xff\xfe\x00"),
    ),
    Bad(
        "resume-config-nul",
        GOOD,
        "r/config.yaml:1:",
        None,
        "U+0000",
        ["--resume", "r"],
        "run",
        write_resume_dir("name: t\x00\n"),
    ),
    Bad(
        "sweep-out-is-a-file",
        SWEEP,
        "--out afile:",
        None,
        "is a file",
        ["--out", "afile"],
        "sweep",
        a_file("afile"),
    ),
    Bad(
        "sweep-output-dir-under-a-file",
        SWEEP.replace("sweeps", "afile/s"),
        "output_dir afile/s:",
        None,
        "afile is a file",
        [],
        "sweep",
        a_file("afile"),
    ),
    Bad(
        "sweep-min-nan",
        SWEEP.replace("min: 0.001", "min: .nan"),
        "e.yaml:",
        None,
        "finite number",
        ["--out", "o"],
        "sweep",
    ),
    Bad(
        "sweep-trial-export-outside",
        SWEEP.replace("max: 0.1}", "max: 0.1}\n    pretrain.export: {value: ../x.pt}"),
        "e.yaml:",
        None,
        "'..' leaves the run directory",
        ["--out", "o"],
        "sweep",
    ),
    # -- class 7: --set locations and meaning ----------------------------------------------
    Bad(
        "set-experiment-prefix-on-a-sweep",
        SWEEP,
        "--set experiment.pretrain.epochs=abc:",
        "pretrain.epochs",
        "found 'abc'",
        ["--set", "experiment.pretrain.epochs=abc"],
    ),
    Bad(
        "set-bad-int",
        GOOD,
        "--set pretrain.epochs=abc:",
        "pretrain.epochs",
        "found 'abc'",
        ["--set", "pretrain.epochs=abc"],
    ),
    Bad(
        "set-nan",
        GOOD,
        "--set pretrain.optimizer.lr=.nan:",
        "pretrain.optimizer.lr",
        "finite",
        ["--set", "pretrain.optimizer.lr=.nan"],
    ),
    Bad(
        "set-index-value",
        GOOD,
        "--set evaluate[0].k=0:",
        "evaluate[0].k",
        ">= 1",
        ["--set", "evaluate[0].k=0"],
    ),
    Bad(
        "set-string-into-mapping",
        GOOD,
        "--set name.sub=1:",
        None,
        "name is the string 't'",
        ["--set", "name.sub=1"],
    ),
    Bad(
        "set-number-into-mapping",
        GOOD,
        "--set seed.x=1:",
        None,
        "seed is the number 0",
        ["--set", "seed.x=1"],
    ),
    Bad(
        "set-nested-scalar-into-mapping",
        GOOD,
        "--set pretrain.data.seed.x=1:",
        None,
        "pretrain.data.seed takes an integer >= 0",
        ["--set", "pretrain.data.seed.x=1"],
    ),
    Bad(
        "set-list-index-on-mapping",
        GOOD,
        "--set pretext.permutations[0]=1:",
        None,
        "pretext.permutations is a mapping, not a list",
        ["--set", "pretext.permutations[0]=1"],
    ),
    Bad(
        "set-unclosed-value",
        GOOD,
        "--set pretrain.epochs=[1:",
        None,
        "never closed",
        ["--set", "pretrain.epochs=[1"],
    ),
    Bad(
        "set-recursive-alias",
        GOOD,
        "--set description=&a [*a]:",
        None,
        "recursive alias",
        ["--set", "description=&a [*a]"],
    ),
    Bad(
        "set-python-tag",
        GOOD,
        "--set seed=!!python/name:os.system x:",
        None,
        "unsupported YAML tag",
        ["--set", "seed=!!python/name:os.system x"],
    ),
    Bad(
        "set-cross-field",
        GOOD,
        "e.yaml:8:",
        "pretext.tile",
        "(with --set pretext.crop=8)",
        ["--set", "pretext.crop=8"],
    ),
    Bad(
        "set-unknown-key",
        GOOD,
        "--set pretrain.epoch=2:",
        "pretrain.epoch",
        "did you mean 'epochs'",
        ["--set", "pretrain.epoch=2"],
    ),
    Bad(
        "set-absent-section-bad-value",
        "name: t\n",
        "--set backbone.tile_fc=0:",
        "backbone.tile_fc",
        ">= 1",
        ["--set", "backbone.tile_fc=0"],
    ),
    Bad(
        "set-on-run",
        GOOD,
        "--set seed=-1:",
        "seed",
        "found -1",
        ["--set", "seed=-1", "--out", "o"],
        "run",
    ),
]


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder that also holds the cache, so any write shows up."""
    root = tmp_path / "work"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("JIGSAWKIT_CACHE", str(root / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    return root


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(case: Bad, workdir: Path, capsys) -> None:
    path = workdir / "e.yaml"
    if isinstance(case.text, bytes):
        path.write_bytes(case.text)
    else:
        path.write_text(case.text, encoding="utf-8")
    if case.setup:
        case.setup(workdir)
    before = snapshot(workdir)
    started = time.perf_counter()
    rc = main([case.command, "e.yaml", *case.args, *(["--no-progress"] * (case.command == "run"))])
    elapsed = time.perf_counter() - started
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert "Traceback" not in out + err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"error: {case.where}"), line
    if case.key is not None:
        assert f": {case.key}: " in line, line
    assert case.fragment in line, line
    assert snapshot(workdir) == before, "a bad input wrote files"
    assert elapsed < 20, f"took {elapsed:.1f} s"


@pytest.mark.slow  # imports timm and builds resnet18 (~20 s on a shared 2-core machine)
def test_timm_option_of_the_wrong_type_fails_before_the_run_directory(workdir, capsys) -> None:
    pytest.importorskip("timm")
    text = good(
        backbone="backbone: {name: timm, model: resnet18, input_size: 8, "
        "model_kwargs: {drop_rate: fast}}"
    )
    Path("e.yaml").write_text(text)
    before = snapshot(workdir)
    rc = main(["run", "e.yaml", "--out", "o", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 2, err
    (line,) = err.splitlines()
    assert line.startswith("error: backbone.model_kwargs: timm model 'resnet18' fails"), line
    assert "drop_rate" in line and "Traceback" not in out + err
    assert snapshot(workdir) == before


# -- merely unusual, but valid: these must keep working ---------------------------------


VALID = [
    (
        "unicode-and-comments",
        "# Ünïcødé ✓\nname: t  # trailing comment\ndescription: 'café — 猫 🐈'\n",
    ),
    (
        "anchor-used-once",
        "name: t\nevaluate:\n  - name: knn\n    data: &d {name: synthetic, seed: 1}\n"
        "  - name: linear_probe\n    data: *d\n",
    ),
    (
        "merge-key",
        "name: t\nevaluate:\n  - name: knn\n    data: &d {name: synthetic, seed: 1}\n"
        "  - name: linear_probe\n    data: {<<: *d, seed: 2}\n",
    ),
    ("crlf-line-endings", "name: t\r\nseed: 3\r\n"),
    ("byte-order-mark", "\ufeffname: t\nseed: 3\n"),
    ("seed-at-its-maximum", "name: t\nseed: 4294967295\n"),
    ("export-in-a-subfolder", "name: t\npretrain: {export: models/fe.pt}\n"),
    ("large-but-allowed-file", "name: t\n" + "# padding\n" * 50_000),
    (
        "nesting-under-the-limit",
        "name: t\nevaluate:\n  - name: linear_probe\n    lr: [0.1, 0.01]\n",
    ),
    ("exact-factorial-count", good(permutations="  permutations: {count: 24}")),
]


@pytest.mark.parametrize("text", [t for _, t in VALID], ids=[i for i, _ in VALID])
def test_unusual_but_valid_input_still_works(text: str, workdir: Path, capsys) -> None:
    Path("e.yaml").write_text(text, encoding="utf-8", newline="")
    rc = main(["validate", "e.yaml"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert err == ""


@pytest.mark.parametrize("grid", range(2, 17))
def test_permutation_count_beyond_what_a_grid_has_is_refused_for_every_grid(grid, workdir, capsys):
    from math import factorial

    from jigsawkit.config.limits import PERMUTATIONS_MAX

    count = min(factorial(grid * grid) + 1, PERMUTATIONS_MAX + 1)
    args = ["--set", f"pretext.grid={grid}", "--set", f"pretext.permutations.count={count}"]
    Path("e.yaml").write_text("name: t\npretext: {name: jigsaw, crop: 4096, tile: 8}\n")
    assert main(["validate", "e.yaml", *args]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "pretext.permutations.count" in line, line


def test_set_on_an_absent_section_gets_its_defaults(workdir, capsys) -> None:
    from jigsawkit.config.experiment import load_experiment

    Path("e.yaml").write_text("name: t\n")
    config = load_experiment(
        "e.yaml", overrides=["backbone.tile_fc=8", "pretrain.epochs=3", "trackers[0].every=5"]
    )
    assert config["backbone"]["name"] == "cfn" and config["backbone"]["tile_fc"] == 8
    assert config["pretrain"]["epochs"] == 3 and config["pretrain"]["batch_size"] == 64
    assert config["trackers"] == [{"name": "console", "every": 5}]


def test_set_on_a_component_given_by_name_still_adds_a_parameter(workdir) -> None:
    from jigsawkit.config.experiment import load_experiment

    Path("e.yaml").write_text("name: t\nbackbone: cfn\ntrackers: [console]\n")
    config = load_experiment("e.yaml", overrides=["backbone.tile_fc=8", "trackers[0].every=2"])
    assert config["backbone"]["tile_fc"] == 8 and config["trackers"][0]["every"] == 2


# -- end to end in a real process: bounded time, no traceback ----------------------------


SUBPROCESS_CASES = ["alias-bomb", "deep-flow-nesting", "nul-byte", "out-is-a-file", "export-dotdot"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_end_to_end_in_a_subprocess(case_id: str, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == case_id)
    (tmp_path / "e.yaml").write_bytes(
        case.text if isinstance(case.text, bytes) else case.text.encode("utf-8")
    )
    if case.setup:
        case.setup(tmp_path)
    before = snapshot(tmp_path)
    env = {**os.environ, "JIGSAWKIT_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    started = time.perf_counter()
    proc = run_jigsawkit(case.command, "e.yaml", *case.args, cwd=tmp_path, env=env, timeout=120)
    elapsed = time.perf_counter() - started
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"error: {case.where}") and case.fragment in line, line
    assert snapshot(tmp_path) == before
    assert elapsed < 30, f"took {elapsed:.1f} s"


def test_plugin_parameters_get_the_same_number_and_path_rules(workdir, capsys) -> None:
    from jigsawkit.registry import registry

    schema = {
        "properties": {
            "scale": {"type": "number", "default": 1.0},
            "log_file": {"type": "string", "x-run-relative": True, "default": "tiny.log"},
        }
    }
    registry("tracker").register("tiny_logger", schema=schema)(lambda **_: None)
    try:
        text = "name: t\ntrackers:\n  - {name: tiny_logger, scale: .inf, log_file: /etc/x}\n"
        Path("e.yaml").write_text(text)
        assert main(["validate", "e.yaml"]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert lines[-1] == "2 problems found"
        assert any("trackers[0].scale: expected a finite number, found inf" in x for x in lines)
        assert any("trackers[0].log_file:" in x and "absolute path" in x for x in lines)
    finally:
        registry("tracker").unregister("tiny_logger")


def test_a_pipe_is_read_and_parsed_once(tmp_path: Path) -> None:
    """`validate <(cat f)`: a second read of the pipe would find it empty (or block)."""
    import threading

    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "w") as handle:
            handle.write("name: piped\nseed: 3\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    proc = subprocess.run(
        [sys.executable, "-m", "jigsawkit", "validate", str(fifo), "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    writer.join(timeout=5)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{fifo}: OK"

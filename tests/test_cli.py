"""The command line: help with examples, cheap start-up, one-line argument errors, plain
output when piped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jigsawkit.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
SUBCOMMANDS = [name.replace("_", "-") for name in COMMANDS]
# What registering modules must not import at module level (docs/architecture.md).
HEAVY = ("torch", "timm", "wandb", "numpy", "optuna")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE")}
    env.update(TERM="xterm-256color", **extra)  # a terminal's environment, but piped output
    return env


def _python(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=_env(), timeout=timeout
    )


def test_top_level_help_lists_commands_and_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "jigsawkit run experiments/quickstart.yaml" in out
    for name in SUBCOMMANDS:
        assert name in out


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: jigsawkit" in capsys.readouterr().out


def test_version_is_the_installed_metadata(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"jigsawkit {version('jigsawkit')}"


def test_version_has_one_source(capsys, monkeypatch):
    """setup.cfg's version reaches ``jigsawkit.__version__`` and ``--version`` through the
    package metadata: no second literal in the package can drift from it."""
    import importlib.metadata

    import jigsawkit

    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: "9.8.7" if name == "jigsawkit" else "0"
    )
    assert jigsawkit.__version__ == "9.8.7"
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == "jigsawkit 9.8.7"


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: jigsawkit {command}")
    assert "example" in out.lower(), f"`jigsawkit {command} --help` shows no example"
    assert f"jigsawkit {command}" in out.split("example", 1)[1]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_lists_its_examples_one_per_line(command, capsys):
    """Each command module's EXAMPLES reach its --help as written, each on a line of its own
    (argparse's default formatter would fold them into one paragraph)."""
    from jigsawkit.commands import command_module

    examples = command_module(command).EXAMPLES
    with pytest.raises(SystemExit):
        main([command, "--help"])
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("examples:") + 1
    assert examples and all(example.startswith(f"jigsawkit {command}") for example in examples)
    assert lines[start : start + len(examples)] == [f"  {example}" for example in examples]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["validate"], "the following arguments are required: FILE"),
        (["list-components", "--kind", "robot"], "invalid choice: 'robot'"),
        (["run", "x.yaml", "--set"], "expected one argument"),
    ],
)
def test_bad_argument_is_one_line(argv, fragment, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2
    (line,) = err.splitlines()
    assert line.startswith("error: jigsawkit") and fragment in line and "--help" in line
    assert out == ""


def test_bad_argument_end_to_end():
    proc = _python("-m", "jigsawkit", "validate", "--no-such-option", "x.yaml")
    assert proc.returncode == 2
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: jigsawkit") and "--no-such-option" in line


def test_run_with_a_bad_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "e.yaml"
    bad.write_text("name: t\npretrain:\n  epochs: 0\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "run")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {bad}:3:11: pretrain.epochs: ")
    assert not (tmp_path / "run").exists(), "nothing is written for an invalid experiment"


# --- start-up cost ---------------------------------------------------------------------

# Runs the CLI in a fresh interpreter and reports which heavy modules it imported
# (in a `finally`, as --help ends with SystemExit).
PROBE = """\
import json, sys
from jigsawkit.cli import main
try:
    rc = main({argv!r})
finally:
    print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)
sys.exit(rc)
"""


def _imported_heavy(argv: list[str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    code = PROBE.format(argv=argv, heavy=HEAVY)
    proc = _python("-c", code)
    return proc, json.loads(proc.stderr.strip().splitlines()[-1])


CHEAP_COMMANDS = [
    ["--help"],
    ["list-components"],
    ["list-components", "--json"],
    ["validate", str(QUICKSTART)],
    # a plugin whose class is a lazy target (plugins/_rotation_task.py imports torch)
    ["list-components", "--plugins", str(ROOT / "plugins")],
    ["validate", str(ROOT / "experiments" / "rotation.yaml")],
]


@pytest.mark.parametrize("argv", CHEAP_COMMANDS, ids=lambda a: " ".join(a[:2]).replace("/", "_"))
def test_cheap_commands_import_no_heavy_library(argv):
    if "validate" in argv and not QUICKSTART.exists():
        pytest.skip("experiments/quickstart.yaml does not exist yet")
    proc, heavy = _imported_heavy(argv)
    assert proc.returncode == 0, proc.stderr
    assert heavy == [], f"`jigsawkit {' '.join(argv[:2])}` imported {heavy}"


def test_help_is_fast_as_a_whole_process():
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        proc = _python("-m", "jigsawkit", "--help")
        best = min(best, time.perf_counter() - start)
        assert proc.returncode == 0
    assert best < 1.0, f"`jigsawkit --help` took {best:.2f} s (best of 3)"


# --- piped output is plain text --------------------------------------------------------


def test_list_components_piped_has_no_control_sequences():
    proc = _python("-m", "jigsawkit", "list-components")
    assert proc.returncode == 0, proc.stderr
    assert "cfn" in proc.stdout
    assert "\x1b[" not in proc.stdout + proc.stderr


def test_validate_piped_has_no_control_sequences(tmp_path):
    if not QUICKSTART.exists():
        pytest.skip("experiments/quickstart.yaml does not exist yet")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nseed: -1\n")
    proc = _python("-m", "jigsawkit", "validate", str(QUICKSTART), str(bad))
    assert proc.returncode == 2
    assert "name: quickstart" in proc.stdout
    assert proc.stderr.startswith(f"error: {bad}:2:7: seed: ")
    assert "\x1b[" not in proc.stdout + proc.stderr


def test_results_table_names_the_pretext_task(capsys):
    """The headline table speaks of the experiment's pretext task, not of a jigsaw."""
    from jigsawkit.commands.run import print_headline

    summary = {"pretrain.test_top1": 0.9, "pretrain.chance": 0.25}
    print_headline(summary, "runs/x", {"pretext": {"name": "rotation"}})
    out = capsys.readouterr().out
    assert "pretext (rotation) top-1 (test)" in out and "jigsaw" not in out, out

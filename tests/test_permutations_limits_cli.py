"""Bad input to ``jigsawkit permutations`` (issue 14 class 6): each is refused at once, in one
line naming the option, with exit code 2, no traceback and no file written."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from cli_process import run_jigsawkit

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    # (arguments, the option the line must name, a phrase it must contain)
    (["--grid", "17"], "--grid", "at most 16"),
    (["--grid", "100000"], "--grid", "at most 16"),  # (10^10)! would hang
    (["--grid", str(10**30)], "--grid", "at most 16"),
    (["--grid", "1"], "--grid", ">= 2"),
    (["--grid", "-3"], "--grid", ">= 2"),
    (["--grid", "3.5"], "--grid", "invalid int"),
    (["--grid", "2", "--count", "25"], "--count", "has 24 permutations"),
    (["--grid", "3", "--count", "362881"], "--count", "has 362880 permutations"),
    (["--count", "0"], "--count", ">= 1"),
    (["--grid", "4", "--count", str(10**12)], "--count", "GiB of memory"),
    (["--grid", "16", "--count", str(10**40)], "--count", "GiB of memory"),
    (["--selection", "best"], "--selection", "invalid choice"),
]


@pytest.mark.parametrize("argv,option,phrase", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_refused_in_one_line(argv: list[str], option: str, phrase: str, tmp_path: Path) -> None:
    out = tmp_path / "perms.npy"
    env = {**os.environ, "JIGSAWKIT_CACHE": str(tmp_path / "cache")}
    started = time.perf_counter()
    result = run_jigsawkit("permutations", *argv, "--out", str(out), cwd=tmp_path, env=env)
    elapsed = time.perf_counter() - started
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert option in lines[0] and phrase in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not out.exists() and not list(tmp_path.glob("*.npy"))
    assert elapsed < 20, f"took {elapsed:.1f} s to refuse"

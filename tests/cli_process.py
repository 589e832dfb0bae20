"""``python -m jigsawkit ...`` in a fresh process, for the tests that need one (exit codes,
stderr, nothing imported beforehand)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any


def run_jigsawkit(*args: str, timeout: float = 60, **options: Any) -> subprocess.CompletedProcess:
    """Run the CLI with ``args``; stdout and stderr are captured as text. ``options`` go to
    ``subprocess.run`` (``cwd``, ``env``, ``stdin``)."""
    return subprocess.run(
        [sys.executable, "-m", "jigsawkit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **options,
    )

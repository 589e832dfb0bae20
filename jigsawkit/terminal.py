"""The console commands print tables to: as wide as the terminal, unbounded when piped.

rich cuts and wraps tables at 80 columns when stdout is not a terminal, so a listing piped
into a file, ``grep`` or ``less`` lost the end of its rows. Off a terminal (and with no
``COLUMNS`` set) the width is unbounded: every row is one line, whole.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# Wide enough for any row; rich allocates nothing per column of width.
PIPED_WIDTH = 100_000


def stdout_console() -> Any:
    """A rich Console on stdout: the terminal's width, or unbounded when piped."""
    from rich.console import Console

    piped = not sys.stdout.isatty()
    width = PIPED_WIDTH if piped and not os.environ.get("COLUMNS") else None
    return Console(width=width, force_terminal=False if piped else None, highlight=False)

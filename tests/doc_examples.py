"""Running a documentation page's Python example exactly as written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_doc_example(doc: Path, heading: str, out_dir: str, monkeypatch) -> None:
    """Run the first ```python block after ``heading`` in ``doc`` from the repository root;
    ``out_dir`` (what the example writes) is removed before and after."""
    code = re.search(rf"{re.escape(heading)}.*?```python\n(.*?)```", doc.read_text(), re.S)
    assert code is not None, f"{doc}: no python example under {heading!r}"
    monkeypatch.chdir(ROOT)
    shutil.rmtree(out_dir, ignore_errors=True)
    try:
        exec(compile(code.group(1), str(doc), "exec"), {})
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)

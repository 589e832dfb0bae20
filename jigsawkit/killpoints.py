"""Named points where the crash-safety tests kill the process (``kill -9``) on purpose.

``JIGSAWKIT_TEST_KILL_AT=<point>:<n>`` makes the process send itself SIGKILL the ``n``-th
time it reaches ``<point>`` (``n`` defaults to 1); ``<point>:<n>@<rank>`` only in that rank
of a torchrun job (its ``RANK``), so a test can kill one rank while the others go on. Without the variable a point costs one
dictionary lookup. The points sit where a real crash hurts most: in the middle of every
atomic write (the temporary file half written, not yet renamed), right after a rename, and
between the steps of the training loop. ``tests/test_crash_safety.py`` kills a run at each
and checks that ``--resume`` ends with the numbers of a run never interrupted.

Points: ``train-step``, ``epoch-end`` (validated, not yet saved), ``checkpoint-write``,
``checkpoint-saved``, ``image-cache-write``, ``image-cache-meta`` (pixels written, entry
not yet marked complete), ``feature-cache-write``, ``export-write``, ``summary-write``,
``evaluate``, ``feature-share`` (a rank extracted its share of a split's features, rank 0
has not gathered them yet).
"""

from __future__ import annotations

import os
import signal

ENV = "JIGSAWKIT_TEST_KILL_AT"

_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    raw, _, rank = raw.partition("@")
    if rank.strip() and rank.strip() != os.environ.get("RANK", "0"):
        return None
    name, _, count = raw.partition(":")
    return name, int(count) if count.strip().isdigit() else 1


def kill_point(name: str) -> None:
    """SIGKILL this process if ``JIGSAWKIT_TEST_KILL_AT`` names this point and hit count."""
    target = _target()
    if target is None or target[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)

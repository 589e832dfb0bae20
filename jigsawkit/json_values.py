"""Values from numpy and torch as plain Python values: what JSON files and stores keep."""

from __future__ import annotations

import json
import math
from typing import Any


def plain(value: Any) -> Any:
    """A numpy or torch scalar as a Python number, an array or tensor as nested lists;
    anything else as it is."""
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)``: numpy/torch values as plain ones, a non-finite number
    as its name (``"nan"``, ``"inf"``: JSON has none), anything else (a path) as text."""
    value = plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bool | int | float | str | list | dict) or value is None:
        return value
    return str(value)


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of ``value`` (see :func:`json_default`)."""
    return json.loads(json.dumps(value, default=json_default))

"""The per-layer probe table, read back from summary keys: what the console's final table
and ``jigsawkit report`` show for each evaluator.

An evaluator ``<ev>`` writes ``probe.<ev>.layers`` (the probed layers, in order) and, per
layer, ``probe.<ev>.layer.<layer>.test_top1``, ``.random_init.test_top1``, ``.gain_top1``,
each with ``_ci95_low`` / ``_ci95_high``; the top-level ``probe.<ev>.test_top1`` ... are the
head (or layer) chosen on val. Older summaries without per-layer keys give one row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_EVALUATOR = re.compile(r"^probe\.(?P<evaluator>[^.]+)\.test_top1$")
_LAYER_KEY = re.compile(
    r"^probe\.(?P<evaluator>[^.]+)\.layer\.(?P<layer>.+?)\.(?:random_init\.)?"
    r"(?:test_top1|gain_top1)(?:_ci95_low|_ci95_high)?$"
)


@dataclass
class Estimate:
    """A value and its 95% interval (``None`` where the summary has no interval)."""

    value: float
    low: float | None = None
    high: float | None = None


@dataclass
class LayerRow:
    """One row of the table: a layer's test top-1, pretrained and random init, and gain."""

    layer: str
    pretrained: Estimate
    random_init: Estimate | None
    gain: Estimate | None


@dataclass
class ProbeLayerTable:
    """One evaluator's rows (one per probed layer) and the row chosen on val."""

    evaluator: str
    rows: list[LayerRow]
    best: LayerRow


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _estimate(summary: dict[str, Any], key: str) -> Estimate | None:
    value = _number(summary.get(key))
    if value is None:
        return None
    low = _number(summary.get(f"{key}_ci95_low"))
    high = _number(summary.get(f"{key}_ci95_high"))
    return Estimate(value, low, high)


def _row(summary: dict[str, Any], prefix: str, layer: str) -> LayerRow | None:
    pretrained = _estimate(summary, f"{prefix}test_top1")
    if pretrained is None:
        return None
    return LayerRow(
        layer,
        pretrained,
        _estimate(summary, f"{prefix}random_init.test_top1"),
        _estimate(summary, f"{prefix}gain_top1"),
    )


def probe_layer_tables(summary: dict[str, Any]) -> list[ProbeLayerTable]:
    """One table per evaluator with a ``probe.<ev>.test_top1`` key, layers in probe order."""
    tables = []
    for key in summary:
        match = _EVALUATOR.match(key)
        if not match:
            continue
        evaluator = match["evaluator"]
        base = f"probe.{evaluator}."
        best_layer = str(summary.get(f"{base}best_layer", "best"))
        best = _row(summary, base, best_layer)
        if best is None:
            continue
        layers = summary.get(f"{base}layers")
        if not isinstance(layers, list):  # older runs: the layers named in the keys
            found = (_LAYER_KEY.match(k) for k in summary)
            layers = list(
                dict.fromkeys(m["layer"] for m in found if m and m["evaluator"] == evaluator)
            )
        rows = [
            row for layer in layers if (row := _row(summary, f"{base}layer.{layer}.", str(layer)))
        ]
        tables.append(ProbeLayerTable(evaluator, rows or [best], best))
    return tables


def format_estimate(estimate: Estimate | None, signed: bool = False) -> str:
    """``72.4 [70.1, 74.6]``: a fraction as percent (points for a gain) with its interval."""
    if estimate is None:
        return "—"
    sign = "+" if signed else ""

    def pct(value: float) -> str:
        return f"{100 * value:{sign}.1f}"

    text = pct(estimate.value)
    if estimate.low is not None and estimate.high is not None:
        text += f" [{pct(estimate.low)}, {pct(estimate.high)}]"
    return text


def is_layer_key(key: str) -> bool:
    """Per-layer summary keys (``probe.<ev>.layer.<layer>.*``), shown in the layer table."""
    return key.startswith("probe.") and ".layer." in key

"""95% intervals for test accuracies and gains: a paired percentile bootstrap over test images.

The pretrained and the random-init probe are scored on the *same* test images, so their
errors are correlated (an easy image is usually right for both). Resampling the images
once and scoring both on each resample keeps that correlation: the gain's interval is then
as narrow as the data allow, where resampling each independently would add both variances.

Only four kinds of test image matter for two 0/1 correctness vectors: right for both, only
pretrained right, only random-init right, wrong for both. Drawing ``N`` images with
replacement is therefore the same, in distribution, as drawing the four counts from a
multinomial with the observed proportions, which is what ``paired_intervals`` does: each
resample costs a few numbers instead of ``N`` indices, whatever the size of the test set.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RESAMPLES = 2000
# Percentiles of a 95% interval.
_QUANTILES = (0.025, 0.975)


def _as_bool(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    return np.asarray(values).astype(bool).reshape(-1)


def _interval(values: np.ndarray) -> tuple[float, float]:
    low, high = np.quantile(values, _QUANTILES)
    return float(low), float(high)


def paired_intervals(
    correct: Any,
    baseline: Any | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """95% percentile-bootstrap intervals from per-image correctness on the test split.

    ``correct``: 0/1 (or bool) per test image for the evaluated model; ``baseline``: the
    same for the random-init model on the same images in the same order, or ``None``.
    Returns ``test_top1_ci95_low`` / ``_high`` and, with a baseline,
    ``random_init.test_top1_ci95_low`` / ``_high`` and ``gain_top1_ci95_low`` / ``_high``
    (gain = accuracy - baseline accuracy, both from the same resample). Deterministic for a
    given ``seed``.
    """
    a = _as_bool(correct)
    n = a.shape[0]
    b = _as_bool(baseline) if baseline is not None else a
    if b.shape[0] != n:
        raise ValueError(f"paired bootstrap: {n} predictions against {b.shape[0]} baseline ones")
    keys = ["test_top1"] + (["random_init.test_top1", "gain_top1"] if baseline is not None else [])
    if n == 0:
        return {f"{key}_ci95_{end}": float("nan") for key in keys for end in ("low", "high")}
    # Counts of (a, b) = (1, 1), (1, 0), (0, 1), (0, 0).
    kinds = np.array(
        [np.sum(a & b), np.sum(a & ~b), np.sum(~a & b), np.sum(~a & ~b)], dtype=np.float64
    )
    rng = np.random.default_rng([int(seed), 95])
    counts = rng.multinomial(n, kinds / n, size=int(resamples)).astype(np.float64)
    accuracy = (counts[:, 0] + counts[:, 1]) / n
    out = dict(zip(("test_top1_ci95_low", "test_top1_ci95_high"), _interval(accuracy)))
    if baseline is not None:
        base = (counts[:, 0] + counts[:, 2]) / n
        gain = (counts[:, 1] - counts[:, 2]) / n
        out.update(
            zip(
                ("random_init.test_top1_ci95_low", "random_init.test_top1_ci95_high"),
                _interval(base),
            )
        )
        out.update(zip(("gain_top1_ci95_low", "gain_top1_ci95_high"), _interval(gain)))
    return out


def comparison_summary(
    prefix: str, result: Any, baseline: Any | None = None, *, seed: int = 0
) -> dict[str, float]:
    """Summary keys for one comparison on the test split, each prefixed with ``prefix``
    (``""`` or ``"layer.conv."``): ``test_top1`` and its interval, and with a baseline
    ``random_init.test_top1``, ``gain_top1`` and their intervals (paired). ``result`` and
    ``baseline`` have ``test_top1`` and ``test_correct`` (per test image, same order)."""
    out = {f"{prefix}test_top1": result.test_top1}
    if baseline is not None:
        out[f"{prefix}random_init.test_top1"] = baseline.test_top1
        out[f"{prefix}gain_top1"] = result.test_top1 - baseline.test_top1
    other = baseline.test_correct if baseline is not None else None
    intervals = paired_intervals(result.test_correct, other, seed=seed)
    out.update({f"{prefix}{key}": value for key, value in intervals.items()})
    return out

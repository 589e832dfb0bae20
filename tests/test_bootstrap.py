"""The paired bootstrap behind every ``*_ci95_*`` key: known answers, pairing, cost."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from jigsawkit.evaluators.bootstrap import paired_intervals


def _correct(n: int, accuracy: float, seed: int) -> np.ndarray:
    """Exactly ``accuracy * n`` correct images, in a random order."""
    out = np.zeros(n, dtype=bool)
    out[: round(accuracy * n)] = True
    return np.random.default_rng(seed).permutation(out)


def test_identical_predictions_give_a_zero_gain_interval():
    a = _correct(500, 0.6, seed=0)
    ci = paired_intervals(a, a.copy())
    assert ci["gain_top1_ci95_low"] == 0.0 and ci["gain_top1_ci95_high"] == 0.0
    assert ci["test_top1_ci95_low"] == ci["random_init.test_top1_ci95_low"]


@pytest.mark.parametrize("n, accuracy", [(1000, 0.7), (4000, 0.3)])
def test_accuracy_interval_has_the_binomial_width(n, accuracy):
    ci = paired_intervals(_correct(n, accuracy, seed=1))
    low, high = ci["test_top1_ci95_low"], ci["test_top1_ci95_high"]
    assert low < accuracy < high
    expected = 2 * 1.96 * math.sqrt(accuracy * (1 - accuracy) / n)
    assert high - low == pytest.approx(expected, rel=0.1)
    assert (accuracy - low) == pytest.approx(high - accuracy, rel=0.25)  # about symmetric


def test_the_pairing_is_used():
    # The random-init model is right on the same images as the pretrained one, except a
    # few: the gain is small but certain. Resampling each independently would not see it.
    n = 2000
    pretrained = _correct(n, 0.7, seed=2)
    baseline = pretrained.copy()
    right = np.flatnonzero(pretrained)[:100]
    baseline[right] = False  # gain exactly +0.05
    ci = paired_intervals(pretrained, baseline)
    assert ci["gain_top1_ci95_low"] > 0.035 and ci["gain_top1_ci95_high"] < 0.065
    paired_width = ci["gain_top1_ci95_high"] - ci["gain_top1_ci95_low"]

    rng = np.random.default_rng(0)
    a = pretrained[rng.integers(0, n, (2000, n))].mean(1)
    b = baseline[rng.integers(0, n, (2000, n))].mean(1)
    low, high = np.quantile(a - b, [0.025, 0.975])
    assert low < 0.025  # unpaired: the interval nearly reaches zero
    assert paired_width < 0.5 * (high - low)


def test_matches_resampling_image_indices():
    # The four-count multinomial is the index bootstrap in distribution.
    n = 800
    rng = np.random.default_rng(3)
    a = rng.random(n) < 0.65
    b = np.where(rng.random(n) < 0.8, a, rng.random(n) < 0.5)
    ci = paired_intervals(a, b, resamples=4000)
    idx = np.random.default_rng(4).integers(0, n, (4000, n))
    ref = {
        "test_top1": a[idx].mean(1),
        "random_init.test_top1": b[idx].mean(1),
        "gain_top1": a[idx].mean(1) - b[idx].mean(1),
    }
    for key, values in ref.items():
        low, high = np.quantile(values, [0.025, 0.975])
        assert ci[f"{key}_ci95_low"] == pytest.approx(low, abs=0.006), key
        assert ci[f"{key}_ci95_high"] == pytest.approx(high, abs=0.006), key


def test_deterministic_and_cheap():
    a, b = _correct(10_000, 0.7, seed=5), _correct(10_000, 0.6, seed=6)
    start = time.perf_counter()
    first = paired_intervals(a, b, seed=7)
    assert time.perf_counter() - start < 1.0
    assert paired_intervals(a, b, seed=7) == first
    assert set(first) == {
        f"{key}_ci95_{end}"
        for key in ("test_top1", "random_init.test_top1", "gain_top1")
        for end in ("low", "high")
    }
    with pytest.raises(ValueError, match="800 baseline"):
        paired_intervals(a, b[:800])

"""Bootstrap confidence intervals over examples.

Each resample draws n examples with replacement (a seeded generator, so the interval is reproducible) and recomputes
every metric on it. The interval is the bias-corrected percentile interval (BC; Efron 1981, "Nonparametric standard
errors and confidence intervals"; Efron & Tibshirani 1993, ch. 14): the percentiles are shifted by
z0 = Phi^-1(share of resampled values below the point estimate). For unbiased statistics such as accuracy z0 is
about 0 and BC equals the plain percentile interval; for statistics that resampling biases, such as expected
calibration error (duplicated examples make a resample look less calibrated), the plain percentile interval can
miss the point estimate entirely, and BC corrects that. Metrics that cannot be computed on a resample (AUROC with
one class present) skip it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def as_dict(self, name: str) -> dict[str, float]:
        return {name: self.value, f"{name}_ci_low": self.low, f"{name}_ci_high": self.high}


@dataclass
class Floor:
    """What a trivial system scores on the same test examples (majority class, lead-3, copying the source): a result
    at or under it has learnt nothing the task rewards."""

    metric: str
    value: float
    what: str  # the trivial system, in words
    # the run minus the floor on the same examples, where per-example scores allow a paired test: (delta, low, high, p)
    paired: Optional[tuple[float, float, float, float]] = None

    def verdict(self, est: Estimate) -> tuple[str, str]:
        """(level, words) for a result against this floor (every metric with a floor is higher-is-better)."""
        if self.paired is not None:  # the paired difference decides: the same examples, scored both ways
            delta, low, high, p = self.paired
            diff = f"{delta:+.2f} [{low:+.2f}, {high:+.2f}] paired"
            if high < 0:
                return "below", f"BELOW it, {diff}"
            if low > 0:
                return "above", f"above it, {diff}"
            return "at", f"not distinguishable from it, {diff}"
        if est.high < self.value:
            return "below", "BELOW it"
        if est.low > self.value:
            return "above", "above it"
        return "at", "not distinguishable from it (inside the interval)"


def bc_interval(draws: np.ndarray, point: float, confidence: float) -> tuple[float, float]:
    """Bias-corrected percentile interval of bootstrap `draws` around `point`."""
    b = len(draws)
    below = (np.sum(draws < point) + 0.5 * np.sum(draws == point)) / b
    below = min(max(below, 0.5 / b), 1 - 0.5 / b)  # keep z0 finite when every draw is on one side
    nd = NormalDist()
    z0 = nd.inv_cdf(below)
    z = nd.inv_cdf(1 - (1 - confidence) / 2)
    lo_q, hi_q = nd.cdf(2 * z0 - z), nd.cdf(2 * z0 + z)
    lo, hi = np.quantile(draws, [lo_q, hi_q])
    return float(lo), float(hi)


def bootstrap(
    stat_fn: Callable[[np.ndarray], dict[str, float]],
    n: int,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Point estimates (on all n examples) with bootstrap intervals from `resamples` draws.

    `stat_fn(indices)` returns {metric: value} for the examples at `indices`.

    >>> correct = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=float)
    >>> est = bootstrap(lambda i: {"acc": correct[i].mean()}, len(correct), resamples=2000, seed=0)["acc"]
    >>> est.value, round(est.low, 2), round(est.high, 2)
    (0.7, 0.4, 1.0)
    """
    if n <= 0:
        raise ValueError("bootstrap needs at least one example")
    point = stat_fn(np.arange(n))
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)
        for k, v in stat_fn(idx).items():
            if v is not None and not math.isnan(v):
                draws[k].append(v)
    out = {}
    for k, v in point.items():
        vals = np.asarray(draws[k], dtype=float)
        if len(vals) == 0 or math.isnan(v):
            out[k] = Estimate(float(v), math.nan, math.nan)
        else:
            out[k] = Estimate(float(v), *bc_interval(vals, float(v), confidence))
    return out

"""Paired significance tests: is system B better than system A on the same test examples?

For BLEU and chrF harness calls sacreBLEU's own tests (`sacrebleu.significance`, so the numbers are exactly
`sacrebleu --paired-bs` / `--paired-ar`). For every other metric the same two procedures run on the metric's own
per-example data, with the counting that keeps them valid for discrete metrics: sacreBLEU counts resamples strictly
beyond the observed difference and centres |Δ| rather than Δ, which for accuracy-like metrics, whose differences tie
often, rejects a true null more often than alpha (about 13% and 8.5% at alpha=0.05 in tests/test_compare.py's
simulation, against 5% for the versions here):

- paired bootstrap (Koehn 2004): resample the examples with replacement (the same resample for both systems) and
  recompute both corpus-level scores; the interval of Δ = B − A is read off those resamples, and the p-value comes
  from the resampled differences shifted to mean zero (the null), as the share at least as far from zero as the
  observed Δ (Efron & Tibshirani 1993, ch. 16), with the +1 correction;
- approximate randomization (Noreen 1989; Riezler & Maxwell 2005): swap the two systems' outputs on a random half of
  the examples and recompute |Δ|; p = (shuffles with |Δ*| >= |Δ|, + 1) / (shuffles + 1);
- McNemar's exact test for accuracy: the examples only one system gets right, as a two-sided binomial test.

Indices are drawn as sacreBLEU draws them (numpy `default_rng(seed)`, default seed 12345), so a metric computed
here from sacreBLEU's statistics gives sacreBLEU's numbers. With several systems against one baseline, Holm's
step-down correction adjusts the p-values of each metric.

>>> rng = np.random.default_rng(0)
>>> a = (rng.random(500) < 0.70).astype(float)
>>> b = np.where(rng.random(500) < 0.3, 1.0, a)  # B fixes about a third of A's errors
>>> r = paired_bootstrap(mean_of("correct"), {"correct": a}, {"correct": b}, resamples=1000)
>>> round(r.delta, 3), r.p_value < 0.05, r.ci_low > 0
(0.102, True, True)
>>> holm([0.01, 0.04, 0.03])
[0.03, 0.06, 0.06]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from harness.metrics import PAIRED_RESAMPLES as BOOTSTRAP_RESAMPLES  # sacreBLEU's defaults
from harness.metrics import PAIRED_SEED as SEED

AR_TRIALS = 10000

Arrays = dict[str, np.ndarray]  # per-example data of one system, all arrays indexed by example
Score = Callable[[Arrays], float]  # the corpus-level metric of (a resample of) those examples


@dataclass
class Paired:
    a: float  # the baseline's score on all examples
    b: float
    delta: float  # b - a
    ci_low: float  # interval of the difference, from the paired bootstrap
    ci_high: float
    p_value: float
    draws: Optional[np.ndarray] = None  # the bootstrap differences (for plots)


def mean_of(key: str, scale: float = 1.0) -> Score:
    """A metric that is the mean of one per-example value (accuracy from `correct`, ROUGE from per-example F)."""

    def score(x: Arrays) -> float:
        return scale * float(np.mean(x[key]))

    score.mean_key, score.scale = key, scale  # type: ignore[attr-defined]  (lets the tests vectorise)
    return score


def take(x: Arrays, idx: np.ndarray) -> Arrays:
    return {k: v[idx] for k, v in x.items()}


def mix(a: Arrays, b: Arrays, from_a: np.ndarray) -> Arrays:
    """Per example, A's data where `from_a`, else B's."""
    out = {}
    for k, va in a.items():
        sel = from_a.reshape(-1, *([1] * (va.ndim - 1)))
        out[k] = np.where(sel, va, b[k])
    return out


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(n, size=(resamples, n), replace=True)


def _size(x: Arrays) -> int:
    return len(next(iter(x.values())))


def _p(stats: np.ndarray, observed: float) -> float:
    """(count of stats at least as extreme as the observed one, + 1) / (count + 1); a little tolerance, so that a
    resample that ties the observed value counts as a tie despite floating-point sums."""
    return (int(np.sum(stats >= observed - 1e-12 * max(1.0, abs(observed)))) + 1) / (len(stats) + 1)


def interval(draws: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return float(lo), float(hi)


def null_p(diffs: np.ndarray, observed: float) -> float:
    """Two-sided bootstrap p-value of an observed difference, from resampled differences shifted to mean zero."""
    return _p(np.abs(diffs - diffs.mean()), abs(observed))


def paired_bootstrap(
    score: Score,
    a: Arrays,
    b: Arrays,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = SEED,
    confidence: float = 0.95,
) -> Paired:
    n = _size(a)
    idx = bootstrap_indices(n, resamples, seed)
    key = getattr(score, "mean_key", None)
    if key is not None:  # a mean of per-example values: all resamples at once
        sa = score.scale * a[key][idx].mean(axis=1)  # type: ignore[attr-defined]
        sb = score.scale * b[key][idx].mean(axis=1)  # type: ignore[attr-defined]
    else:
        sa = np.array([score(take(a, i)) for i in idx])
        sb = np.array([score(take(b, i)) for i in idx])
    va, vb = score(a), score(b)
    d = sb - sa
    p = null_p(d, vb - va)
    lo, hi = interval(d, confidence)
    return Paired(va, vb, vb - va, lo, hi, p, sb - sa)


def approximate_randomization(
    score: Score, a: Arrays, b: Arrays, *, trials: int = AR_TRIALS, seed: int = SEED
) -> float:
    n = _size(a)
    from_a = np.random.default_rng(seed).integers(2, size=(trials, n), dtype=bool)
    observed = abs(score(b) - score(a))
    key = getattr(score, "mean_key", None)
    if key is not None:
        va, vb = a[key], b[key]
        s1 = np.where(from_a, va, vb).mean(axis=1)
        s2 = np.where(from_a, vb, va).mean(axis=1)
        stats = score.scale * np.abs(s1 - s2)  # type: ignore[attr-defined]
    else:
        stats = np.array([abs(score(mix(a, b, m)) - score(mix(b, a, m))) for m in from_a])
    return _p(stats, observed)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact two-sided McNemar p-value from the examples exactly one of the two systems gets right."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)


def format_p(p: Any) -> str:
    """A p-value as printed anywhere by harness: never 0 (a resampling or exact test gives a small positive number,
    not zero), `< 0.001` below a thousandth, else three decimals.

    >>> [format_p(x) for x in (2.6e-8, 0.0009999, 0.001, 0.04567, 1.0)]
    ['< 0.001', '< 0.001', '0.001', '0.046', '1.000']
    """
    if not is_finite(p):
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_text(p: Any) -> str:
    """`p=0.046` or `p < 0.001`, for a sentence.

    >>> p_text(0.04567), p_text(2.6e-8)
    ('p=0.046', 'p < 0.001')
    """
    shown = format_p(p)
    return f"p {shown}" if shown.startswith("<") else f"p={shown}"


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of several p-values (family-wise error rate)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = round(running, 12)
    return adjusted


def is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)

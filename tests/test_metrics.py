"""Metrics against hand-computed values, and the bootstrap's behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.metrics.bootstrap import bc_interval, bootstrap
from harness.metrics.classification import collection, compute, reliability_bins


def test_hand_computed_example():
    # top-label confidences 0.9 (right), 0.8 (right), 0.6 (wrong), 0.7 (right), each alone in one of 15 bins:
    # ECE = (0.1 + 0.2 + 0.6 + 0.3) / 4 = 0.3.  F1: class 0 = 2*1/(2*1+1+0) = 2/3, class 1 = 2*2/(2*2+0+1) = 0.8.
    p = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = torch.tensor([0, 1, 1, 1])
    m = compute(p, y)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["auroc"] == pytest.approx(1.0)  # every positive scores above the one negative
    assert m["ece"] == pytest.approx(0.3)


def test_auroc_counts_ties_as_half_and_needs_two_classes():
    p = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.8, 0.2], [0.1, 0.9]])
    y = torch.tensor([0, 1, 0, 1])
    # pairs (pos, neg): (0.5,0.5)=0.5, (0.5,0.2)=1, (0.9,0.5)=1, (0.9,0.2)=1 -> 3.5/4
    assert compute(p, y)["auroc"] == pytest.approx(0.875)
    assert math.isnan(compute(p[:2], torch.tensor([1, 1]))["auroc"])


def test_ece_matches_reliability_bins_and_stateful_version():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(500, 3, generator=g) * 2, 1)
    y = torch.randint(0, 3, (500,), generator=g)
    b = reliability_bins(p.numpy(), y.numpy(), 15)
    has = b["count"] > 0
    manual = float(np.sum(b["count"][has] / 500 * np.abs(b["accuracy"][has] - b["confidence"][has])))
    m = compute(p, y)
    assert m["ece"] == pytest.approx(manual, abs=1e-6)
    col = collection(3)
    col.update(p[:200], y[:200])
    col.update(p[200:], y[200:])
    stateful = {k: float(v) for k, v in col.compute().items()}
    for k in m:
        assert stateful[k] == pytest.approx(m[k], abs=1e-5), k


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    correct = (rng.random(400) < 0.8).astype(float)
    fn = lambda i: {"acc": correct[i].mean()}  # noqa: E731
    a = bootstrap(fn, 400, resamples=1000, seed=3)["acc"]
    assert a == bootstrap(fn, 400, resamples=1000, seed=3)["acc"]
    assert a != bootstrap(fn, 400, resamples=1000, seed=4)["acc"]
    se = math.sqrt(a.value * (1 - a.value) / 400)
    assert a.low < a.value < a.high
    assert (a.high - a.low) == pytest.approx(2 * 1.96 * se, rel=0.15)  # close to the normal interval


def test_bootstrap_coverage():
    """Over many datasets drawn from a known rate, the 95% interval contains it about 95% of the time."""
    rng = np.random.default_rng(0)
    hits = 0
    trials = 300
    for t in range(trials):
        x = (rng.random(200) < 0.7).astype(float)
        est = bootstrap(lambda i, x=x: {"m": x[i].mean()}, 200, resamples=400, seed=t)["m"]
        hits += est.low <= 0.7 <= est.high
    assert 0.90 <= hits / trials <= 0.98


def test_bias_corrected_interval_follows_a_biased_statistic():
    # all draws above the point estimate (as for ECE): the plain percentile interval would exclude it
    draws = np.linspace(0.02, 0.05, 1000)
    lo, hi = bc_interval(draws, 0.01, 0.95)
    assert lo == pytest.approx(0.02) and hi < 0.0205
    sym = np.random.default_rng(0).normal(0.5, 0.01, 5000)
    lo, hi = bc_interval(sym, 0.5, 0.95)
    assert lo == pytest.approx(np.quantile(sym, 0.025), abs=1e-3) and hi == pytest.approx(
        np.quantile(sym, 0.975), abs=1e-3
    )

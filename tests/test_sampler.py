"""Length-aware batching: every example once per epoch, similar lengths per batch, random order, exact resume."""

from __future__ import annotations

import numpy as np

from harness.data import sampler as sampler_mod
from harness.data.sampler import BucketBatchSampler

LENGTHS = np.random.default_rng(0).integers(5, 500, size=1003)


def _epoch(s, epoch):
    s.sampler.set_epoch(epoch)
    return list(s)


def test_each_example_once_and_batches_are_homogeneous():
    s = BucketBatchSampler(LENGTHS, 16, shuffle=True, seed=1, multiplier=50)
    batches = _epoch(s, 0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(LENGTHS))) and len(batches) == len(s) == 63
    spread = np.mean([np.ptp(LENGTHS[b]) for b in batches])
    random_spread = np.mean([np.ptp(LENGTHS[b]) for b in np.array_split(np.arange(1003), 63)])
    assert spread < random_spread / 5  # bucketing: far less padding than random batches


def test_order_is_shuffled_and_changes_per_epoch_and_seed():
    s = BucketBatchSampler(LENGTHS, 16, shuffle=True, seed=1)
    e0, e1 = _epoch(s, 0), _epoch(s, 1)
    assert e0 != e1 and e0 == _epoch(s, 0)
    first_lengths = [LENGTHS[b].mean() for b in e0]
    assert not np.all(np.diff(first_lengths) >= 0) and not np.all(np.diff(first_lengths) <= 0)
    assert _epoch(BucketBatchSampler(LENGTHS, 16, shuffle=True, seed=2), 0) != e0


def test_resume_skips_consumed_batches_of_that_epoch_only():
    s = BucketBatchSampler(LENGTHS, 16, shuffle=True, seed=1)
    full = _epoch(s, 3)
    r = BucketBatchSampler(LENGTHS, 16, shuffle=True, seed=1)
    r.sampler.set_epoch(3)
    r.resume(3, 40)
    assert list(r) == full[40:]
    assert _epoch(r, 4) == _epoch(s, 4)  # the next epoch is whole again


def test_eval_is_sorted_longest_first_and_unbucketed_is_sequential():
    s = BucketBatchSampler(LENGTHS, 64, shuffle=False)
    flat = [i for b in s for i in b]
    assert np.all(np.diff(LENGTHS[flat]) <= 0) and sorted(flat) == list(range(1003))
    plain = BucketBatchSampler(LENGTHS, 64, shuffle=False, bucketing=False)
    assert [i for b in plain for i in b] == list(range(1003))


def test_ranks_get_disjoint_equal_shares(monkeypatch):
    shares = []
    for rank in range(2):
        monkeypatch.setattr(sampler_mod, "_world", lambda r=rank: (2, r))
        s = BucketBatchSampler(LENGTHS, 16, shuffle=True, seed=1)
        shares.append(_epoch(s, 0))
        assert len(shares[-1]) == len(s) == 32
    assert len(shares[0]) == len(shares[1])
    covered = {i for share in shares for b in share for i in b}
    assert covered == set(range(1003))
    # each step is what one process with twice the batch takes: the same examples whatever the world size
    monkeypatch.setattr(sampler_mod, "_world", lambda: (1, 0))
    single = _epoch(BucketBatchSampler(LENGTHS, 32, shuffle=True, seed=1), 0)
    assert [sorted(a + b) for a, b in zip(*shares)] == [sorted(b) for b in single]
    assert sorted(len(b) for b in shares[0])[:2] == [6, 16] and sorted(len(b) for b in shares[1])[:2] == [5, 16]


def test_eval_shards_examples_so_every_rank_has_a_batch(monkeypatch):
    lengths = LENGTHS[:40]  # fewer examples than one eval batch
    seen = []
    for rank in range(2):
        monkeypatch.setattr(sampler_mod, "_world", lambda r=rank: (2, r))
        s = BucketBatchSampler(lengths, 64, shuffle=False)
        batches = list(s)
        assert len(batches) == len(s) == 1
        seen += batches[0]
    assert sorted(seen) == list(range(40))


def test_a_token_budget_fills_each_batch_and_keeps_every_example_once():
    s = BucketBatchSampler(LENGTHS, 16, shuffle=True, seed=1, max_tokens=4096, multiple=8)
    batches = _epoch(s, 0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(LENGTHS))) and len(batches) == len(s)
    padded = [-(-int(LENGTHS[b].max()) // 8) * 8 * len(b) for b in batches]
    assert max(padded) <= 4096  # no batch over the budget (no example here is longer than it)
    sizes = [len(b) for b in batches]
    assert min(sizes) < 16 < max(sizes)  # long examples in small batches, short ones in large
    assert np.mean(padded) > 0.8 * 4096  # and the batches are full: few, full steps
    # every step does about the same work; with a fixed count a step of long examples does many times more
    fixed = [
        -(-int(LENGTHS[b].max()) // 8) * 8 * len(b) for b in _epoch(BucketBatchSampler(LENGTHS, 16, shuffle=True), 0)
    ]
    assert np.std(padded) / np.mean(padded) < 0.2 < np.std(fixed) / np.mean(fixed)


def test_a_token_budget_for_evaluation_longest_first_and_an_over_long_example_alone():
    lengths = np.array([600, 10, 20, 30, 300, 290])
    s = BucketBatchSampler(lengths, 64, shuffle=False, max_tokens=512)
    assert list(s) == [[0], [4], [5], [3, 2, 1]]


def test_a_token_budget_resumes_to_the_same_batches_and_splits_across_ranks(monkeypatch):
    s = BucketBatchSampler(LENGTHS, 16, shuffle=True, seed=1, max_tokens=4096)
    full = _epoch(s, 2)
    r = BucketBatchSampler(LENGTHS, 16, shuffle=True, seed=1, max_tokens=4096)
    r.sampler.set_epoch(2)
    r.resume(2, 10)
    assert list(r) == full[10:]
    # two ranks: each step's global batch (twice the budget) in two slices; together every example once
    ranks = []
    for rank in (0, 1):
        monkeypatch.setattr(sampler_mod, "_world", lambda rank=rank: (2, rank))
        ranks.append(_epoch(BucketBatchSampler(LENGTHS, 16, shuffle=True, seed=1, max_tokens=4096), 0))
    assert len(ranks[0]) == len(ranks[1])
    seen = sorted(i for rb in ranks for b in rb for i in b)
    assert set(seen) == set(range(len(LENGTHS)))

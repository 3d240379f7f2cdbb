"""Length-aware batching.

Training: the epoch's permutation is cut into pools of `batch_size * multiplier` examples, each pool is sorted by
length and cut into batches, and the batches are shuffled. Batches hold similar lengths (little padding) while the
order stays random. Evaluation: all examples sorted by length, longest first (an out-of-memory error shows on the
first batch, not the last).

With a token budget (`data.max_tokens`, `data.eval_max_tokens`) a batch holds as many examples as fit in the budget
of padded tokens instead of a fixed count: short examples travel in large batches, long ones in small, so every
step does about the same work (fewer, fuller steps). Each example's loss then weighs by its batch's size, as in
token-batched training generally; the scheduler's length is the first epoch's count of batches.

The sampler is resumable: `start_batch` skips batches already consumed in the current epoch, so a run resumed from a
mid-epoch checkpoint sees exactly the batches an uninterrupted run would. Under DDP, training steps are the batches
one process with `batch_size * world_size` would take, each cut into one slice per rank: the same examples make each
optimizer step whatever the number of processes (2 nodes x batch 16 train as 1 process x batch 32), and ranks get
equal counts, as DDP needs. For evaluation each rank takes every world_size-th example, so no rank is left without
a batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist


class _Epoch:
    """Lightning calls `set_epoch` on `batch_sampler.sampler`; this object receives it."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class BucketBatchSampler:
    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        bucketing: bool = True,
        multiplier: int = 50,
        max_tokens: int | None = None,
        multiple: int | None = None,
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        # a token budget instead of a fixed count: as many examples as fit in `max_tokens` padded tokens (lengths
        # rounded up to `multiple`, as the collator pads them); batch_size then only sizes the sorting pools
        self.max_tokens = max_tokens
        self.multiple = multiple
        self.shuffle = shuffle
        self.seed = seed
        self.bucketing = bucketing
        self.multiplier = multiplier
        self.sampler = _Epoch()
        self.start_batch = 0  # batches of epoch `_resume_epoch` already consumed (set when resuming)
        self._resume_epoch: int | None = None

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def _all_batches(self, batch_size: int | None = None, world: int = 1) -> list[np.ndarray]:
        n = len(self.lengths)
        batch_size = batch_size or self.batch_size
        budget = self.max_tokens * world if self.max_tokens else None
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = rng.permutation(n)
            if self.bucketing:
                pool = batch_size * self.multiplier
                chunks = [order[i : i + pool] for i in range(0, n, pool)]
                # stable sort keeps the random order among equal lengths; a batch never spans two pools
                chunks = [c[np.argsort(self.lengths[c], kind="stable")] for c in chunks]
                batches = [b for c in chunks for b in self._cut(c, batch_size, budget)]
            else:
                batches = self._cut(order, batch_size, budget)
            perm = rng.permutation(len(batches))
            return [batches[i] for i in perm]
        return self._cut(self._eval_order(), batch_size, budget)

    def _cut(self, order: np.ndarray, batch_size: int, budget: int | None) -> list[np.ndarray]:
        """`order` cut into consecutive batches: `batch_size` examples each, or with a token budget as many as fit
        (the batch's longest padded length x its examples <= budget; one longer example makes a batch alone)."""
        if not budget:
            return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        padded = self.lengths[order]
        if self.multiple:
            padded = -(-padded // self.multiple) * self.multiple
        batches, start, longest = [], 0, 0
        for j, length in enumerate(padded.tolist()):
            longest_with = max(longest, length)
            if j > start and longest_with * (j - start + 1) > budget:
                batches.append(order[start:j])
                start, longest_with = j, length
            longest = longest_with
        if start < len(order):
            batches.append(order[start:])
        return batches

    def _eval_order(self) -> np.ndarray:
        n = len(self.lengths)
        return np.argsort(-self.lengths, kind="stable") if self.bucketing else np.arange(n)

    def _rank_batches(self) -> list[np.ndarray]:
        world, rank = _world()
        if world == 1:
            return self._all_batches()
        if self.shuffle:  # training: this rank's slice of each global batch (DDP steps in lockstep)
            steps = self._all_batches(self.batch_size * world, world)
            mine = []
            for b in steps:
                if len(b) < world:  # a last batch with fewer examples than ranks: wrap around
                    b = np.concatenate([b, steps[0][: world - len(b)]])
                mine.append(np.array_split(b, world)[rank])
            return mine
        # evaluation: examples are dealt out one by one, so every rank has work even for a single batch
        return self._cut(self._eval_order()[rank::world], self.batch_size, self.max_tokens)

    def resume(self, epoch: int, batches_done: int) -> None:
        """Skip the first `batches_done` batches the next time epoch `epoch` is iterated."""
        self._resume_epoch, self.start_batch = epoch, batches_done

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        start = self.start_batch if self.epoch == self._resume_epoch else 0
        self.start_batch, self._resume_epoch = 0, None
        for b in batches[start:]:
            yield b.tolist()

    def __len__(self) -> int:
        if self.max_tokens:  # this epoch's count (another epoch's pools may cut into a few more or fewer)
            return len(self._rank_batches())
        n_batches = math.ceil(len(self.lengths) / self.batch_size)
        world, rank = _world()
        if world == 1:
            return n_batches
        if self.shuffle:
            return math.ceil(len(self.lengths) / (self.batch_size * world))
        return math.ceil(len(range(rank, len(self.lengths), world)) / self.batch_size)

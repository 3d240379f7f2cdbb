"""A split held on the training device (`data.device_resident`).

The ordinary loader pads each batch on the host (a Python loop over its rows) and copies it to the device every step.
A resident split is padded once, to its longest row, into one matrix per token field plus the attention mask; the
matrices go to the device once, and a batch is the sampler's indices: the loader hands over a `ResidentBatch` (the
indices, the batch's padded width and its real-token count, all known on the host) and moving it to the device
gathers the rows there (one `index_select` per field on the first `width` columns). The batches are the very ones the
host collator builds, same values and dtypes, so a run trains the same either way; only where the padding happens
moves.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import torch

# auto holds splits on the GPU only while all of them together take at most this share of the memory free before
FREE_MEMORY_SHARE = 0.2


def round_up(n: int, multiple: Optional[int]) -> int:
    return -(-n // multiple) * multiple if multiple else n


def resident_bytes(ds: Any, multiple: Optional[int]) -> int:
    """What `ResidentStore(ds, ...)` takes: an int64 matrix per token field and the mask, plus the scalar fields."""
    n = len(ds)
    width = round_up(int(ds.lengths.max()) if n else 1, multiple)
    return n * width * 8 * (len(ds.sequences) + 1) + sum(np.asarray(v).nbytes for v in ds.scalars.values())


def fits_on_gpu(size: int, held: int = 0) -> bool:
    """Whether `size` more bytes keep the splits held on this process's GPU (`held` bytes so far) within
    FREE_MEMORY_SHARE of the memory that was free before any of them."""
    # asks the CUDA driver: called only when the run's device is a GPU (a CPU test forces residency with `true`).
    # Before Lightning picks this rank's device (an evaluation under torchrun), the local rank names it, so no
    # process opens a context on GPU 0 that it will not use
    index = (
        torch.cuda.current_device()
        if torch.cuda.is_initialized()
        else int(os.environ.get("LOCAL_RANK", "0")) % max(torch.cuda.device_count(), 1)
    )
    free, _total = torch.cuda.mem_get_info(index)
    return fits(size, usable_free(free, torch.cuda.memory_reserved(index), torch.cuda.memory_allocated(index)), held)


def usable_free(driver_free: int, reserved: int, allocated: int) -> int:
    """What this process can still place: what the driver calls free, plus what PyTorch's caching allocator has
    reserved but holds nothing in (the driver counts that as used; after a memory-heavy fit it can be most of it, and
    the test split would fall back to host batching without cause).

    >>> usable_free(2_000, reserved=10_000, allocated=3_000)
    9000
    """
    return driver_free + max(reserved - allocated, 0)


def fits(size: int, free: int, held: int = 0) -> bool:
    """`size` more bytes on top of `held` stay within FREE_MEMORY_SHARE of what was free before (`free` + `held`)."""
    return held + size <= FREE_MEMORY_SHARE * (free + held)


class ResidentStore:
    """One split as padded tensors (what `PadCollator` would build for a batch of every row), per device once."""

    def __init__(self, ds: Any, pad_values: dict[str, int], multiple: Optional[int]):
        n = len(ds)
        lengths = np.asarray(ds.lengths, dtype=np.int64)
        self.lengths = lengths
        self.multiple = multiple
        self.width = round_up(int(lengths.max()) if n else 1, multiple)
        host: dict[str, torch.Tensor] = {}
        for key, (values, offsets) in ds.sequences.items():
            lens = np.diff(offsets)
            rows = np.repeat(np.arange(n), lens)
            cols = np.arange(len(values)) - np.repeat(offsets[:-1], lens)
            arr = np.full((n, self.width), pad_values.get(key, 0), dtype=np.int64)
            arr[rows, cols] = values
            host[key] = torch.from_numpy(arr)
        rows = np.repeat(np.arange(n), lengths)
        cols = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        mask = np.zeros((n, self.width), dtype=np.int64)
        mask[rows, cols] = 1
        host["attention_mask"] = torch.from_numpy(mask)
        for key, v in ds.scalars.items():
            host[key] = torch.as_tensor(np.asarray(v))
        self._on: dict[str, dict[str, torch.Tensor]] = {"cpu": host}
        self.nbytes = sum(t.numel() * t.element_size() for t in host.values())

    def on(self, device: Any) -> dict[str, torch.Tensor]:
        """The matrices on `device`, copied there the first time it is asked for."""
        key = str(torch.device(device))
        if key not in self._on:
            self._on[key] = {k: v.to(device) for k, v in self._on["cpu"].items()}
        return self._on[key]

    def batch(self, index: list[int]) -> ResidentBatch:
        """The host-side batch for these rows: their indices, padded width and real-token count (no device work)."""
        lengths = self.lengths[index]
        width = round_up(int(lengths.max()), self.multiple)
        return ResidentBatch(self, torch.as_tensor(index, dtype=torch.int64), width, int(lengths.sum()))


class ResidentBatch:
    """A batch still on the host as indices; `.to(device)` (Lightning's transfer calls it) gathers it there."""

    def __init__(self, store: ResidentStore, index: torch.Tensor, width: int, tokens: int):
        self.store = store
        self.index = index
        self.width = width
        self.tokens = tokens  # real (non-pad) tokens, counted on the host for the step monitor

    def __len__(self) -> int:
        return len(self.index)

    def to(self, device: Any, non_blocking: bool = False) -> dict[str, torch.Tensor]:
        fields = self.store.on(device)
        index = self.index.to(fields["attention_mask"].device, non_blocking=non_blocking)
        return {k: (v[:, : self.width] if v.dim() == 2 else v).index_select(0, index) for k, v in fields.items()}


class Indices(torch.utils.data.Dataset):
    """Stands for a resident split in a DataLoader: fetching rows returns their indices."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i

    def __getitems__(self, idx: list[int]) -> list[int]:
        return idx


def batch_to(batch: Any, device: Any) -> dict[str, torch.Tensor]:
    """A loader's batch on `device`, resident or not (for loops that move batches themselves)."""
    if isinstance(batch, ResidentBatch):
        return batch.to(device, non_blocking=True)
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

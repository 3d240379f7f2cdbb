"""Pieces every family's DataModule shares: token storage, padding, length-aware loaders, resumable state.

A family supplies one function, `encode(batch) -> {"input_ids": [...], ...}`, that turns rows into token ids; the
base class tokenizes each split once (cached by `datasets` under a fingerprint of data + tokenizer + settings),
keeps the ids in flat arrays, and serves batches padded to the longest sequence (rounded up to a multiple, so GPU
kernels see few distinct shapes).
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from harness.config import RunConfig, TaskSpec, device_resident_refused
from harness.data.resident import Indices, ResidentStore, fits_on_gpu, resident_bytes
from harness.data.sampler import BucketBatchSampler
from harness.data.sources import SplitData, TaskData
from harness.runtime import device_type

ENCODING_VERSION = "1"  # bump when an encode function changes, so cached tokenizations are not reused


class TokenizedDataset(Dataset):
    """Variable-length id sequences in one flat array plus offsets, and per-example scalar fields."""

    def __init__(self, sequences: dict[str, tuple[np.ndarray, np.ndarray]], scalars: dict[str, np.ndarray]):
        self.sequences = sequences  # name -> (flat values, offsets of length n+1)
        self.scalars = scalars
        first = next(iter(sequences.values()))
        self.lengths = np.diff(first[1])

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row: dict[str, Any] = {k: v[o[i] : o[i + 1]] for k, (v, o) in self.sequences.items()}
        for k, v in self.scalars.items():
            row[k] = v[i]
        return row

    def __getitems__(self, idx: list[int]) -> list[dict[str, Any]]:
        return [self[i] for i in idx]

    @classmethod
    def from_arrow(cls, ds: Any, sequence_cols: list[str], scalar_cols: list[str]) -> TokenizedDataset:
        seqs = {}
        for c in sequence_cols:
            col = ds.data.column(c).combine_chunks()
            # datasets may hold a slice of a larger table (select / indices mapping already applied by flatten)
            offsets = np.asarray(col.offsets, dtype=np.int64)
            values = np.asarray(col.values, dtype=np.int64)
            seqs[c] = (values[offsets[0] : offsets[-1]], offsets - offsets[0])
        scalars = {c: np.asarray(ds[c]) for c in scalar_cols}
        return cls(seqs, scalars)


class Pretokenized:
    """Stands for a task's data when the splits arrive tokenized (the GPU check's bundle, a benchmark's rows):
    nothing to load; the caller fills the data module's `encoded` itself."""

    splits: dict[str, Any] = {}
    notes: list[str] = []


class PadCollator:
    """Pads `input_ids` (and friends) to the batch's longest sequence, rounded up to `multiple`."""

    def __init__(self, pad_id: int, multiple: Optional[int], pad_values: Optional[dict[str, int]] = None):
        self.multiple = multiple
        self.pad_values = {"input_ids": pad_id, "token_type_ids": 0, "labels": -100, **(pad_values or {})}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = len(rows)
        longest = max(len(r["input_ids"]) for r in rows)
        if self.multiple:
            longest = -(-longest // self.multiple) * self.multiple
        out: dict[str, torch.Tensor] = {}
        mask = np.zeros((n, longest), dtype=np.int64)
        for key in rows[0]:
            first = rows[0][key]
            if isinstance(first, np.ndarray) and first.ndim == 1:
                arr = np.full((n, longest), self.pad_values.get(key, 0), dtype=np.int64)
                for i, r in enumerate(rows):
                    arr[i, : len(r[key])] = r[key]
                out[key] = torch.from_numpy(arr)
            else:
                out[key] = torch.as_tensor(np.asarray([r[key] for r in rows]))
        for i, r in enumerate(rows):
            mask[i, : len(r["input_ids"])] = 1
        out["attention_mask"] = torch.from_numpy(mask)
        return out


def encoding_fingerprint(ds: Any, tokenizer: Any, settings: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(ENCODING_VERSION.encode())
    h.update(str(ds._fingerprint).encode())
    h.update(str(getattr(tokenizer, "name_or_path", "")).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else str(tokenizer.get_vocab()).encode())
    h.update(repr(sorted(settings.items())).encode())
    return h.hexdigest()[:32]


def eval_sampler(ds: TokenizedDataset, d: Any) -> BucketBatchSampler:
    """Evaluation batches from `data.*`: longest first, `eval_batch_size` examples or `eval_max_tokens` tokens."""
    return BucketBatchSampler(
        ds.lengths,
        d.eval_batch_size,
        shuffle=False,
        bucketing=d.bucketing,
        max_tokens=d.eval_max_tokens,
        multiple=d.pad_to_multiple_of,
    )


def loader_options(d: Any) -> dict[str, Any]:
    """A DataLoader's worker and memory options from `data.*`, the same for every family and split."""
    return {
        "num_workers": d.num_workers,
        # page-locked batches need a CUDA driver: without one torch would warn and leave them unpinned, so a CPU run
        # asks for none (a CPU test passes data.pin_memory=true through everything but this pinning)
        "pin_memory": d.pin_memory and torch.cuda.is_available(),
        "persistent_workers": d.num_workers > 0,
    }


class HarnessDataModule(L.LightningDataModule):
    """Tokenizes the task's splits once and serves length-aware batches; resumable mid-epoch."""

    sequence_cols: list[str] = ["input_ids"]
    scalar_cols: list[str] = ["_row"]

    def __init__(self, cfg: RunConfig, task: TaskSpec, data: TaskData, tokenizer: Any):
        super().__init__()
        self.cfg = cfg
        self.task = task
        self.data = data
        self.tokenizer = tokenizer
        self.encoded: dict[str, TokenizedDataset] = {}
        self._train_sampler: Optional[BucketBatchSampler] = None
        self._resume: Optional[dict[str, int]] = None
        self._batches_done = 0
        self._count_epoch = -1
        # data.device_resident: per split, the rows it was built from and their store (None: kept on the host)
        self._stores: dict[str, tuple[TokenizedDataset, Optional[ResidentStore]]] = {}
        self.resident: dict[str, bool] = {}  # split -> whether its loader gathers batches on the device

    # ---- family hook ---------------------------------------------------------------------------------------------
    def encode(self, batch: dict[str, list]) -> dict[str, list]:
        raise NotImplementedError

    def encode_settings(self) -> dict[str, Any]:
        return {"max_length": self.cfg.data.max_length}

    # ---- tokenization --------------------------------------------------------------------------------------------
    def encode_split(self, split: SplitData) -> TokenizedDataset:
        ds = split.dataset
        fp = encoding_fingerprint(ds, self.tokenizer, {**self.encode_settings(), "cls": type(self).__name__})
        keep = set(self.scalar_cols)
        enc = ds.map(
            self.encode,
            batched=True,
            batch_size=1000,
            remove_columns=[c for c in ds.column_names if c not in keep],
            new_fingerprint=fp,
            desc=f"Tokenizing {split.name}",
        )
        return TokenizedDataset.from_arrow(enc.flatten_indices(), self.sequence_cols, self.scalar_cols)

    def setup(self, stage: Optional[str] = None) -> None:
        for name, split in self.data.splits.items():
            if name not in self.encoded:
                self.encoded[name] = self.encode_split(split)

    # ---- loaders -------------------------------------------------------------------------------------------------
    def collator(self) -> PadCollator:
        pad = self.tokenizer.pad_token_id
        return PadCollator(pad if pad is not None else 0, self.cfg.data.pad_to_multiple_of)

    def _loader(self, ds: TokenizedDataset, sampler: BucketBatchSampler, split: str) -> DataLoader:
        store = self.resident_store(ds, split)
        self.resident[split] = store is not None
        if store is not None:  # batches are indices, gathered on the device (no workers: nothing left to do there)
            return DataLoader(Indices(len(ds)), batch_sampler=sampler, collate_fn=store.batch, num_workers=0)
        return DataLoader(ds, batch_sampler=sampler, collate_fn=self.collator(), **loader_options(self.cfg.data))

    def resident_store(self, ds: TokenizedDataset, split: str) -> Optional[ResidentStore]:
        """Split `split` (rows `ds`) held as device tensors when `data.device_resident` says so (auto: on a GPU, if
        it fits), else None; built once per split (again only if its rows were replaced)."""
        setting = self.cfg.data.device_resident
        if setting is False:
            return None
        collator = self.collator()
        if type(collator) is not PadCollator:  # masking / generation collators draw or build batches on the host
            if setting is True:
                raise device_resident_refused(self.task.family, "config")
            return None
        built = self._stores.get(split)
        if built is None or built[0] is not ds:
            device = device_type(self.cfg.trainer.accelerator)
            size = resident_bytes(ds, collator.multiple)
            held = sum(s.nbytes for name, (_, s) in self._stores.items() if s is not None and name != split)
            if setting == "auto" and not (device == "cuda" and fits_on_gpu(size, held)):
                built = (ds, None)
            else:
                built = (ds, ResidentStore(ds, collator.pad_values, collator.multiple))
            self._stores[split] = built
        return built[1]

    def resident_splits(self) -> str:
        """The splits whose batches were gathered on the device, as the run's tag states them ("none" if no split)."""
        return ",".join(split for split, on in self.resident.items() if on) or "none"

    def split_set(self, split: str) -> TokenizedDataset:
        """The tokenized rows the train/validation/test loaders serve for `split` (a family may serve a view)."""
        return self.encoded[split]

    def train_dataloader(self) -> DataLoader:
        ds = self.split_set("train")
        d = self.cfg.data
        sampler = BucketBatchSampler(
            ds.lengths,
            d.batch_size,
            shuffle=True,
            seed=self.cfg.seed,
            bucketing=d.bucketing,
            multiplier=d.bucket_multiplier,
            max_tokens=d.max_tokens,
            multiple=d.pad_to_multiple_of,
        )
        self._train_sampler = sampler
        self._apply_resume()
        return self._loader(ds, sampler, "train")

    def _apply_resume(self) -> None:
        if self._resume and self._train_sampler is not None:
            self._train_sampler.resume(self._resume["epoch"], self._resume["batches_done"])
            self._batches_done = self._resume["batches_done"]
            self._count_epoch = self._resume["epoch"]
            self._resume = None

    def eval_dataloader(self, split: str) -> DataLoader:
        ds = self.split_set(split)
        return self._loader(ds, eval_sampler(ds, self.cfg.data), split)

    def val_dataloader(self) -> Any:
        return self.eval_dataloader("validation") if "validation" in self.encoded else []

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    # ---- resume --------------------------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training and self._train_sampler is not None:
            if self._train_sampler.epoch != self._count_epoch:
                self._count_epoch, self._batches_done = self._train_sampler.epoch, 0
            self._batches_done += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        if self._train_sampler is None:
            return {}
        return {"epoch": int(self._count_epoch), "batches_done": int(self._batches_done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Where to pick up the interrupted epoch. Under a strategy that restores after setting up (sharded
        training), the loader exists already (the optimizer's schedule counted its batches): its sampler is told now,
        before its first iteration."""
        if state_dict:
            self._resume = {"epoch": int(state_dict["epoch"]), "batches_done": int(state_dict["batches_done"])}
            self._apply_resume()


def split_tokens(ids: list[int], budget: int, how: str, head_tokens: Optional[int]) -> list[int]:
    """Cut a token list to `budget`: keep the head, the tail, or both (head_tail keeps `head_tokens` from the start
    and fills the rest from the end, which Sun et al. 2019 found best for long reviews)."""
    if len(ids) <= budget:
        return ids
    if how == "head":
        return ids[:budget]
    if how == "tail":
        return ids[len(ids) - budget :]
    head = budget // 4 if head_tokens is None else min(head_tokens, budget)
    tail = budget - head
    return ids[:head] + (ids[len(ids) - tail :] if tail else [])


def special_token_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a single sequence (e.g. [CLS] ... [SEP])."""
    probe = "hello"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], []

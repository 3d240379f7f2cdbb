"""DataModule for language modelling (causal and masked) on plain text.

Training text is packed by default: documents are tokenized, joined with the end-of-sequence (causal) or [SEP]
(masked) token, and cut into blocks of `data.max_length`, so no compute goes to padding. Validation and test
documents are scored one by one (truncated to `max_length`, never packed), so perplexity has a per-document
breakdown and a bootstrap over documents.

Masked LM: dynamic masking in the collator (`data.mlm_probability` of the tokens, 80% [MASK], 10% random, 10%
kept; special tokens never), optionally whole words at a time. Training masks are drawn from torch's seeded RNG (new
masks every epoch); evaluation masks are fixed per document (seeded by the run seed and the row), so the same
tokens are scored before and after training.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from harness.config import RunConfig, TaskSpec
from harness.data.base import HarnessDataModule, TokenizedDataset, eval_sampler, loader_options
from harness.data.generation import SequenceCollator
from harness.data.nsp import PairBuilder, split_sentences
from harness.data.sources import TaskData


def pack(docs: list[np.ndarray], block: int, sep: Optional[int]) -> list[np.ndarray]:
    """Concatenate documents (with `sep` after each) and cut into blocks of `block` tokens; the short tail is kept."""
    parts = []
    for d in docs:
        parts.append(d)
        if sep is not None:
            parts.append(np.array([sep], dtype=np.int64))
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return [flat[i : i + block] for i in range(0, len(flat), block)]


class MaskingCollator(SequenceCollator):
    """Pads, then masks: labels hold the original ids at selected positions and -100 elsewhere."""

    def __init__(
        self,
        tokenizer: Any,
        multiple: Optional[int],
        probability: float,
        whole_words: bool,
        fixed_seed: Optional[int] = None,
    ):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        super().__init__(pad, multiple, "right")
        self.mask_id = tokenizer.mask_token_id
        self.vocab = len(tokenizer)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.p = probability
        self.whole_words = whole_words
        self.fixed_seed = fixed_seed  # evaluation: the same masks for a document every time

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__([{k: v for k, v in r.items() if k != "word_start"} for r in rows])
        ids = batch["input_ids"]
        n, length = ids.shape
        labels = torch.full_like(ids, -100)
        inputs = ids.clone()
        for i, r in enumerate(rows):
            gen = None
            if self.fixed_seed is not None:
                gen = torch.Generator().manual_seed(int(self.fixed_seed) * 1_000_003 + int(r["_row"]))
            seq = ids[i, : len(r["input_ids"])]
            candidate = ~torch.isin(seq, self.special)
            if self.whole_words and "word_start" in r:
                starts = torch.as_tensor(r["word_start"], dtype=torch.bool) & candidate
                word = torch.cumsum(starts.long(), 0) - 1  # word index of every token
                n_words = int(starts.sum())
                chosen_words = (
                    torch.rand(n_words, generator=gen) < self.p if n_words else torch.zeros(0, dtype=torch.bool)
                )
                chosen = candidate & (word >= 0) & chosen_words[word.clamp(min=0)] if n_words else candidate & False
            else:
                chosen = candidate & (torch.rand(len(seq), generator=gen) < self.p)
            if not chosen.any() and candidate.any():  # every row scores at least one token
                first = int(torch.nonzero(candidate)[torch.randint(int(candidate.sum()), (1,), generator=gen)])
                chosen[first] = True
            u = torch.rand(len(seq), generator=gen)
            rand_ids = torch.randint(self.vocab, (len(seq),), generator=gen)
            x = seq.clone()
            x = torch.where(chosen & (u < 0.8), torch.full_like(x, self.mask_id), x)
            x = torch.where(chosen & (u >= 0.8) & (u < 0.9), rand_ids, x)
            inputs[i, : len(seq)] = x
            labels[i, : len(seq)] = torch.where(chosen, seq, torch.full_like(seq, -100))
        batch["input_ids"], batch["labels"] = inputs, labels
        if "token_type_ids" in batch:  # sentence pairs: padding belongs to no segment
            batch["token_type_ids"] = batch["token_type_ids"] * batch["attention_mask"]
        return batch


class LMDataModule(HarnessDataModule):
    scalar_cols = ["_row"]

    def __init__(self, cfg: RunConfig, task: TaskSpec, data: TaskData, tokenizer: Any, kind: str):
        super().__init__(cfg, task, data, tokenizer)
        if kind not in ("causal", "masked"):
            raise ValueError(f"unknown language-model kind {kind!r}")
        self.kind = kind
        self.whole_words = kind == "masked" and cfg.data.whole_word_masking
        self.nsp = kind == "masked" and cfg.data.nsp
        self.sequence_cols = ["input_ids", "word_start"] if self.whole_words else ["input_ids"]
        if self.nsp:
            self.sequence_cols = ["input_ids", "sent_start"]
        if kind == "masked" and tokenizer.mask_token_id is None:
            from harness.errors import ModelError

            raise ModelError("masked-LM training needs a tokenizer with a mask token", "use a BERT-style tokenizer")

    def encode_settings(self) -> dict[str, Any]:
        return {"max_length": self.cfg.data.max_length, "kind": self.kind, "wwm": self.whole_words, "nsp": self.nsp}

    def encode(self, batch: dict[str, list]) -> dict[str, list]:
        texts = [str(t) for t in batch["text"]]
        tok = self.tokenizer
        if self.kind == "causal":
            start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            ids = tok(texts, add_special_tokens=False, truncation=False)["input_ids"]
            return {"input_ids": [([start] if start is not None else []) + x for x in ids]}
        if self.nsp:
            return _encode_sentences(tok, texts)
        enc = tok(texts, truncation=False)
        out: dict[str, list] = {"input_ids": enc["input_ids"]}
        if self.whole_words:
            starts = []
            for i in range(len(texts)):
                words = enc.word_ids(i)
                starts.append([int(w is not None and (j == 0 or words[j - 1] != w)) for j, w in enumerate(words)])
            out["word_start"] = starts
        return out

    def setup(self, stage: Optional[str] = None) -> None:
        super().setup(stage)
        self.views: dict[str, TokenizedDataset] = {}
        limit = self.cfg.data.max_length
        for name, ds in self.encoded.items():
            docs = [ds[i] for i in range(len(ds))]
            if self.nsp:
                self.views[name] = self._pairs(docs, np.asarray(ds.scalars["_row"]), train=name == "train")
            elif name == "train" and self.cfg.data.packing:
                sep = self.tokenizer.eos_token_id if self.kind == "causal" else self.tokenizer.sep_token_id
                blocks = pack([d["input_ids"] for d in docs], limit, sep)
                seqs = {"input_ids": _flat(blocks)}
                if self.whole_words:  # packing cuts words at block edges; a cut word's tail counts as a word
                    seqs["word_start"] = _flat(pack([d["word_start"] for d in docs], limit, 1))
                self.views[name] = TokenizedDataset(seqs, {"_row": np.arange(len(blocks))})
            else:
                seqs = {k: _flat([d[k][:limit] for d in docs]) for k in self.sequence_cols}
                self.views[name] = TokenizedDataset(seqs, {"_row": np.asarray(ds.scalars["_row"])})

    def _pairs(self, docs: list[dict[str, Any]], rows: np.ndarray, train: bool) -> TokenizedDataset:
        """Sentence pairs for next-sentence prediction (harness/data/nsp.py)."""
        tok = self.tokenizer
        builder = PairBuilder(
            [(d["input_ids"], d["sent_start"]) for d in docs],
            self.cfg.data.max_length,
            tok.cls_token_id,
            tok.sep_token_id,
        )
        pairs = builder.build(rows, self.cfg.seed, train)
        if not pairs.row:
            from harness.errors import DataError

            raise DataError("no sentence pairs could be made from the documents", "check the split's text column")
        return TokenizedDataset(
            {"input_ids": _flat(pairs.input_ids), "token_type_ids": _flat(pairs.token_type_ids)},
            {"_row": np.asarray(pairs.row, dtype=np.int64), "nsp_label": np.asarray(pairs.label, dtype=np.int64)},
        )

    def split_set(self, split: str) -> TokenizedDataset:
        return self.views[split]

    def collator(self, train: bool = True) -> Any:
        d = self.cfg.data
        if self.kind == "masked":
            return MaskingCollator(
                self.tokenizer,
                d.pad_to_multiple_of,
                d.mlm_probability,
                self.whole_words,
                fixed_seed=None if train else self.cfg.seed,
            )
        return _CausalCollator(self.tokenizer, d.pad_to_multiple_of)

    def eval_dataloader(self, split: str) -> DataLoader:
        ds = self.split_set(split)
        d = self.cfg.data
        return DataLoader(
            ds,
            batch_sampler=eval_sampler(ds, d),
            collate_fn=self.collator(train=False),
            **loader_options(d),
        )


class _CausalCollator(SequenceCollator):
    """Right-padded ids; labels are the ids with padding at -100 (the model shifts them itself)."""

    def __init__(self, tokenizer: Any, multiple: Optional[int]):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        super().__init__(pad, multiple, "right")

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__([{**r, "labels": r["input_ids"]} for r in rows])
        return batch


def _encode_sentences(tok: Any, texts: list[str]) -> dict[str, list]:
    """Each document's tokens (no special tokens), with 1 at every sentence's first token."""
    ids, starts = [], []
    for text in texts:
        sentences = tok(split_sentences(text), add_special_tokens=False, truncation=False)["input_ids"]
        ids.append([t for s in sentences for t in s])
        starts.append([int(j == 0) for s in sentences for j in range(len(s))])
    return {"input_ids": ids, "sent_start": starts}


def _flat(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.concatenate(seqs).astype(np.int64) if seqs else np.zeros(0, dtype=np.int64)
    return values, offsets

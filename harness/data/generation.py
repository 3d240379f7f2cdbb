"""DataModule for text generation (summarization, translation), for both model kinds:

- `seq2seq` (encoder-decoder: T5, BART, Marian, bert2bert): the encoder reads `source_prefix + source`, the decoder
  learns `target` (labels; the model shifts them right itself).
- `causal` (decoder-only): one sequence `prompt(source) + target + eos`, with the loss on the target tokens only
  (prompt positions are labelled -100). For generation only the prompt is fed, left-padded, so every row's last
  prompt token sits at the same position and batched generation continues all rows at once.

Sources are truncated to `generation.max_source_length` tokens *before* the prompt template is applied, so the
instruction around them is never cut off.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from harness.config import RunConfig, TaskSpec
from harness.data.base import HarnessDataModule, TokenizedDataset, loader_options
from harness.data.sampler import BucketBatchSampler
from harness.data.sources import TaskData


class SequenceCollator:
    """Pads every sequence field to its own longest length in the batch (rounded up to `multiple`): inputs with the
    pad id, labels with -100; `side="left"` pads at the start (batched generation with decoder-only models)."""

    def __init__(self, pad_id: int, multiple: Optional[int], side: str = "right"):
        self.pad_id = pad_id
        self.multiple = multiple
        self.side = side

    def _pad(self, seqs: list[np.ndarray], value: int) -> torch.Tensor:
        longest = max(len(s) for s in seqs)
        if self.multiple:
            longest = -(-longest // self.multiple) * self.multiple
        out = np.full((len(seqs), longest), value, dtype=np.int64)
        for i, s in enumerate(seqs):
            if self.side == "left":
                out[i, longest - len(s) :] = s
            else:
                out[i, : len(s)] = s
        return torch.from_numpy(out)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key in rows[0]:
            first = rows[0][key]
            if isinstance(first, np.ndarray) and first.ndim == 1:
                out[key] = self._pad([r[key] for r in rows], -100 if key == "labels" else self.pad_id)
            else:
                out[key] = torch.as_tensor(np.asarray([r[key] for r in rows]))
        out["attention_mask"] = self._pad([np.ones(len(r["input_ids"]), dtype=np.int64) for r in rows], 0)
        return out


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompts(tok: Any, g: Any, chat: bool, sources: list[str]) -> list[str]:
    """The text fed to a decoder-only model before its answer, for each (already truncated) source."""
    prompts = [g.prompt.replace("{source}", s) for s in sources]
    if not chat:
        return prompts
    out = []
    for p in prompts:
        messages = ([{"role": "system", "content": g.system}] if g.system else []) + [{"role": "user", "content": p}]
        out.append(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return out


def truncate_sources(tok: Any, limit: int, sources: list[str]) -> list[str]:
    ids = tok(sources, add_special_tokens=False)["input_ids"]
    return [s if len(i) <= limit else tok.decode(i[:limit], skip_special_tokens=True) for s, i in zip(sources, ids)]


def source_ids(tok: Any, g: Any, kind: str, chat: bool, sources: list[str]) -> list[list[int]]:
    """What the model reads for each source: the encoder's input (seq2seq: `source_prefix` + source, cut at
    `max_source_length`), or a decoder-only model's prompt (the source cut at `max_source_length`, in the prompt
    template and, for chat models, the chat template). Training, evaluation and serving encode alike."""
    if kind == "seq2seq":
        return tok([g.source_prefix + s for s in sources], truncation=True, max_length=g.max_source_length)["input_ids"]
    prompts = render_prompts(tok, g, chat, truncate_sources(tok, g.max_source_length, sources))
    return tok(prompts, add_special_tokens=not chat)["input_ids"]


class GenerationDataModule(HarnessDataModule):
    scalar_cols = ["_row"]

    def __init__(
        self,
        cfg: RunConfig,
        task: TaskSpec,
        data: TaskData,
        tokenizer: Any,
        kind: str,
        decoder_start_token_id: Optional[int] = None,
    ):
        super().__init__(cfg, task, data, tokenizer)
        if kind not in ("seq2seq", "causal"):
            raise ValueError(f"unknown generation model kind {kind!r}")
        self.kind = kind
        self.decoder_start_token_id = decoder_start_token_id
        g = cfg.generation
        self.chat = kind == "causal" and g.chat_template == "auto" and has_chat_template(tokenizer)
        self.sequence_cols = ["input_ids", "labels", "prompt_ids"] if kind == "causal" else ["input_ids", "labels"]

    def encode_settings(self) -> dict[str, Any]:
        g = self.cfg.generation
        return {
            "kind": self.kind,
            "prompt": g.prompt,
            "system": g.system,
            "chat": self.chat,
            "source_prefix": g.source_prefix,
            "max_source_length": g.max_source_length,
            "max_target_length": g.max_target_length,
            "decoder_start": self.decoder_start_token_id,
        }

    # ---- encoding ------------------------------------------------------------------------------------------------
    def encode(self, batch: dict[str, list]) -> dict[str, list]:
        g = self.cfg.generation
        tok = self.tokenizer
        sources = [str(s) for s in batch["source"]]
        targets = [str(t) for t in batch["target"]]
        inputs = source_ids(tok, g, self.kind, self.chat, sources)
        if self.kind == "seq2seq":
            labels = tok(text_target=targets, truncation=True, max_length=g.max_target_length)["input_ids"]
            start = self.decoder_start_token_id
            if start is not None:  # e.g. bert2bert: [CLS] starts the decoder; it is not something to predict
                labels = [lab[1:] if lab and lab[0] == start else lab for lab in labels]
            return {"input_ids": inputs, "labels": labels}
        prompt_ids = inputs
        target_ids = tok(targets, add_special_tokens=False, truncation=True, max_length=g.max_target_length)[
            "input_ids"
        ]
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        return {
            "input_ids": [p + t + eos for p, t in zip(prompt_ids, target_ids)],
            "labels": [[-100] * len(p) + t + eos for p, t in zip(prompt_ids, target_ids)],
            "prompt_ids": prompt_ids,
        }

    # ---- views and loaders ---------------------------------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        super().setup(stage)
        self.teacher_forced: dict[str, TokenizedDataset] = {}
        self.prompts: dict[str, TokenizedDataset] = {}
        for name, ds in self.encoded.items():
            self.teacher_forced[name] = TokenizedDataset(
                {"input_ids": ds.sequences["input_ids"], "labels": ds.sequences["labels"]}, ds.scalars
            )
            key = "prompt_ids" if self.kind == "causal" else "input_ids"
            self.prompts[name] = TokenizedDataset({"input_ids": ds.sequences[key]}, ds.scalars)

    def collator(self, side: str = "right") -> SequenceCollator:
        pad = self.tokenizer.pad_token_id
        return SequenceCollator(pad if pad is not None else 0, self.cfg.data.pad_to_multiple_of, side)

    def split_set(self, split: str) -> TokenizedDataset:
        return self.teacher_forced[split]

    def test_dataloader(self) -> DataLoader:
        """Prompts only (sources for encoder-decoders), sorted by length so a batch wastes little padding."""
        ds = self.prompts["test"]
        d = self.cfg.data
        size = self.cfg.generation.batch_size or d.eval_batch_size
        side = "left" if self.kind == "causal" else "right"
        return DataLoader(
            ds,
            batch_sampler=BucketBatchSampler(ds.lengths, size, shuffle=False, bucketing=d.bucketing),
            collate_fn=self.collator(side),
            **loader_options(d),
        )

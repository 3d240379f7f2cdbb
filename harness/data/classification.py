"""DataModule for sequence classification: text (or a text pair) -> token ids, plus the label."""

from __future__ import annotations

from typing import Any

from harness.config import RunConfig, TaskSpec
from harness.data.base import HarnessDataModule, special_token_frame, split_tokens
from harness.data.sources import TaskData


class ClassificationDataModule(HarnessDataModule):
    def __init__(self, cfg: RunConfig, task: TaskSpec, data: TaskData, tokenizer: Any):
        super().__init__(cfg, task, data, tokenizer)
        self.pair = "text_pair" in task.columns
        self.sequence_cols = ["input_ids", "token_type_ids"] if self.pair else ["input_ids"]
        self.scalar_cols = ["_row", "label"]
        self.prefix, self.suffix = special_token_frame(tokenizer)

    def encode_settings(self) -> dict[str, Any]:
        d = self.cfg.data
        return {"max_length": d.max_length, "truncation": d.truncation, "head_tokens": d.head_tokens, "pair": self.pair}

    def encode(self, batch: dict[str, list]) -> dict[str, list]:
        d = self.cfg.data
        if self.pair:  # pairs use the tokenizer's own longest-first truncation
            enc = self.tokenizer(batch["text"], batch["text_pair"], truncation=True, max_length=d.max_length)
            types = enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]]
            return {"input_ids": enc["input_ids"], "token_type_ids": types}
        if d.truncation == "head":
            return {"input_ids": self.tokenizer(batch["text"], truncation=True, max_length=d.max_length)["input_ids"]}
        raw = self.tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        budget = d.max_length - len(self.prefix) - len(self.suffix)
        return {
            "input_ids": [self.prefix + split_tokens(x, budget, d.truncation, d.head_tokens) + self.suffix for x in raw]
        }

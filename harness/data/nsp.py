"""Next-sentence prediction pairs for BERT-style pretraining (Devlin et al. 2019, section 3.1, task #2).

Documents are cut into sentences (end punctuation, and the `<br />` breaks of web text) and tokenized sentence by
sentence. A pair is `[CLS] A [SEP] B [SEP]` (segment ids 0 for A and its separators, 1 for B): A is one or more
consecutive sentences, and B is either what follows A in the same document (label 0, IsNext) or, with probability
1/2, a run of sentences from another document (label 1, NotNext). Pairs longer than the budget lose tokens at A's
start and B's end, so the junction the task is about is kept.

Training documents are cut into chunks of up to the budget, each one pair (drawn once with the run's seed; masks stay
dynamic). Evaluation documents give one pair each from their first chunk, drawn from a generator seeded by the run
seed and the row, so the same pairs are scored before and after training and across runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

IS_NEXT, NOT_NEXT = 0, 1
_BOUNDARY = re.compile(r"(?<=[.!?])\s+|<br\s*/?>", re.IGNORECASE)


def split_sentences(text: str) -> list[str]:
    parts = [s.strip() for s in _BOUNDARY.split(text)]
    return [s for s in parts if s] or [text]


def sentence_spans(starts: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) token offsets of the sentences marked by `starts` (1 at each sentence's first token)."""
    first = np.flatnonzero(starts).tolist()
    if not first or first[0] != 0:
        first = [0, *first]
    ends = [*first[1:], len(starts)]
    return [(a, b) for a, b in zip(first, ends) if b > a]


@dataclass
class Pairs:
    input_ids: list[np.ndarray] = field(default_factory=list)
    token_type_ids: list[np.ndarray] = field(default_factory=list)
    label: list[int] = field(default_factory=list)
    row: list[int] = field(default_factory=list)


class PairBuilder:
    def __init__(self, docs: list[tuple[np.ndarray, np.ndarray]], max_length: int, cls_id: int, sep_id: int):
        self.ids = [d[0] for d in docs]
        self.spans = [sentence_spans(d[1]) for d in docs]
        self.budget = max_length - 3  # [CLS] A [SEP] B [SEP]
        self.cls, self.sep = cls_id, sep_id
        if self.budget < 2:
            from harness.errors import ConfigError

            raise ConfigError(
                f"data.max_length={max_length} leaves no room for a sentence pair", "use data.max_length >= 16"
            )

    def _chunks(self, i: int) -> Iterator[list[np.ndarray]]:
        chunk: list[np.ndarray] = []
        size = 0
        for a, b in self.spans[i]:
            chunk.append(self.ids[i][a:b])
            size += b - a
            if size >= self.budget:
                yield chunk
                chunk, size = [], 0
        if chunk:
            yield chunk

    def _pair(self, i: int, chunk: list[np.ndarray], rng: np.random.Generator) -> Optional[tuple[np.ndarray, ...]]:
        if len(chunk) == 1:  # one sentence: its halves stand for two
            s = chunk[0]
            if len(s) < 2:
                return None
            chunk = [s[: len(s) // 2], s[len(s) // 2 :]]
        cut = int(rng.integers(1, len(chunk)))
        a = np.concatenate(chunk[:cut])
        if len(self.ids) > 1 and rng.random() < 0.5:
            j = int(rng.integers(len(self.ids) - 1))
            j += j >= i
            spans = self.spans[j] or [(0, len(self.ids[j]))]
            start = spans[int(rng.integers(len(spans)))][0]
            b, label = self.ids[j][start : start + self.budget], NOT_NEXT
        else:
            b, label = np.concatenate(chunk[cut:]), IS_NEXT
        while len(a) + len(b) > self.budget:  # trim the longer side, away from the junction
            if len(a) > len(b):
                a = a[1:]
            else:
                b = b[:-1]
        if len(a) == 0 or len(b) == 0:
            return None
        ids = np.concatenate([[self.cls], a, [self.sep], b, [self.sep]]).astype(np.int64)
        types = np.concatenate([np.zeros(len(a) + 2), np.ones(len(b) + 1)]).astype(np.int64)
        return ids, types, label

    def build(self, rows: np.ndarray, seed: int, train: bool) -> Pairs:
        out = Pairs()
        shared = np.random.default_rng(seed)
        for i, row in enumerate(rows):
            rng = shared if train else np.random.default_rng([seed, int(row)])
            for chunk in self._chunks(i):
                made = self._pair(i, chunk, rng)
                if made is not None:
                    out.input_ids.append(made[0])
                    out.token_type_ids.append(made[1])
                    out.label.append(made[2])
                    out.row.append(int(row))
                if not train:
                    break
        return out

"""Extractive QA data: questions + contexts -> overlapping context windows ("features"), and back to answer text.

Each question becomes one or more windows of `max_length` tokens ([CLS] question [SEP] context-part [SEP]); windows
of a long context share `doc_stride` tokens. A window keeps, per token, the character span it covers in the context
(-1 outside the context), so the model can turn a token span into answer text on the device, and `postprocess`
only has to pick, per question, the best span over its windows.

Training labels: the token span of the (first) gold answer when the window holds all of it, else the [CLS]
position ("not in this window"), as in BERT's SQuAD recipe (Devlin et al. 2019). A gold answer whose `answer_start`
does not point at its text is looked up in the context (nearest occurrence); if the text is not in the context at
all, that question is left out of training and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd

from harness.config import RunConfig, TaskSpec
from harness.data.base import HarnessDataModule, PadCollator, TokenizedDataset
from harness.data.sources import SplitData, TaskData
from harness.data.squad import locate_answer, offset_mismatches
from harness.errors import DataError

MAX_QUESTION_TOKENS = 64  # longer questions are cut (BERT's max_query_length), so a window always holds context


class QADataModule(HarnessDataModule):
    def __init__(self, cfg: RunConfig, task: TaskSpec, data: TaskData, tokenizer: Any):
        super().__init__(cfg, task, data, tokenizer)
        if not getattr(tokenizer, "is_fast", False):
            raise DataError(
                f"tokenizer of '{cfg.model.name}' is not a fast tokenizer",
                "extractive QA needs character offsets; use a model with a tokenizers-backed (fast) tokenizer",
            )
        probe = tokenizer("a", "b")
        self.has_types = "token_type_ids" in probe
        self.sequence_cols = ["input_ids", "offset_start", "offset_end"] + (
            ["token_type_ids"] if self.has_types else []
        )
        self.scalar_cols = ["_row", "start_positions", "end_positions"]
        self._drop_unlocatable = False
        d = cfg.data
        if d.doc_stride >= d.max_length - MAX_QUESTION_TOKENS - 3:
            raise DataError(
                f"data.doc_stride={d.doc_stride} leaves no room to move the window at data.max_length={d.max_length}",
                f"set data.doc_stride below {max(d.max_length - MAX_QUESTION_TOKENS - 3, 1)} (e.g. a quarter of "
                "max_length)",
            )

    def encode_settings(self) -> dict[str, Any]:
        d = self.cfg.data
        return {
            "max_length": d.max_length,
            "doc_stride": d.doc_stride,
            "drop": self._drop_unlocatable,
            "max_question": MAX_QUESTION_TOKENS,
        }

    def encode_split(self, split: SplitData) -> TokenizedDataset:
        self._drop_unlocatable = split.name == "train"
        ds = super().encode_split(split)
        ds.scalars["_feature"] = np.arange(len(ds), dtype=np.int64)
        return ds

    def collator(self) -> PadCollator:
        pad = self.tokenizer.pad_token_id
        return PadCollator(
            pad if pad is not None else 0, self.cfg.data.pad_to_multiple_of, {"offset_start": -1, "offset_end": -1}
        )

    def encode(self, batch: dict[str, list]) -> dict[str, list]:
        d = self.cfg.data
        out: dict[str, list] = {k: [] for k in self.sequence_cols + self.scalar_cols}
        starts: dict[int, tuple[int, int]] = {}
        for w in windows(self.tokenizer, batch["question"], batch["context"], d.max_length, d.doc_stride):
            ex, ids, o_start, o_end = w.example, w.input_ids, w.offset_start, w.offset_end
            if ex not in starts:
                starts[ex] = self._answer_chars(batch["context"][ex], batch["answers"][ex])
            a_start, a_end = starts[ex]
            if a_start == -2:  # gold text not in the context
                if self._drop_unlocatable:
                    continue
                sp = ep = 0
            else:
                sp, ep = _token_span(o_start, o_end, a_start, a_end)
            out["input_ids"].append(ids)
            out["offset_start"].append(o_start)
            out["offset_end"].append(o_end)
            if self.has_types:
                out["token_type_ids"].append(w.token_type_ids)
            out["_row"].append(batch["_row"][ex])
            out["start_positions"].append(sp)
            out["end_positions"].append(ep)
        return out

    @staticmethod
    def _answer_chars(context: str, answers: dict) -> tuple[int, int]:
        """(start, end) characters of the first gold answer; (-1, -1) for none (unanswerable); (-2, -2) when the
        text cannot be found in the context."""
        texts, starts = answers["text"], answers["answer_start"]
        if not texts:
            return -1, -1
        start = locate_answer(context, texts[0], int(starts[0]))
        if start < 0:
            return -2, -2
        return start, start + len(texts[0])


@dataclass
class Window:
    example: int  # index of the question in the call
    input_ids: list[int]
    token_type_ids: Optional[list[int]]
    offset_start: list[int]  # character offsets in the context; -1 outside it
    offset_end: list[int]


def windows(tok: Any, questions: list[str], contexts: list[str], max_length: int, doc_stride: int) -> list[Window]:
    """Question + context windows of at most `max_length` tokens, `doc_stride` tokens shared by neighbours (as for
    training and evaluation; serving cuts requests the same way)."""
    enc = tok(
        [_cut_question(tok, q.lstrip()) for q in questions],
        contexts,
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    out = []
    types = enc.get("token_type_ids")
    for i, ids in enumerate(enc["input_ids"]):
        seq = enc.sequence_ids(i)
        offsets = enc["offset_mapping"][i]
        o_start = [o[0] if s == 1 else -1 for o, s in zip(offsets, seq)]
        o_end = [o[1] if s == 1 else -1 for o, s in zip(offsets, seq)]
        out.append(Window(enc["overflow_to_sample_mapping"][i], ids, types[i] if types else None, o_start, o_end))
    return out


def _cut_question(tok: Any, q: str) -> str:
    enc = tok(q, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= MAX_QUESTION_TOKENS:
        return q
    return q[: enc["offset_mapping"][MAX_QUESTION_TOKENS - 1][1]]


def _token_span(o_start: list[int], o_end: list[int], a_start: int, a_end: int) -> tuple[int, int]:
    """Token positions of characters [a_start, a_end) in a window; (0, 0) when the window does not hold it all."""
    if a_start < 0:
        return 0, 0
    ctx = [i for i, s in enumerate(o_start) if s >= 0]
    first, last = ctx[0], ctx[-1]
    if not (o_start[first] <= a_start and o_end[last] >= a_end):
        return 0, 0
    s = first
    while s <= last and o_start[s] <= a_start:
        s += 1
    e = last
    while e >= first and o_end[e] >= a_end:
        e -= 1
    return s - 1, e + 1


# ---- from windows back to answers ------------------------------------------------------------------------------------


@dataclass
class QAPredictions:
    """One row per question of a split, in the split's order."""

    frame: pd.DataFrame  # row, id, prediction, best_span, span_score, null_score, score_diff


def postprocess(outputs: dict[str, Any], split: SplitData, version_2: bool, null_threshold: float) -> QAPredictions:
    """Best span per question over all its windows. SQuAD 2.0: the null score is the lowest [CLS] score over the
    windows; "no answer" wins when null score - best span score > `null_threshold`."""
    ds = split.dataset
    rows = np.asarray(ds["_row"], dtype=np.int64)
    contexts = ds["context"]
    ids = ds["id"]
    pos = {int(r): i for i, r in enumerate(rows)}
    n = len(rows)
    best_score = np.full(n, -np.inf)
    best_start = np.full(n, -1, dtype=np.int64)
    best_end = np.full(n, -1, dtype=np.int64)
    null_score = np.full(n, np.inf)
    seen = np.zeros(n, dtype=bool)
    example = np.asarray(outputs["example"], dtype=np.int64)
    score = np.asarray(outputs["span_score"], dtype=np.float64)  # [F, n_best], best first
    s_char = np.asarray(outputs["span_start"], dtype=np.int64)
    e_char = np.asarray(outputs["span_end"], dtype=np.int64)
    null = np.asarray(outputs["null_score"], dtype=np.float64)
    for f in range(len(example)):
        i = pos.get(int(example[f]))
        if i is None:
            continue
        seen[i] = True
        null_score[i] = min(null_score[i], null[f])
        if score[f, 0] > best_score[i] and s_char[f, 0] >= 0:
            best_score[i], best_start[i], best_end[i] = score[f, 0], s_char[f, 0], e_char[f, 0]
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} questions of split '{split.name}' got no model output")
    spans = [contexts[i][best_start[i] : best_end[i]] if best_start[i] >= 0 else "" for i in range(n)]
    diff = null_score - best_score
    if version_2:
        preds = ["" if d > null_threshold else s for d, s in zip(diff, spans)]
    else:
        preds = spans
    frame = pd.DataFrame(
        {
            "row": rows,
            "id": ids,
            "prediction": preds,
            "best_span": spans,
            "span_score": best_score,
            "null_score": null_score,
            "score_diff": diff,
        }
    )
    return QAPredictions(frame)


def first_sentence(context: str) -> str:
    """The context's first sentence: up to the first '.', '!' or '?' that ends a word and is followed by space
    (or the end), so abbreviations inside words like "U.S." followed by a letter do not cut it."""
    import re

    m = re.search(r"[.!?](?=\s|$)", context)
    return context[: m.end()] if m else context


def gold_texts(split: SplitData) -> list[list[str]]:
    return [list(a["text"]) for a in split.dataset["answers"]]


def unlocatable_answers(split: SplitData) -> tuple[int, int]:
    """(answers whose answer_start is off but whose text is in the context, answers whose text is not there)."""
    return offset_mismatches(split.dataset["context"], split.dataset["answers"])

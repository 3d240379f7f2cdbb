"""The official SQuAD JSON format: `{"version", "data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}`.

`read_squad_json` flattens it to one row per question with the same columns as the hub datasets (`rajpurkar/squad`,
`rajpurkar/squad_v2`): id, title, context, question, answers = {text: [...], answer_start: [...]}. Unanswerable
v2.0 questions (`is_impossible`) have empty answer lists; `plausible_answers` are not gold answers and are dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from harness.data.files import read_text
from harness.errors import DataError


def is_v2(task: Any) -> bool:
    """A task scored as SQuAD 2.0 (unanswerable questions count), from its `options.version`."""
    return str(task.options.get("version", "1.1")) == "2.0"


@dataclass
class SquadFile:
    rows: dict[str, list]  # column -> values, one entry per question, in file order
    version: Optional[str]  # the file's `version` field ("1.1", "v2.0", ...)
    unanswerable: int  # questions without gold answers

    @property
    def is_v2(self) -> bool:
        v = (self.version or "").lstrip("v")
        return v.startswith("2") or self.unanswerable > 0


def open_text(path: Path) -> str:
    return read_text(path)


def load_json(path: Path, what: str) -> Any:
    text = open_text(path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty", f"use a {what}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})",
            f"fix the file; it should be a {what}",
        ) from None


def is_squad_json(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("data"), list)
        and (not obj["data"] or (isinstance(obj["data"][0], dict) and "paragraphs" in obj["data"][0]))
    )


def parse_squad(obj: Any, where: str) -> SquadFile:
    """Flatten a parsed official SQuAD file; structural problems name the article/paragraph/question."""
    if not is_squad_json(obj):
        raise DataError(
            f'{where}: not in the SQuAD format (expected {{"data": [{{"title", "paragraphs": [...]}}]}})',
            "use an official SQuAD JSON file, or a JSON-lines file with id, context, question and answers",
        )
    rows: dict[str, list] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    unanswerable = 0
    seen: set[str] = set()
    for a, article in enumerate(obj["data"]):
        title = str(article.get("title", f"article {a}"))
        for p, para in enumerate(article.get("paragraphs") or []):
            context = para.get("context")
            if not isinstance(context, str):
                raise DataError(
                    f"{where}: article {a} ('{title}'), paragraph {p} has no context text",
                    "every paragraph needs a `context` string",
                )
            for q, qa in enumerate(para.get("qas") or []):
                here = f"{where}: article {a} ('{title}'), paragraph {p}, question {q}"
                qid = qa.get("id")
                if qid is None or not isinstance(qa.get("question"), str):
                    raise DataError(f"{here} lacks an `id` or `question`", "every question needs both")
                qid = str(qid)
                if qid in seen:
                    raise DataError(f"{here}: question id '{qid}' appears twice", "question ids must be unique")
                seen.add(qid)
                answers = qa.get("answers") or []
                if qa.get("is_impossible"):
                    answers = []
                texts, starts = [], []
                for ans in answers:
                    if not isinstance(ans, dict) or not isinstance(ans.get("text"), str):
                        raise DataError(f"{here}: an answer has no `text`", "answers are {text, answer_start}")
                    texts.append(ans["text"])
                    starts.append(int(ans.get("answer_start", -1)))
                if not texts:
                    unanswerable += 1
                rows["id"].append(qid)
                rows["title"].append(title)
                rows["context"].append(context)
                rows["question"].append(qa["question"])
                rows["answers"].append({"text": texts, "answer_start": starts})
    if not rows["id"]:
        raise DataError(f"{where}: the file has no questions", "use a SQuAD file with questions")
    version = obj.get("version")
    return SquadFile(rows, None if version is None else str(version), unanswerable)


def read_squad_json(path: Path) -> SquadFile:
    return parse_squad(load_json(path, "SQuAD JSON file"), str(path))


def check_version(version: Optional[str], unanswerable: int, want_v2: bool, task: str, where: str) -> None:
    """A v1.1 task cannot score unanswerable questions; a v2.0 task given a v1.1 file would silently report
    HasAns-only numbers as if they were SQuAD 2.0 results. Both are refused. `version` and `unanswerable` are what
    the reader found (`SquadFile`, or a split's `meta`)."""
    is_v2 = SquadFile({}, version, unanswerable).is_v2
    if want_v2 and not is_v2:
        raise DataError(
            f"{where} is a SQuAD v1.1 file (version {version!r}, no unanswerable questions), but task '{task}' "
            "is SQuAD v2.0",
            "use the v2.0 file (dev-v2.0.json), or run the v1.1 task `squad`",
        )
    if not want_v2 and is_v2:
        raise DataError(
            f"{where} is a SQuAD v2.0 file (version {version!r}, {unanswerable} unanswerable questions), but "
            f"task '{task}' is SQuAD v1.1",
            "use the v1.1 file (dev-v1.1.json), or run the v2.0 task `squad_v2`",
        )


def offset_mismatches(contexts: list[str], answers: list[dict]) -> tuple[int, int]:
    """Gold answers whose `answer_start` does not point at their text: (those whose text is elsewhere in the
    context, those whose text is not in the context at all)."""
    off = missing = 0
    for ctx, ans in zip(contexts, answers):
        for text, start in zip(ans["text"], ans["answer_start"]):
            if 0 <= start and ctx[start : start + len(text)] == text:
                continue
            if locate_answer(ctx, text, int(start)) >= 0:
                off += 1
            else:
                missing += 1
    return off, missing


def locate_answer(context: str, text: str, start: int) -> int:
    """The character offset of `text` in `context`: `start` when it is right, else the occurrence nearest to it;
    -1 when the text does not occur."""
    if 0 <= start and context[start : start + len(text)] == text:
        return start
    best, pos = -1, context.find(text)
    while pos != -1 and text:
        if best == -1 or abs(pos - start) < abs(best - start):
            best = pos
        pos = context.find(text, pos + 1)
    return best

"""SQuAD exact match and F1, as the official v1.1 and v2.0 evaluation scripts define them.

Definitions (Rajpurkar et al. 2016, 2018; the official `evaluate-v1.1.py` / `evaluate-v2.0.py`):

- An answer is normalised by: lowercasing; deleting every ASCII punctuation character (`string.punctuation`);
  replacing the whole words a, an, the by a space; collapsing whitespace runs to single spaces and stripping.
- Exact match: the normalised prediction equals the normalised gold answer.
- F1: over the bag of normalised tokens (split on whitespace), F1 = 2PR/(P+R) from the overlap count.
  v1.1: F1 is 0 when the overlap is empty, including when both sides normalise to nothing.
  v2.0: when either side has no tokens, F1 (and EM through the same normalisation) is 1 if both have none, else 0.
- Per question, the score is the maximum over its gold answers (duplicates included). v2.0 drops gold answers that
  normalise to an empty string, and a question with no gold answer left is unanswerable: its only gold is "".
- Totals are 100 x mean over questions. v1.1 counts a question without a prediction in the total (scored 0).
  v2.0: `exact`/`f1`/`total` over all questions, `HasAns_*` and `NoAns_*` over the answerable / unanswerable ones;
  with no-answer probabilities, a prediction whose probability exceeds `na_prob_thresh` (default 1.0) counts as
  "no answer"; `best_exact`/`best_f1` are the scores at the threshold that maximises them on this data.

Sums run in dataset order with plain float accumulation, as the scripts do, so the numbers are identical to theirs
to the last bit, not just close.

One difference, on purpose: the official v2.0 script stops with a KeyError when an answerable question has no
prediction. Here a missing prediction is scored 0 in every total (the v1.1 rule), and reported.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Optional

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace (the official scripts' rule).

    >>> normalize_answer("The  Cat, sat!")
    'cat sat'
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _tokens_v2(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def exact_v1(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def f1_v1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of two normalised answers.

    >>> f1_v1("the cat sat", "a cat sat down")  # 2 shared of 2 predicted and 3 gold tokens
    0.8
    """
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(gold).split()
    same = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if same == 0:
        return 0
    precision = 1.0 * same / len(pred)
    recall = 1.0 * same / len(ref)
    return (2 * precision * recall) / (precision + recall)


def exact_v2(gold: str, prediction: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(prediction))


def f1_v2(gold: str, prediction: str) -> float:
    ref = _tokens_v2(gold)
    pred = _tokens_v2(prediction)
    same = sum((collections.Counter(ref) & collections.Counter(pred)).values())
    if len(ref) == 0 or len(pred) == 0:
        return int(ref == pred)
    if same == 0:
        return 0
    precision = 1.0 * same / len(pred)
    recall = 1.0 * same / len(ref)
    return (2 * precision * recall) / (precision + recall)


@dataclass
class Gold:
    """One question's gold data, in file order."""

    qid: str
    answers: list[str]  # gold answer texts as written (duplicates kept)


@dataclass
class ScoreResult:
    """Official totals plus what is needed for intervals and tables."""

    totals: dict[str, float]  # keys exactly as the official script prints them
    exact: list[float]  # per question (file order), after the no-answer threshold, 0/1
    f1: list[float]
    has_answer: list[bool]
    missing: list[str] = field(default_factory=list)  # gold ids with no prediction
    unknown: list[str] = field(default_factory=list)  # predicted ids not in the gold data


def score_v1(golds: Iterable[Gold], predictions: Mapping[str, str]) -> ScoreResult:
    """SQuAD v1.1 EM and F1 (0-100), the best over each question's gold answers, as the official script computes.

    >>> golds = [Gold("q1", ["Denver Broncos", "Broncos"]), Gold("q2", ["1999"])]
    >>> score_v1(golds, {"q1": "the Broncos", "q2": "in 2000"}).totals
    {'exact_match': 50.0, 'f1': 50.0}
    """
    golds = list(golds)
    em_sum = f1_sum = 0.0
    total = 0
    exact: list[float] = []
    f1s: list[float] = []
    missing: list[str] = []
    for g in golds:
        total += 1
        if g.qid not in predictions:
            missing.append(g.qid)
            exact.append(0.0)
            f1s.append(0.0)
            continue
        pred = predictions[g.qid]
        em = max(exact_v1(pred, a) for a in g.answers)
        f = max(f1_v1(pred, a) for a in g.answers)
        em_sum += em
        f1_sum += f
        exact.append(float(em))
        f1s.append(float(f))
    gold_ids = {g.qid for g in golds}
    totals = {"exact_match": 100.0 * em_sum / total, "f1": 100.0 * f1_sum / total}
    unknown = [k for k in predictions if k not in gold_ids]
    return ScoreResult(totals, exact, f1s, [True] * len(golds), missing, unknown)


def gold_answers_v2(answers: list[str]) -> list[str]:
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def raw_scores_v2(golds: list[Gold], predictions: Mapping[str, str]) -> tuple[dict[str, float], dict[str, float]]:
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    for g in golds:
        if g.qid not in predictions:
            continue
        pred = predictions[g.qid]
        answers = gold_answers_v2(g.answers)
        exact[g.qid] = max(exact_v2(a, pred) for a in answers)
        f1[g.qid] = max(f1_v2(a, pred) for a in answers)
    return exact, f1


def apply_no_answer_threshold(
    scores: dict[str, float], na_probs: Mapping[str, float], has_answer: Mapping[str, bool], threshold: float
) -> dict[str, float]:
    out: dict[str, float] = {}
    for qid, s in scores.items():
        if na_probs[qid] > threshold:
            out[qid] = float(not has_answer[qid])
        else:
            out[qid] = s
    return out


def _eval_dict(exact: dict[str, float], f1: dict[str, float], qids: Optional[list[str]] = None) -> dict[str, float]:
    if not qids:
        total = len(exact)
        return {"exact": 100.0 * sum(exact.values()) / total, "f1": 100.0 * sum(f1.values()) / total, "total": total}
    total = len(qids)
    return {
        "exact": 100.0 * sum(exact[k] for k in qids) / total,
        "f1": 100.0 * sum(f1[k] for k in qids) / total,
        "total": total,
    }


def best_threshold(
    predictions: Mapping[str, str],
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    has_answer: Mapping[str, bool],
) -> tuple[float, float]:
    """The no-answer threshold that maximises the total on this data: start from "answer nothing" (every
    unanswerable question right), then admit predictions in order of increasing no-answer probability."""
    current = sum(1 for k in has_answer if not has_answer[k])
    best, best_thresh = current, 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            diff = scores[qid]
        else:
            diff = -1 if predictions[qid] else 0
        current += diff
        if current > best:
            best = current
            best_thresh = na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def score_v2(
    golds: Iterable[Gold],
    predictions: Mapping[str, str],
    na_probs: Optional[Mapping[str, float]] = None,
    na_prob_thresh: float = 1.0,
) -> ScoreResult:
    golds = list(golds)
    has_answer = {g.qid: bool(g.answers) for g in golds}
    has_ids = [k for k, v in has_answer.items() if v]
    no_ids = [k for k, v in has_answer.items() if not v]
    missing = [g.qid for g in golds if g.qid not in predictions]
    # a missing prediction scores 0 (see the module docstring); the official script would stop here
    preds = dict(predictions)
    probs = dict(na_probs) if na_probs is not None else {k: 0.0 for k in preds}
    exact_scored, f1_scored = raw_scores_v2(golds, preds)
    # every gold question, in file order (the order the official sums run in); missing ones score 0
    exact_raw = {g.qid: exact_scored.get(g.qid, 0.0) for g in golds}
    f1_raw = {g.qid: f1_scored.get(g.qid, 0.0) for g in golds}
    for qid in missing:
        probs.setdefault(qid, float("-inf"))  # never turned into "no answer"
    exact_t = apply_no_answer_threshold(exact_raw, probs, has_answer, na_prob_thresh)
    f1_t = apply_no_answer_threshold(f1_raw, probs, has_answer, na_prob_thresh)
    for qid in missing:
        exact_t[qid] = f1_t[qid] = 0.0
    totals = _eval_dict(exact_t, f1_t)
    if has_ids:
        totals.update({f"HasAns_{k}": v for k, v in _eval_dict(exact_t, f1_t, has_ids).items()})
    if no_ids:
        totals.update({f"NoAns_{k}": v for k, v in _eval_dict(exact_t, f1_t, no_ids).items()})
    if na_probs is not None:
        scored = {k: v for k, v in probs.items() if k in has_answer}
        preds_all = {**{k: "" for k in missing}, **preds}
        be, be_t = best_threshold(preds_all, exact_raw, scored, has_answer)
        bf, bf_t = best_threshold(preds_all, f1_raw, scored, has_answer)
        totals.update({"best_exact": be, "best_exact_thresh": be_t, "best_f1": bf, "best_f1_thresh": bf_t})
    gold_ids = set(has_answer)
    unknown = [k for k in predictions if k not in gold_ids]
    return ScoreResult(
        totals,
        [float(exact_t[g.qid]) for g in golds],
        [float(f1_t[g.qid]) for g in golds],
        [has_answer[g.qid] for g in golds],
        missing,
        unknown,
    )


def per_question_v1(prediction: str, answers: list[str]) -> tuple[float, float]:
    return float(max(exact_v1(prediction, a) for a in answers)), float(max(f1_v1(prediction, a) for a in answers))


def per_question_v2(prediction: str, answers: list[str]) -> tuple[float, float]:
    golds = gold_answers_v2(answers)
    return float(max(exact_v2(a, prediction) for a in golds)), float(max(f1_v2(a, prediction) for a in golds))


QUESTION_WORDS = ("what", "which", "who", "whom", "whose", "when", "where", "why", "how")


def question_type(question: str) -> str:
    """The first wh-word of a question ('how many' and 'how much' kept apart), else 'other'."""
    words = re.findall(r"[a-z]+", question.lower())
    for i, w in enumerate(words):
        if w in QUESTION_WORDS:
            if w == "how" and i + 1 < len(words) and words[i + 1] in ("many", "much"):
                return f"how {words[i + 1]}"
            return "who" if w in ("whom", "whose") else w
    return "other"

"""ROUGE through rouge-score-rs: identical to Google's rouge-score, pair by pair, on real CNN/DailyMail data and edge
cases."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from harness.metrics.rouge import ROUGE_TYPES, score_pairs

REFERENCE = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def _same(targets: list[str], predictions: list[str], **kw) -> None:
    ours = score_pairs(targets, predictions, **kw)
    for i, (t, p) in enumerate(zip(targets, predictions)):
        ref = REFERENCE.score(t, p)
        for k in ROUGE_TYPES:
            assert tuple(ours[k][i]) == (ref[k].precision, ref[k].recall, ref[k].fmeasure), (k, t, p)


def test_identical_on_real_cnn_dailymail_pairs(data_dir: Path) -> None:
    with gzip.open(data_dir / "summarization/cnn_dailymail/test.jsonl.gz", "rt") as f:
        rows = [json.loads(next(f)) for _ in range(400)]
    refs = [r["highlights"] for r in rows]
    rng = random.Random(0)
    preds = []
    for r in rows:  # lead-3, and a shuffled mix of article sentences (more LCS ties and repeats)
        sents = [s.strip() for s in r["article"].split(" . ") if s.strip()]
        preds.append("\n".join(sents[:3]) if rng.random() < 0.5 else "\n".join(rng.sample(sents, min(4, len(sents)))))
    _same(refs, preds)
    _same(refs[:100][::-1], preds[:100][::-1])  # batch order is kept


@pytest.mark.parametrize(
    "target, prediction",
    [
        ("", ""),
        ("", "something"),
        ("something", ""),
        ("!!!", "..."),
        ("The cat sat.\nIt was happy.", "the cats sat\n\nit was HAPPY!!"),  # stems, case, blank lines
        ("running runners ran", "run runner running"),
        ("café naïve résumé", "cafe naive resume"),  # non-ASCII letters are separators
        ("a b a b a b", "b a b a"),  # repeated tokens: LCS ties decide which tokens Lsum counts
        ("x y\ny x\nx x", "y x y\nx"),
        ("one line only", "one\nline\nonly"),
        ("numbers 1,000 and 3.5%", "1 000 and 3 5"),
    ],
)
def test_identical_on_edge_cases(target: str, prediction: str) -> None:
    _same([target], [prediction])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        score_pairs(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="rougeX"):
        score_pairs(["a"], ["a"], ["rougeX"])

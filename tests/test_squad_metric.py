"""SQuAD EM/F1 against results derived by hand from the official definitions (see harness/metrics/squad.py)."""

from __future__ import annotations

import pytest

from harness.metrics import squad
from harness.metrics.squad import Gold


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("  The  Eiffel   Tower. ", "eiffel tower"),  # case, article, punctuation, whitespace
        ("an apple a day", "apple day"),
        ("Theater in Athens", "theater in athens"),  # articles only as whole words
        ("U.S.A.", "usa"),  # ASCII punctuation is deleted, not replaced by a space
        ("rock-n-roll", "rocknroll"),
        ("“Paris”", "“paris”"),  # typographic quotes are not ASCII punctuation: they stay
        ("café—latte", "café—latte"),  # nor is the em dash
        ("ÉCOLE", "école"),
        ("the", ""),
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, normal: str) -> None:
    assert squad.normalize_answer(raw) == normal


def test_v1_f1_and_exact_by_hand() -> None:
    # pred tokens [cat, sat, on, mat], gold [cat, on, mat]: overlap 3, P = 3/4, R = 1, F1 = 2PR/(P+R) = 6/7
    assert squad.f1_v1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7, abs=0)
    # bag overlap counts repeats once per match: x:1, y:1 -> 2 of 3 each side -> F1 = 2/3
    assert squad.f1_v1("x x y", "x y y") == pytest.approx(2 / 3, abs=1e-15)
    assert squad.exact_v1("The Cat.", "cat")
    assert not squad.exact_v1("cat", "cats")
    # both normalise to nothing: v1.1 says exact (equal strings) but F1 0 (no overlap)
    assert squad.exact_v1("the", "a") and squad.f1_v1("the", "a") == 0
    assert squad.f1_v1("", "Paris") == 0 and not squad.exact_v1("", "Paris")
    assert squad.f1_v1("“Paris”", "Paris") == 0


def test_v2_empty_answers_by_hand() -> None:
    assert squad.f1_v2("", "") == 1 and squad.exact_v2("", "") == 1
    assert squad.f1_v2("", "Paris") == 0 and squad.exact_v2("", "Paris") == 0
    # gold answers that normalise to nothing are dropped; with none left the question counts as unanswerable
    assert squad.gold_answers_v2(["a", "the"]) == [""]
    assert squad.gold_answers_v2(["the", "Paris"]) == ["Paris"]
    assert squad.per_question_v2("the", ["a"]) == (1.0, 1.0)


def test_v1_totals_max_over_golds_and_missing() -> None:
    golds = [
        Gold("q1", ["Denver Broncos", "Broncos", "Denver Broncos"]),  # duplicates kept
        Gold("q2", ["Santa Clara, California", "Levi's Stadium"]),
        Gold("q3", ["gold"]),
    ]
    preds = {"q1": "the Broncos", "q2": "Levi's Stadium in Santa Clara", "zzz": "x"}
    r = squad.score_v1(golds, preds)
    # q1: EM 1 ("broncos" == "broncos"), F1 1
    # q2: vs "levis stadium": pred [levis, stadium, in, santa, clara] overlap 2 -> P 2/5 R 1 -> 4/7
    #     vs "santa clara california": overlap 2 -> P 2/5 R 2/3 -> 2*(4/15)/(16/15) = 1/2; max = 4/7
    # q3: missing -> 0, still counted in the total
    assert r.exact == [1.0, 0.0, 0.0]
    assert r.f1 == pytest.approx([1.0, 4 / 7, 0.0], abs=1e-15)
    assert r.totals["exact_match"] == pytest.approx(100 / 3)
    assert r.totals["f1"] == pytest.approx(100 * (1 + 4 / 7) / 3)
    assert list(r.totals) == ["exact_match", "f1"]
    assert r.missing == ["q3"] and r.unknown == ["zzz"]


def _v2_case() -> tuple[list[Gold], dict[str, str]]:
    golds = [Gold("q1", ["Paris"]), Gold("q2", ["big red dog"]), Gold("q3", []), Gold("q4", [])]
    preds = {"q1": "Paris", "q2": "red dog", "q3": "", "q4": "London"}
    return golds, preds


def test_v2_totals_by_hand() -> None:
    golds, preds = _v2_case()
    r = squad.score_v2(golds, preds)
    # q1 (1, 1); q2: "red dog" vs "big red dog": EM 0, P 1, R 2/3 -> F1 0.8; q3 no answer, "" -> (1, 1);
    # q4 no answer, "London" -> (0, 0)
    assert r.totals == pytest.approx(
        {
            "exact": 50.0,
            "f1": 70.0,
            "total": 4,
            "HasAns_exact": 50.0,
            "HasAns_f1": 90.0,
            "HasAns_total": 2,
            "NoAns_exact": 50.0,
            "NoAns_f1": 50.0,
            "NoAns_total": 2,
        }
    )
    assert list(r.totals)[:3] == ["exact", "f1", "total"]
    assert r.has_answer == [True, True, False, False]


def test_v2_no_answer_threshold_and_best_thresholds_by_hand() -> None:
    golds, preds = _v2_case()
    na = {"q1": 0.1, "q2": 0.2, "q3": 0.8, "q4": 0.3}
    # default threshold 1.0: nothing turns into "no answer"; best thresholds, starting from 2 (the no-answer
    # questions) and admitting in order q1 (+1 -> 3), q2 (+0 exact, +0.8 F1), q4 (-1: answered, should not be),
    # q3 (0: its prediction is already empty):
    r = squad.score_v2(golds, preds, na)
    assert r.totals["exact"] == 50.0 and r.totals["f1"] == 70.0
    assert r.totals["best_exact"] == 75.0 and r.totals["best_exact_thresh"] == 0.1
    assert r.totals["best_f1"] == pytest.approx(95.0) and r.totals["best_f1_thresh"] == 0.2
    # threshold 0.25: q3 (0.8) and q4 (0.3) become "no answer" -> both right; q1, q2 unchanged
    r = squad.score_v2(golds, preds, na, na_prob_thresh=0.25)
    assert r.totals["exact"] == 75.0 and r.totals["f1"] == pytest.approx(95.0)
    assert r.totals["NoAns_exact"] == 100.0


def test_v2_missing_prediction_scores_zero() -> None:
    golds, preds = _v2_case()
    del preds["q1"]
    r = squad.score_v2(golds, preds)
    assert r.missing == ["q1"]
    assert r.totals["total"] == 4 and r.totals["exact"] == 25.0 and r.totals["HasAns_exact"] == 0.0


def test_official_keys_match_the_v2_script() -> None:
    golds, preds = _v2_case()
    r = squad.score_v2(golds, preds, {k: 0.0 for k in preds})
    assert list(r.totals) == [
        "exact",
        "f1",
        "total",
        "HasAns_exact",
        "HasAns_f1",
        "HasAns_total",
        "NoAns_exact",
        "NoAns_f1",
        "NoAns_total",
        "best_exact",
        "best_exact_thresh",
        "best_f1",
        "best_f1_thresh",
    ]


@pytest.mark.parametrize(
    "question, kind",
    [
        ("What is the capital?", "what"),
        ("In which year did it end?", "which"),
        ("Whose idea was it?", "who"),
        ("How many people live there?", "how many"),
        ("How did it start?", "how"),
        ("Name the river.", "other"),
    ],
)
def test_question_type(question: str, kind: str) -> None:
    assert squad.question_type(question) == kind

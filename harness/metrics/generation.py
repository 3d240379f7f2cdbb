"""Text-generation metrics with 95% bootstrap intervals: ROUGE (harness/metrics/rouge.py, identical to rouge-score),
and BLEU / chrF computed by sacreBLEU itself (corpus level, default 13a tokenizer), each with its signature.

Intervals resample examples with replacement. For ROUGE the statistic is the mean per-example F-measure. For BLEU
and chrF, which are corpus-level, every resample recomputes the corpus score from the summed per-sentence
sufficient statistics (n-gram matches and totals, lengths), which is what sacreBLEU's own bootstrap resampling does
(`sacrebleu --paired-bs`): the point value is exactly `corpus_score`. Scales are the libraries' own: ROUGE 0-1,
sacreBLEU 0-100.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from harness.metrics.bootstrap import Estimate, bc_interval

# a sentence ends at '.', '!' or '?' (optionally followed by one closing quote or bracket, which stays with it)
_SENT_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")


_TOKENIZED_END = re.compile(r"(?<= [.!?]) ")  # PTB-tokenized text (CNN/DailyMail as See et al. release it)


def sentences(text: str) -> list[str]:
    """The sentences of a text: its lines if it has line breaks; else, for tokenized text (punctuation separated by
    spaces, " . "), a break after every space-separated '.', '!' or '?'; else a break after '.', '!' or '?' (and
    closing quotes) followed by space and a capital letter or digit. Offline; no models.

    >>> sentences('It rained. We stayed in! Did you? "Yes." Fine')
    ['It rained.', 'We stayed in!', 'Did you?', '"Yes."', 'Fine']
    >>> sentences("it rained . we stayed in .")  # tokenized text (CNN/DailyMail as See et al. release it)
    ['it rained .', 'we stayed in .']
    """
    text = text.strip()
    if "\n" in text:
        parts = text.split("\n")
    elif " . " in text or text.endswith(" ."):
        parts = _TOKENIZED_END.split(text)
    else:
        parts = _SENT_END.split(text)
    return [p.strip() for p in parts if p.strip()]


def split_sentences(text: str) -> str:
    """One sentence per line (see `sentences`), for ROUGE-Lsum; a text with line breaks is kept as it is."""
    if "\n" in text:
        return text
    return "\n".join(sentences(text))


def lead(text: str, k: int = 3) -> str:
    """The first `k` sentences, one per line: the Lead-k summarization baseline.

    >>> lead("One. Two. Three. Four.", 2)
    'One.\\nTwo.'
    """
    return "\n".join(sentences(text)[:k])


ROUGE_SPLITS = ("auto", "none", "newline")  # newline: another name for none (each line is a sentence)


@dataclass
class MetricResult:
    name: str
    estimates: dict[str, Estimate]  # e.g. rouge1 / rouge1_precision / ... or bleu
    signature: str
    per_example: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. rougeL F per example
    notes: list[str] = field(default_factory=list)


def _counts(hyps: Sequence[str], refs: Sequence[str]) -> list[str]:
    notes = []
    empty_h = sum(1 for h in hyps if not h.strip())
    empty_r = sum(1 for r in refs if not r.strip())
    if empty_h:
        notes.append(f"{empty_h} of {len(hyps)} predictions are empty (scored as they are)")
    if empty_r:
        notes.append(f"{empty_r} of {len(refs)} references are empty (scored as they are)")
    return notes


def _bootstrap_means(
    values: dict[str, np.ndarray], resamples: int, confidence: float, seed: int
) -> dict[str, Estimate]:
    n = len(next(iter(values.values())))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    out = {}
    for k, v in values.items():
        point = float(v.mean())
        draws = v[idx].mean(axis=1)
        out[k] = Estimate(point, *bc_interval(draws, point, confidence))
    return out


def rouge(
    hyps: Sequence[str],
    refs: Sequence[str],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    split: str = "auto",
) -> MetricResult:
    """ROUGE-1/2/L/Lsum, mean F (with P and R), bootstrap intervals. `split` says where ROUGE-Lsum's sentences come
    from: `none` — the texts as given, their lines (exactly `rouge-score`); `auto` — also split a text that has no
    line break into sentences (see `sentences`), so Lsum does not silently equal ROUGE-L. The signature says which."""
    from importlib.metadata import version

    from harness.metrics.rouge import ROUGE_TYPES, score_pairs

    _check_lengths(hyps, refs)
    if split not in ROUGE_SPLITS:
        raise ValueError(f"split must be one of {ROUGE_SPLITS}")
    if split == "auto":
        hyps = [split_sentences(h) for h in hyps]
        refs = [split_sentences(r) for r in refs]
    scores = score_pairs(refs, hyps, ROUGE_TYPES)
    values: dict[str, np.ndarray] = {}
    for k in ROUGE_TYPES:
        arr = np.asarray(scores[k], dtype=np.float64)  # [n, (p, r, f)]
        values[k] = arr[:, 2]
        values[f"{k}_precision"] = arr[:, 0]
        values[f"{k}_recall"] = arr[:, 1]
    est = _bootstrap_means(values, resamples, confidence, seed)
    sig = (
        f"rouge-score:{version('rouge-score')}-compatible|engine:rouge-score-rs:{version('rouge-score-rs')}"
        f"|stemmer:porter|lsum-split:{'newline' if split == 'none' else 'auto'}|agg:mean-f"
    )
    return MetricResult(
        "rouge", est, sig, {"rougeL": values["rougeL"], "rougeLsum": values["rougeLsum"]}, _counts(hyps, refs)
    )


def _sacre(
    kind: str, hyps: Sequence[str], refs: Sequence[str], resamples: int, confidence: float, seed: int
) -> MetricResult:
    from sacrebleu.metrics import BLEU, CHRF

    _check_lengths(hyps, refs)
    metric = BLEU() if kind == "bleu" else CHRF()
    hyps, refs = list(hyps), list(refs)
    corpus = metric.corpus_score(hyps, [refs])
    stats = np.asarray(metric._extract_corpus_statistics(hyps, [refs]), dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = len(hyps)
    draws = np.empty(resamples)
    for b in range(resamples):
        w = np.bincount(rng.integers(0, n, size=n), minlength=n)
        summed = (stats * w[:, None]).sum(axis=0)
        draws[b] = metric._compute_score_from_stats([int(x) for x in summed]).score
    lo, hi = bc_interval(draws, float(corpus.score), confidence)
    sentence = np.array([metric.sentence_score(h, [r]).score for h, r in zip(hyps, refs)]) if kind == "chrf" else None
    per = {"sentence_chrf": sentence} if sentence is not None else {}
    return MetricResult(
        kind, {kind: Estimate(float(corpus.score), lo, hi)}, str(metric.get_signature()), per, _counts(hyps, refs)
    )


def bleu(
    hyps: Sequence[str], refs: Sequence[str], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> MetricResult:
    """Corpus BLEU (sacreBLEU, 13a tokenizer), with a bootstrap interval over sentences.

    >>> r = bleu(["the cat is on the mat", "there is a cat"], ["the cat sat on the mat", "a cat is there"],
    ...          resamples=200)
    >>> round(r.estimates["bleu"].value, 2), r.signature.split("|")[3]
    (31.12, 'tok:13a')
    """
    return _sacre("bleu", hyps, refs, resamples, confidence, seed)


def chrf(
    hyps: Sequence[str], refs: Sequence[str], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> MetricResult:
    return _sacre("chrf", hyps, refs, resamples, confidence, seed)


def _check_lengths(hyps: Sequence[str], refs: Sequence[str]) -> None:
    from harness.errors import DataError

    if len(hyps) != len(refs):
        raise DataError(
            f"{len(hyps)} predictions but {len(refs)} references",
            "give exactly one reference per prediction, in the same order",
        )
    if not hyps:
        raise DataError("no predictions to score", "give at least one prediction and its reference")

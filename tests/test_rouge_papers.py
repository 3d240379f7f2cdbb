"""ROUGE as summarization papers report it: `eval.rouge_engine=pyrouge` (harness/metrics/rouge155.py, ROUGE-1.5.5's
text processing in Python, counted by rouge-score-rs) and Perl ROUGE-1.5.5 itself fed the way pyrouge feeds it
(`pyrouge-perl`, harness/metrics/pyrouge.py), the reference the port is held to.

`make test-papers` (CI runs it): See et al. (2017)'s Table 1 from their released outputs (tests/data/PROVENANCE.md),
and every per-example precision, recall and F of ROUGE-1, ROUGE-2 and ROUGE-L (over sentences, and over the text as
one sentence) of all 3 x 11,490 pairs equal to Perl's, kept in tests/data/see2017_rouge155_perl.npz (made by
scripts/rouge155_reference.py; a case here runs Perl again on a sample to check the file). The fast tests pin the
pipeline's steps and compare the port with Perl on real pairs."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np
import pytest
from conftest import require

DATA = Path(__file__).parent / "data" / "see2017_cnndm_test_outputs.json.xz"
PERL = Path(__file__).parent / "data" / "see2017_rouge155_perl.npz"
KINDS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# See, Liu and Manning 2017, "Get To The Point", Table 1: ROUGE-1, ROUGE-2, ROUGE-L F on the CNN/DailyMail test set
TABLE_1 = {
    "baseline": (31.33, 11.81, 28.83),
    "pointer-gen": (36.44, 15.66, 33.42),
    "pointer-gen-cov": (39.53, 17.28, 36.38),
}


@pytest.fixture(scope="module")
def outputs() -> dict[str, list[str]]:
    return json.loads(lzma.decompress(DATA.read_bytes()))


def _perl() -> None:
    from harness.metrics import pyrouge

    why = pyrouge.available()
    if why:
        require(why)


@pytest.mark.papers
@pytest.mark.parametrize("system", list(TABLE_1))
def test_see_et_al_table_1_from_their_outputs(system, outputs, tmp_path, capsys):
    """`harness score rouge --engine pyrouge --split newline` on all 11,490 outputs gives the paper's numbers, in
    seconds and without Perl."""
    from conftest import run_cli

    for name, texts in (("hyp", outputs[system]), ("ref", outputs["reference"])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    argv = ["score", "rouge", "--predictions", str(tmp_path / "hyp.jsonl"), "--references", str(tmp_path / "ref.jsonl")]
    assert run_cli([*argv, "--engine", "pyrouge", "--split", "newline", "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sig = got["signature"]
    assert sig.startswith("engine:ROUGE-1.5.5|pipeline:pyrouge") and "lsum-split:newline" in sig
    assert "impl:harness-python" in sig
    ours = (100 * got["rouge1"], 100 * got["rouge2"], 100 * got["rougeLsum"])  # papers' R-L: summary-level LCS
    assert max(abs(a - b) for a, b in zip(ours, TABLE_1[system])) <= 0.015, (system, ours, TABLE_1[system])


@pytest.mark.papers
@pytest.mark.parametrize("system", list(TABLE_1))
def test_every_per_example_score_equals_perl_rouge_155(system, outputs):
    """All 11,490 pairs: the port's P, R and F of ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-L over sentences equal what
    Perl ROUGE-1.5.5 printed (five decimals; the goal was within 1e-5, the port gives them to the digit)."""
    from harness.metrics.generation import rouge_scores

    ours = rouge_scores(outputs["reference"], outputs[system], "newline", "pyrouge")
    with np.load(PERL) as perl:
        for kind in KINDS:
            want = perl[f"{system}/{kind}"]
            got = np.rint(ours[kind] * 100000).astype(np.int32)
            assert want.shape == (11490, 3)
            assert np.array_equal(got, want), (kind, int((got != want).any(axis=1).sum()))


@pytest.mark.papers
def test_the_stored_perl_numbers_are_what_perl_says(outputs):
    """The reference file is Perl's own output: Perl ROUGE-1.5.5 run again on 150 pairs of each system (drawn with a
    fixed seed) gives exactly what the file holds for them."""
    _perl()
    from harness.metrics.generation import rouge_scores

    rows = np.sort(np.random.default_rng(2017).choice(11490, size=150, replace=False))
    with np.load(PERL) as perl:
        for system in TABLE_1:
            hyps, refs = [outputs[system][i] for i in rows], [outputs["reference"][i] for i in rows]
            fresh = rouge_scores(refs, hyps, "newline", "pyrouge-perl")
            for kind in KINDS:
                assert np.array_equal(np.rint(fresh[kind] * 100000).astype(np.int32), perl[f"{system}/{kind}"][rows])


def test_the_port_equals_perl_on_real_pairs(outputs):
    """The fast check of the same: 60 real pairs of the strongest system, every number equal to Perl's."""
    _perl()
    from harness.metrics.generation import rouge_scores

    hyps, refs = outputs["pointer-gen-cov"][:60], outputs["reference"][:60]
    perl = rouge_scores(refs, hyps, "newline", "pyrouge-perl")
    port = rouge_scores(refs, hyps, "newline", "pyrouge")
    for kind in KINDS:
        assert np.array_equal(perl[kind], port[kind]), kind
    assert 0.2 < port["rouge1"][:, 2].mean() < 0.5  # real scores, not zeros


def test_the_porter_stemmer_is_perls_on_every_word_of_the_outputs(outputs):
    """Every distinct word of See et al.'s references and outputs longer than 3 characters, and every WordNet
    exception key, through Perl's own `stem` and through the port."""
    _perl()
    import re
    import subprocess

    from harness.metrics import pyrouge, rouge155

    script = (pyrouge.home() / "ROUGE-1.5.5.pl").read_text(encoding="latin-1")
    start, end = script.index("local %step2list;"), script.index('$_v   = "^(${C})?${v}";')
    stem = script[start : script.index("\n}", end) + 2]  # Perl's `stem` and `initialise`, as ROUGE-1.5.5 has them
    words = set()
    for texts in outputs.values():
        for t in texts:
            words.update(w for w in re.sub(r"[^a-z0-9\-]", " ", t.lower().replace("-", " - ")).split() if len(w) > 3)
    words.update(k for k in rouge155.exceptions() if k.isalnum())
    words = sorted(words)
    program = stem + '\ninitialise();\nwhile (my $w = <STDIN>) { chomp $w; print stem($w), "\\n"; }\n'
    done = subprocess.run(["perl", "-e", program], input="\n".join(words) + "\n", capture_output=True, text=True)
    theirs = done.stdout.split("\n")[: len(words)]
    assert len(words) > 40000 and len(theirs) == len(words), done.stderr[-500:]
    wrong = [(w, t, rouge155.porter(w)) for w, t in zip(words, theirs) if rouge155.porter(w) != t]
    assert wrong == []


def test_the_options_harness_leaves_out_change_no_rouge_1_2_or_l(outputs, monkeypatch):
    """pyrouge runs ROUGE-1.5.5 with skip-bigrams, ROUGE-3/4 and ROUGE-W too; harness leaves them out (they cost most
    of the time): on 120 real examples every per-example ROUGE-1, ROUGE-2 and ROUGE-L equals pyrouge's full run."""
    _perl()
    from harness.metrics import pyrouge

    hyps, refs = outputs["pointer-gen-cov"][:120], outputs["reference"][:120]
    ours = pyrouge.score_pairs(refs, hyps)
    monkeypatch.setattr(pyrouge, "OPTIONS", [*pyrouge.PYROUGE_OPTIONS.split(), "-d"])
    full = pyrouge.score_pairs(refs, hyps)
    for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert np.array_equal(ours[k], full[k]), k
    assert 0.2 < ours["rouge1"][:, 2].mean() < 0.5  # real scores, not zeros


def test_what_differs_from_rouge_score_and_what_the_pipeline_keeps(monkeypatch):
    """Perl's stemmer knows WordNet's irregular forms (children -> child), rouge-score's Porter stemmer does not;
    and a sentence with '<' is scored whole because the texts are made HTML-safe first, as See et al. did (pyrouge's
    page format would cut the sentence at it)."""
    _perl()
    from harness.metrics import pyrouge
    from harness.metrics.generation import rouge_scores

    refs = ["the child ran home", "we said x < y and then many more words"]
    hyps = ["the children ran home", "we said x < z but nothing else matches"]
    perl = rouge_scores(refs, hyps, "newline", "pyrouge-perl")
    port = rouge_scores(refs, hyps, "newline", "pyrouge")
    assert all(np.array_equal(perl[k], port[k]) for k in KINDS)
    python = rouge_scores(refs, hyps, "newline", "rouge-score")
    assert perl["rouge1"][0, 2] == 1.0 and python["rouge1"][0, 2] == pytest.approx(0.75)  # "children": 3 of 4
    # the whole sentence is scored, with '&lt;' read as the word "lt" on both sides (as in See et al.'s files)
    assert python["rouge1"][1, 2] < perl["rouge1"][1, 2] < 0.5
    monkeypatch.setattr(pyrouge, "html_safe", lambda text: text)
    cut = pyrouge.score_pairs(refs[1:], hyps[1:])
    assert cut["rouge1"][0, 2] == 1.0  # without it both sides end at '<' ("we said x"): a false perfect match


def test_a_missing_perl_module_is_one_line(monkeypatch):
    import subprocess

    from harness.errors import ConfigError
    from harness.metrics import pyrouge

    real = subprocess.run

    def no_dom(cmd, **kw):
        if any(str(c) == "-MXML::DOM" for c in cmd):
            return subprocess.CompletedProcess(cmd, 2, "", "Can't locate XML/DOM.pm")
        return real(cmd, **kw)

    monkeypatch.setattr(pyrouge.subprocess, "run", no_dom)
    with pytest.raises(ConfigError) as e:
        pyrouge.check()
    assert e.value.message == (
        "eval.rouge_engine=pyrouge-perl runs Perl ROUGE-1.5.5, which needs the Perl module XML::DOM (missing) — "
        "install it (Debian: apt-get install libxml-dom-perl), or use eval.rouge_engine=pyrouge (the same numbers, "
        "without Perl)"
    )

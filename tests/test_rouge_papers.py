"""ROUGE as summarization papers report it (`eval.rouge_engine=pyrouge`, harness/metrics/pyrouge.py): Perl ROUGE-1.5.5
fed the way pyrouge feeds it. The full check reproduces See et al. (2017)'s Table 1 from their released outputs
(tests/data/PROVENANCE.md; `make test-papers`, which CI runs); the fast tests pin the pipeline's steps."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np
import pytest
from conftest import require

DATA = Path(__file__).parent / "data" / "see2017_cnndm_test_outputs.json.xz"
# See, Liu and Manning 2017, "Get To The Point", Table 1: ROUGE-1, ROUGE-2, ROUGE-L F on the CNN/DailyMail test set
TABLE_1 = {
    "baseline": (31.33, 11.81, 28.83),
    "pointer-gen": (36.44, 15.66, 33.42),
    "pointer-gen-cov": (39.53, 17.28, 36.38),
}


@pytest.fixture(scope="module")
def outputs() -> dict[str, list[str]]:
    from harness.metrics import pyrouge

    why = pyrouge.available()
    if why:
        require(why)
    return json.loads(lzma.decompress(DATA.read_bytes()))


@pytest.mark.papers
@pytest.mark.parametrize("system", list(TABLE_1))
def test_see_et_al_table_1_from_their_outputs(system, outputs, tmp_path, capsys):
    """`harness score rouge --engine pyrouge --split newline` on all 11,490 outputs gives the paper's numbers."""
    from conftest import run_cli

    for name, texts in (("hyp", outputs[system]), ("ref", outputs["reference"])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    argv = ["score", "rouge", "--predictions", str(tmp_path / "hyp.jsonl"), "--references", str(tmp_path / "ref.jsonl")]
    assert run_cli([*argv, "--engine", "pyrouge", "--split", "newline", "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        got["signature"].startswith("engine:ROUGE-1.5.5|pipeline:pyrouge") and "lsum-split:newline" in got["signature"]
    )
    ours = (100 * got["rouge1"], 100 * got["rouge2"], 100 * got["rougeLsum"])  # papers' R-L: summary-level LCS
    assert max(abs(a - b) for a, b in zip(ours, TABLE_1[system])) <= 0.05, (system, ours, TABLE_1[system])


def test_the_options_harness_leaves_out_change_no_rouge_1_2_or_l(outputs, monkeypatch):
    """pyrouge runs ROUGE-1.5.5 with skip-bigrams, ROUGE-3/4 and ROUGE-W too; harness leaves them out (they cost most
    of the time): on 120 real examples every per-example ROUGE-1, ROUGE-2 and ROUGE-L equals pyrouge's full run."""
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
    from harness.metrics import pyrouge
    from harness.metrics.generation import rouge_scores

    refs = ["the child ran home", "we said x < y and then many more words"]
    hyps = ["the children ran home", "we said x < z but nothing else matches"]
    perl = rouge_scores(refs, hyps, "newline", "pyrouge")
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
        "eval.rouge_engine=pyrouge runs Perl ROUGE-1.5.5, which needs the Perl module XML::DOM (missing) — install it "
        "(Debian: apt-get install libxml-dom-perl), or use eval.rouge_engine=rouge-score"
    )

"""BLEU/chrF (sacreBLEU itself) and ROUGE with bootstrap intervals, and `harness score rouge|bleu|chrf`."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from sacrebleu.metrics import BLEU, CHRF

from harness.metrics import generation
from harness.metrics.rouge import score_pairs


@pytest.fixture(scope="module")
def multi30k(data_dir: Path) -> tuple[list[str], list[str]]:
    with gzip.open(data_dir / "translation/multi30k_en_de/test_2016_flickr.jsonl.gz", "rt") as f:
        rows = [json.loads(line)["translation"] for line in f][:300]
    return [r["en"] for r in rows], [r["de"] for r in rows]  # copy-source "translation" vs the German reference


def test_bleu_and_chrf_are_sacrebleu_with_intervals(multi30k) -> None:
    src, ref = multi30k
    b = generation.bleu(src, ref, resamples=300)
    assert b.estimates["bleu"].value == BLEU().corpus_score(src, [ref]).score
    assert b.estimates["bleu"].low <= b.estimates["bleu"].value <= b.estimates["bleu"].high
    metric = BLEU()
    metric.corpus_score(src, [ref])
    assert b.signature == str(metric.get_signature())
    c = generation.chrf(src, ref, resamples=300)
    assert c.estimates["chrf"].value == CHRF().corpus_score(src, [ref]).score
    assert c.estimates["chrf"].low < c.estimates["chrf"].value < c.estimates["chrf"].high
    assert len(c.per_example["sentence_chrf"]) == 300
    # the reference scored against itself is perfect
    assert generation.bleu(ref, ref, resamples=100).estimates["bleu"].value == pytest.approx(100.0)


def test_rouge_means_and_empty_inputs() -> None:
    hyps = ["the cat sat on the mat", "", "dogs bark loudly. cats do not."]
    refs = ["a cat sat on a mat", "something", "Dogs bark. Cats meow."]
    r = generation.rouge(hyps, refs, resamples=200)
    per = score_pairs([generation.split_sentences(x) for x in refs], [generation.split_sentences(x) for x in hyps])
    assert r.estimates["rouge1"].value == pytest.approx(sum(x[2] for x in per["rouge1"]) / 3)
    assert r.notes == ["1 of 3 predictions are empty (scored as they are)"]


def test_split_sentences() -> None:
    assert (
        generation.split_sentences("It rained. Then it stopped! Why? 3 left.")
        == "It rained.\nThen it stopped!\nWhy?\n3 left."
    )
    assert generation.split_sentences("Keep\nlines as given. Here") == "Keep\nlines as given. Here"
    assert generation.split_sentences("e.g. this stays one") == "e.g. this stays one"


@pytest.fixture
def cli(capsys):
    from harness.cli import main

    def call(*args: str) -> SimpleNamespace:
        capsys.readouterr()
        rc = main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)

    return call


def test_score_cli_text_metrics(cli, tmp_path: Path, multi30k) -> None:
    src, ref = multi30k
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("\n".join(src[:50]) + "\n")
    refs = tmp_path / "ref.jsonl"
    refs.write_text("".join(json.dumps({"de": r}) + "\n" for r in ref[:50]))
    res = cli("score", "bleu", "--predictions", str(hyp), "--references", str(refs), "--json")
    assert res.returncode == 2 and "line 1 has no text field 'text'" in res.stderr and "--field" in res.stderr
    res = cli("score", "bleu", "--predictions", str(hyp), "--references", str(refs), "--field", "de", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["bleu"] == BLEU().corpus_score(src[:50], [ref[:50]]).score and out["signature"].startswith("nrefs:1")
    assert res.stdout.count("\n") == 1
    res = cli("score", "rouge", "--predictions", str(hyp), "--references", str(refs), "--field", "de", "--json")
    assert set(json.loads(res.stdout)) >= {"rouge1", "rouge2", "rougeL", "rougeLsum", "signature"}
    short = tmp_path / "short.txt"
    short.write_text("one\n")
    res = cli("score", "chrf", "--predictions", str(hyp), "--references", str(short))
    assert res.returncode == 2 and "has 1 references but" in res.stderr and "Traceback" not in res.stderr
    res = cli("score", "rouge", "--predictions", str(hyp))
    assert res.returncode == 2 and "needs --references" in res.stderr


def test_rouge_split_is_chosen_and_signed(cli, tmp_path: Path, data_dir: Path) -> None:
    """`--split none` takes each text's lines as its sentences, exactly as rouge-score does; `auto` (the default)
    first splits a text that has no line break; the signature says which was done."""
    import numpy as np
    from rouge_score import rouge_scorer

    with gzip.open(data_dir / "summarization/cnn_dailymail/test.jsonl.gz", "rt") as f:
        rows = [json.loads(next(f)) for _ in range(60)]
    refs = [r["highlights"] for r in rows]  # one sentence per line
    hyps = [" ".join(r["article"].split(" . ")[:3]) + " ." for r in rows]  # three sentences on one line
    for name, texts in (("hyp.jsonl", hyps), ("ref.jsonl", refs)):
        (tmp_path / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    args = [
        "score",
        "rouge",
        "--predictions",
        str(tmp_path / "hyp.jsonl"),
        "--references",
        str(tmp_path / "ref.jsonl"),
        "--json",
    ]
    none = json.loads(cli(*args, "--split", "none").stdout)
    auto = json.loads(cli(*args).stdout)
    reference = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    want = np.mean([reference.score(r, h)["rougeLsum"].fmeasure for r, h in zip(refs, hyps)])
    assert none["rougeLsum"] == pytest.approx(want, abs=1e-12) and "lsum-split:newline" in none["signature"]
    assert auto["rougeLsum"] != none["rougeLsum"] and "lsum-split:auto" in auto["signature"]
    # newline is none's other name: the same numbers, signed the same (it used to be signed lsum-split:auto)
    newline = json.loads(cli(*args, "--split", "newline").stdout)
    assert newline == none
    assert auto["rouge1"] == none["rouge1"]  # only Lsum depends on the sentences

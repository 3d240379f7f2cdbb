"""Extractive QA: the official SQuAD reader, article-disjoint fallback splits, windows and spans, post-processing,
`harness score`, and a run end to end on real SQuAD questions."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import resolve_run_config
from harness.data.qa import QADataModule, first_sentence, postprocess
from harness.data.sources import load_task_data
from harness.data.squad import locate_answer, read_squad_json
from harness.errors import DataError
from harness.families.registry import get_task
from harness.metrics import squad
from harness.models.qa import best_spans

DEV = "qa/squad_v1.1/dev-v1.1.json.gz"


@pytest.fixture(scope="module")
def dev(data_dir: Path):
    return read_squad_json(data_dir / DEV)


def test_reader_flattens_the_official_file(dev) -> None:
    rows = dev.rows
    assert len(rows["id"]) == 10570 and len(set(rows["title"])) == 48  # counts in PROVENANCE.md
    assert dev.version == "1.1" and not dev.is_v2 and dev.unanswerable == 0
    assert sum(len(a["text"]) for a in rows["answers"]) == 34726
    for ctx, a in zip(rows["context"][:500], rows["answers"][:500]):
        for t, s in zip(a["text"], a["answer_start"]):
            assert ctx[s : s + len(t)] == t


def test_gold_answers_score_100(dev) -> None:
    golds = [squad.Gold(q, a["text"]) for q, a in zip(dev.rows["id"], dev.rows["answers"])]
    first = {g.qid: g.answers[0] for g in golds}
    assert squad.score_v1(golds, first).totals == {"exact_match": 100.0, "f1": 100.0}
    # one dev question's last gold answer is "." — it normalises to nothing, and v1.1 then gives F1 0 even against
    # the identical gold answer (no token overlap) while EM is 1: the official numbers carry that quirk
    last = {g.qid: g.answers[-1] for g in golds}
    assert squad.score_v1(golds, last).totals == {"exact_match": 100.0, "f1": 100.0 * 10569 / 10570}


def _cfg(data_dir: Path, *extra: str):
    task = get_task("squad")
    return task, resolve_run_config(task, [f"data.data_dir={data_dir}", "profile=quick", *extra])


def test_offline_fallback_is_article_disjoint_deterministic_and_marked(data_dir: Path) -> None:
    task, cfg = _cfg(data_dir, "data.train_size=null", "data.validation_size=null", "data.test_size=null")
    data = load_task_data(task, cfg, ("train", "validation", "test"))
    titles = {n: set(s.dataset["title"]) for n, s in data.splits.items()}
    assert not titles["train"] & titles["test"] and not titles["validation"] & titles["test"]
    assert not titles["train"] & titles["validation"]
    rows = {n: set(s.dataset["_row"]) for n, s in data.splits.items()}
    assert sum(len(r) for r in rows.values()) == 10570  # nothing lost, nothing shared
    assert all(not s.official for s in data.splits.values())
    assert data.notes and "carved out of" not in data.notes[0] and "became 'train'" in data.notes[0]
    # the test split does not depend on whether training data was asked for
    only_test = load_task_data(task, cfg, ("test",))
    assert set(only_test["test"].dataset["_row"]) == rows["test"]
    assert only_test["test"].digest() == data["test"].digest()


def test_fallback_not_used_when_the_split_exists(data_dir: Path, tmp_path: Path) -> None:
    # a data folder holding the dev file under the training name too: no fallback, official splits
    folder = tmp_path / "qa" / "squad_v1.1"
    folder.mkdir(parents=True)
    for name in ("dev-v1.1.json.gz", "train-v1.1.json.gz"):
        (folder / name).symlink_to(data_dir / DEV)
    task, cfg = _cfg(tmp_path, "data.train_size=null", "data.test_size=null")
    data = load_task_data(task, cfg, ("train", "test"))
    assert data["test"].rows == 10570 and data["test"].official and not data.notes


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from harness.models.loading import packaged_path

    return AutoTokenizer.from_pretrained(str(packaged_path("sentence-transformers/all-MiniLM-L6-v2")))


def test_windows_hold_the_answer_span(data_dir: Path, tokenizer) -> None:
    task, cfg = _cfg(data_dir, "data.max_length=96", "data.doc_stride=24", "data.train_size=300", "data.test_size=50")
    data = load_task_data(task, cfg, ("train", "test"))
    dm = QADataModule(cfg, task, data, tokenizer)
    dm.setup()
    train = dm.encoded["train"]
    assert len(train) > data["train"].rows  # long contexts need several windows at length 96
    split = data["train"].dataset
    pos = {int(r): i for i, r in enumerate(split["_row"])}
    labelled = exact = 0
    for f in range(len(train)):
        row = train[f]
        assert len(row["input_ids"]) <= 96
        sp, ep = int(row["start_positions"]), int(row["end_positions"])
        if sp == 0:
            assert ep == 0
            continue
        labelled += 1
        i = pos[int(row["_row"])]
        ctx, answer = split[i]["context"], split[i]["answers"]["text"][0]
        text = ctx[row["offset_start"][sp] : row["offset_end"][ep]]
        # the smallest token span holding the answer: the answer itself, or a word around it ("four" in "fourth")
        assert answer in text and len(text) - len(answer) <= 12, (text, answer)
        exact += text == answer
    assert labelled >= data["train"].rows * 0.9 and exact >= labelled * 0.97
    # windows of one question overlap by doc_stride tokens of context
    rows = train.scalars["_row"]
    multi = [r for r in np.unique(rows) if (rows == r).sum() > 1]
    assert multi


def test_best_spans_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    s, e = torch.randn(3, 12, generator=g), torch.randn(3, 12, generator=g)
    context = torch.zeros(3, 12, dtype=torch.bool)
    context[:, 4:11] = True
    context[2, 4:6] = False  # a window whose context starts later
    top, start, end = best_spans(s, e, context, n_best=5, max_answer_length=3)
    for b in range(3):
        cands = sorted(
            (
                (float(s[b, i] + e[b, j]), i, j)
                for i in range(12)
                for j in range(i, min(i + 3, 12))
                if context[b, i] and context[b, j]
            ),
            reverse=True,
        )[:5]
        assert [(i, j) for _, i, j in cands] == list(zip(start[b].tolist(), end[b].tolist()))
        assert torch.allclose(top[b], torch.tensor([c for c, _, _ in cands]))


def test_postprocess_picks_the_best_window_and_null_rule(data_dir: Path) -> None:
    task, cfg = _cfg(data_dir, "data.test_size=2")
    split = load_task_data(task, cfg, ("test",))["test"]
    r0, r1 = (int(x) for x in split.dataset["_row"])
    ctx0 = split.dataset["context"][0]
    outputs = {  # question 0 has two windows; the second has the better span
        "example": np.array([r0, r0, r1]),
        "span_score": np.array([[1.0, 0.5], [3.0, -np.inf], [2.0, 1.0]]),
        "span_start": np.array([[0, 1], [4, -1], [0, 2]]),
        "span_end": np.array([[3, 2], [9, -1], [5, 4]]),
        "null_score": np.array([2.5, 4.0, 5.0]),
    }
    v1 = postprocess(outputs, split, version_2=False, null_threshold=0.0).frame
    assert v1["prediction"][0] == ctx0[4:9]
    v2 = postprocess(outputs, split, version_2=True, null_threshold=0.0).frame
    # question 0: null = min(2.5, 4.0) = 2.5 < 3.0 -> answer; question 1: 5.0 - 2.0 = 3 > 0 -> ""
    assert v2["prediction"][0] == ctx0[4:9] and v2["prediction"][1] == ""
    assert v2["score_diff"].tolist() == [-0.5, 3.0]


def test_first_sentence_and_locate_answer() -> None:
    assert first_sentence("Dr. Who. Next one.") == "Dr."  # the rule is simple on purpose: a floor, not a model
    assert first_sentence("No stop at all") == "No stop at all"
    assert first_sentence("It cost 3.5 million. Then more.") == "It cost 3.5 million."
    assert locate_answer("a cat and a cat", "cat", 11) == 12
    assert locate_answer("a cat", "dog", 0) == -1


# ---- harness score --------------------------------------------------------------------------------------------------


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """`harness ...` in this process: exit code, stdout and stderr."""
    from types import SimpleNamespace

    from harness.cli import main

    def call(*args: str, env: dict | None = None) -> SimpleNamespace:
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        capsys.readouterr()
        rc = main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)

    return call


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_score_cli_json_is_official_keys_only(run_cli, data_dir: Path, tmp_path: Path, dev) -> None:
    preds = {q: a["text"][0] for q, a in zip(dev.rows["id"], dev.rows["answers"])}
    wrong = list(preds)[:100]
    for q in wrong:
        preds[q] = "zzz"
    path = _write(tmp_path / "p.json", preds)
    res = run_cli("score", "squad", "--predictions", str(path), "--json", env={"HARNESS_DATA_DIR": str(data_dir)})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert list(out) == ["exact_match", "f1"]
    assert out["exact_match"] == pytest.approx(100 * (10570 - 100) / 10570)
    assert res.stdout.count("\n") == 1 and not res.stderr


def test_score_cli_missing_and_unknown_ids(run_cli, data_dir: Path, tmp_path: Path, dev) -> None:
    preds = {q: a["text"][0] for q, a in list(zip(dev.rows["id"], dev.rows["answers"]))[:10000]}
    preds["not-a-question"] = "x"
    path = _write(tmp_path / "p.json", preds)
    res = run_cli("score", "squad", "--predictions", str(path), "--gold", str(data_dir / DEV), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["exact_match"] == pytest.approx(100 * 10000 / 10570)
    assert "570 of 10570 gold questions have no prediction" in res.stderr
    assert "1 predicted id(s) are not in the gold data" in res.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"a": "x",', "not valid JSON"),
        ('["x"]', "not an object"),
        ('{"56be4db0acb8001400a502ec": 3}', "not an answer string"),
        ("", "the file is empty"),
    ],
)
def test_score_cli_bad_predictions(run_cli, data_dir: Path, tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(content)
    res = run_cli("score", "squad", "--predictions", str(path), "--gold", str(data_dir / DEV))
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1


def test_score_cli_v1_file_for_v2_task(run_cli, data_dir: Path, tmp_path: Path) -> None:
    path = _write(tmp_path / "p.json", {"x": "y"})
    res = run_cli("score", "squad_v2", "--predictions", str(path), "--gold", str(data_dir / DEV))
    assert res.returncode == 2 and "is a SQuAD v1.1 file" in res.stderr and "task `squad`" in res.stderr


def _v2_gold(tmp_path: Path, data_dir: Path) -> tuple[Path, list[str], list[str]]:
    """A v2.0-format test file made from real dev paragraphs: two of their questions are marked unanswerable by
    pairing them with another article's paragraph (for code paths only; never reported as SQuAD 2.0 data)."""
    with gzip.open(data_dir / DEV, "rt") as f:
        obj = json.load(f)
    a, b = obj["data"][0], obj["data"][1]
    para = a["paragraphs"][0]
    moved = b["paragraphs"][0]["qas"][:2]
    for qa in moved:
        qa["answers"], qa["is_impossible"] = [], True
    para["qas"] = para["qas"][:4] + moved
    out = {"version": "v2.0", "data": [{"title": a["title"], "paragraphs": [para]}]}
    path = _write(tmp_path / "dev-v2.json", out)
    return path, [q["id"] for q in para["qas"][:4]], [q["id"] for q in moved]


def test_score_cli_v2_with_na_probs(run_cli, data_dir: Path, tmp_path: Path) -> None:
    gold, has, no = _v2_gold(tmp_path, data_dir)
    with open(gold) as f:
        qas = json.load(f)["data"][0]["paragraphs"][0]["qas"]
    answers = {q["id"]: (q["answers"][0]["text"] if q["answers"] else "") for q in qas}
    preds = {**answers, no[0]: "some span"}  # one unanswerable question answered anyway
    na = {q: (0.9 if q in no else 0.1) for q in preds}
    p, n = _write(tmp_path / "p.json", preds), _write(tmp_path / "na.json", na)
    res = run_cli("score", "squad_v2", "--predictions", str(p), "--gold", str(gold), "--na-probs", str(n), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["total"] == 6 and out["HasAns_total"] == 4 and out["NoAns_total"] == 2
    assert out["HasAns_exact"] == 100.0 and out["NoAns_exact"] == 50.0 and out["exact"] == pytest.approx(500 / 6)
    assert out["best_exact"] == 100.0 and out["best_exact_thresh"] == 0.1
    # the v1.1 task refuses a v2.0 file
    res = run_cli("score", "squad", "--predictions", str(p), "--gold", str(gold))
    assert res.returncode == 2 and "is a SQuAD v2.0 file" in res.stderr
    # and v1.1 has no no-answer probabilities
    res = run_cli("score", "squad", "--predictions", str(p), "--gold", str(data_dir / DEV), "--na-probs", str(n))
    assert res.returncode == 2 and "--na-probs applies to SQuAD 2.0 only" in res.stderr


def test_answer_start_mismatch_is_counted_not_fatal(run_cli, data_dir: Path, tmp_path: Path) -> None:
    with gzip.open(data_dir / DEV, "rt") as f:
        obj = json.load(f)
    obj["data"] = obj["data"][:1]
    qas = obj["data"][0]["paragraphs"][0]["qas"]
    qas[0]["answers"][0]["answer_start"] += 3  # off: the text is still in the context
    qas[1]["answers"][0]["text"] = "words that are not in this paragraph"
    gold = _write(tmp_path / "gold.json", obj)
    preds = _write(tmp_path / "p.json", {qas[0]["id"]: qas[0]["answers"][0]["text"]})
    res = run_cli("score", "squad", "--predictions", str(preds), "--gold", str(gold), "--json")
    assert res.returncode == 0, res.stderr
    assert "2 gold answer(s) have an answer_start that does not point at their text (1 do not occur" in res.stderr


def test_squad_reader_errors(data_dir: Path, tmp_path: Path) -> None:
    bad = _write(tmp_path / "x.json", {"data": [{"title": "t", "paragraphs": [{"qas": []}]}]})
    with pytest.raises(DataError, match="paragraph 0 has no context"):
        read_squad_json(bad)
    dup = {
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": "c",
                        "qas": [
                            {"id": "1", "question": "q", "answers": []},
                            {"id": "1", "question": "q", "answers": []},
                        ],
                    }
                ],
            }
        ]
    }
    with pytest.raises(DataError, match="appears twice"):
        read_squad_json(_write(tmp_path / "d.json", dup))

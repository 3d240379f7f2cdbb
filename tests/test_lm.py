"""Language-model pretraining families: packing, masking, and clm/mlm runs with tiny models on real IMDB text
(perplexity before and after, with intervals, in MLflow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_cli
from mlflow.tracking import MlflowClient


def test_pack_concatenates_with_separators():
    from harness.data.lm import pack

    blocks = pack([np.array([1, 2, 3]), np.array([4, 5])], 3, 9)
    assert [b.tolist() for b in blocks] == [[1, 2, 3], [9, 4, 5], [9]]


def _tok(tiny_mlm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_mlm))


def test_masking_rates_special_tokens_and_fixed_eval_masks(tiny_mlm):
    from harness.data.lm import MaskingCollator

    tok = _tok(tiny_mlm)
    torch.manual_seed(0)
    ids = np.array([tok.cls_token_id] + list(range(2000, 2400)) + [tok.sep_token_id])
    rows = [{"input_ids": ids, "_row": i} for i in range(50)]
    batch = MaskingCollator(tok, None, 0.15, False)(rows)
    chosen = batch["labels"] != -100
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # [CLS] and [SEP] are never selected
    assert 0.13 < chosen.float().mean() / (400 / 402) < 0.17
    masked = (batch["input_ids"] == tok.mask_token_id) & chosen
    kept = (batch["input_ids"] == torch.as_tensor(ids)) & chosen
    assert 0.76 < masked.sum() / chosen.sum() < 0.84 and 0.07 < kept.sum() / chosen.sum() < 0.13
    assert (batch["labels"][chosen] == torch.as_tensor(ids).expand(50, -1)[chosen]).all()
    fixed = MaskingCollator(tok, None, 0.15, False, fixed_seed=7)
    a, b = fixed(rows[:3]), fixed(rows[:3])
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["input_ids"], b["input_ids"])
    assert not torch.equal(a["labels"][0], a["labels"][1])  # seeded per document, not one mask for all


def test_whole_word_masking_masks_every_piece_of_a_word(tiny_mlm):
    from harness.data.lm import MaskingCollator

    tok = _tok(tiny_mlm)
    enc = tok("unbelievably extraordinary filmmaking " * 20)
    words = enc.word_ids()
    start = [int(w is not None and (j == 0 or words[j - 1] != w)) for j, w in enumerate(words)]
    row = {"input_ids": np.array(enc["input_ids"]), "word_start": np.array(start), "_row": 0}
    torch.manual_seed(1)
    labels = MaskingCollator(tok, None, 0.3, True)([row])["labels"][0]
    chosen = (labels != -100).numpy()
    assert chosen.any()
    for w in set(x for x in words if x is not None):
        pos = [j for j, x in enumerate(words) if x == w]
        assert len(set(chosen[pos])) == 1, f"word {w} partly masked"


def _args(data_dir, model, uri, **extra):
    base = {
        "model.name": str(model),
        "data.data_dir": str(data_dir),
        "profile": "quick",
        "data.max_length": "64",
        "data.train_size": "40",
        "data.validation_size": "8",
        "data.test_size": "24",
        "data.batch_size": "8",
        "data.eval_batch_size": "8",
        "optim.lr": "3e-3",
        "trainer.precision": "32-true",
        "trainer.max_epochs": "2",
        "trainer.log_every_n_steps": "5",
        "trainer.checkpoint_every_n_steps": "20",
        "tracking.tracking_uri": uri,
        "tracking.system_metrics_interval": "1",
        "eval.bootstrap_resamples": "200",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.mark.parametrize("task, model_fixture", [("clm_imdb", "tiny_llama"), ("mlm_imdb", "tiny_mlm")])
def test_pretraining_lowers_held_out_perplexity(task, model_fixture, request, data_dir, tracking_uri):
    model = request.getfixturevalue(model_fixture)
    assert run_cli(["run", task, *_args(data_dir, model, tracking_uri, log_model="true")]) == 0
    client = MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name(task).experiment_id])[0]
    m = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.tags["family"] in ("causal_lm", "masked_lm")
    for p in ("test_before_perplexity", "test_perplexity"):
        assert m[f"{p}_ci_low"] <= m[p] <= m[f"{p}_ci_high"]
    assert m["test_perplexity"] < m["test_before_perplexity"]
    assert m["test_documents"] == 24
    assert client.get_metric_history(run.info.run_id, "val_perplexity")
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "predictions")}
    assert arts == {"predictions/test.json", "predictions/test_before_training.json"}
    # the trained model is a plain transformers folder: a classifier can start from it (domain-adaptive pretraining)
    weights = "model/artifacts/weights"
    assert {a.path for a in client.list_artifacts(run.info.run_id, weights)} >= {f"{weights}/config.json"}


def test_from_scratch_with_a_smaller_config(data_dir, tiny_mlm, tracking_uri):
    args = _args(
        data_dir,
        tiny_mlm,
        tracking_uri,
        **{"model.from_scratch": "true", "trainer.max_epochs": "1", "model.config_overrides.num_hidden_layers": "1"},
    )
    assert run_cli(["run", "mlm_imdb", *args]) == 0
    client = MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("mlm_imdb").experiment_id])[0]
    assert run.data.params["model.config_overrides.num_hidden_layers"] == "1"
    assert run.data.tags["model.from_scratch"] == "true"


def test_wrong_model_kind_for_pretraining(data_dir, tiny_model, tiny_llama, tracking_uri, capsys):
    assert run_cli(["run", "clm_imdb", *_args(data_dir, tiny_model, tracking_uri)]) == 2
    assert "not a decoder-only causal LM" in capsys.readouterr().err
    assert run_cli(["run", "mlm_imdb", *_args(data_dir, tiny_llama, tracking_uri)]) == 2
    assert "no masked-LM architecture" in capsys.readouterr().err


# ---- next-sentence prediction (data.nsp=true) -------------------------------------------------------------------


def test_sentences_split_at_end_punctuation_and_breaks():
    from harness.data.nsp import split_sentences

    text = "Great film. Really!<br /><br />Would I watch it again? Yes...and twice"
    assert split_sentences(text) == ["Great film.", "Really!", "Would I watch it again?", "Yes...and twice"]
    assert split_sentences("no boundary here") == ["no boundary here"]


def _docs(n=40, sentences=6, length=5):
    """Documents of numbered tokens: doc d's sentence s holds ids 1000*d + 10*s + k, so any pair says where its
    halves came from."""
    docs = []
    for d in range(n):
        ids = np.array([1000 * (d + 1) + 10 * s + k for s in range(sentences) for k in range(length)])
        starts = np.array([int(k == 0) for s in range(sentences) for k in range(length)])
        docs.append((ids, starts))
    return docs


def test_nsp_pairs_are_true_continuations_or_another_documents_sentences():
    from harness.data.nsp import IS_NEXT, NOT_NEXT, PairBuilder

    docs = _docs()
    builder = PairBuilder(docs, max_length=23, cls_id=1, sep_id=2)  # budget 20 tokens: four sentences
    pairs = builder.build(np.arange(40) + 500, seed=7, train=True)
    assert len(pairs.row) == 40 * 2  # 30 tokens per document: a full chunk of 20 and the rest
    labels = np.array(pairs.label)
    assert 0.3 < labels.mean() < 0.7  # about half are random
    for ids, types, label, row in zip(pairs.input_ids, pairs.token_type_ids, pairs.label, pairs.row):
        assert len(ids) <= 23 and ids[0] == 1 and ids[-1] == 2 and (ids == 2).sum() == 2
        cut = int(np.flatnonzero(ids == 2)[0])
        a, b = ids[1:cut], ids[cut + 1 : -1]
        assert types.tolist() == [0] * (cut + 1) + [1] * (len(b) + 1)
        doc = row - 500 + 1
        assert (a // 1000 == doc).all()
        if label == IS_NEXT:  # B starts right where A ends, in the same document
            assert (b // 1000 == doc).all() and b[0] == a[-1] + 1 + (a[-1] % 10 == 4) * 5
        else:
            assert label == NOT_NEXT and (b // 1000 != doc).all() and b[0] % 10 == 0  # from a sentence start
    # evaluation: one pair per document, the same whichever documents are around it
    first = PairBuilder(docs, 23, 1, 2).build(np.arange(40), seed=7, train=False)
    again = PairBuilder(docs, 23, 1, 2).build(np.arange(40), seed=7, train=False)
    assert first.row == list(range(40)) and first.label == again.label
    assert all((x == y).all() for x, y in zip(first.input_ids, again.input_ids))


def test_mlm_with_next_sentence_prediction(data_dir, tiny_mlm, tracking_uri):
    args = _args(data_dir, tiny_mlm, tracking_uri, log_model="true", **{"data.nsp": "true"})
    assert run_cli(["run", "mlm_imdb", *args]) == 0
    client = MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("mlm_imdb").experiment_id])[0]
    m = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.params["data.nsp"] == "true"
    for p in ("test_before_nsp_accuracy", "test_nsp_accuracy", "test_before_perplexity", "test_perplexity"):
        assert m[f"{p}_ci_low"] <= m[p] <= m[f"{p}_ci_high"], p
    assert 0 <= m["test_nsp_accuracy"] <= 1 and m["test_documents"] == 24
    assert client.get_metric_history(run.info.run_id, "val_nsp_accuracy")
    import json
    from pathlib import Path

    table = json.loads(Path(client.download_artifacts(run.info.run_id, "predictions/test.json")).read_text())
    col = table["columns"].index("nsp_correct")
    correct = [r[col] for r in table["data"]]
    assert len(correct) == 24 and np.mean(correct) == pytest.approx(m["test_nsp_accuracy"])
    # the logged model carries both pretraining heads
    config = json.loads(
        Path(client.download_artifacts(run.info.run_id, "model/artifacts/weights/config.json")).read_text()
    )
    assert config["architectures"] == ["BertForPreTraining"]


def test_nsp_refuses_what_it_cannot_do(data_dir, tiny_mlm, tracking_uri, capsys):
    args = _args(data_dir, tiny_mlm, tracking_uri, **{"data.nsp": "true", "data.whole_word_masking": "true"})
    assert run_cli(["run", "mlm_imdb", *args]) == 2
    err = capsys.readouterr().err
    assert "error: data.nsp=true with data.whole_word_masking=true is not supported" in err and "Traceback" not in err

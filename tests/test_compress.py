"""`harness compress`: a compressed variant of a trained run, evaluated on the source's test examples as a nested
run with size, latency, a paired comparison and the table of every variant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import in_dir, run_cli, tiny_args
from mlflow.tracking import MlflowClient


@pytest.fixture(scope="module")
def source(tmp_path_factory, data_dir, tiny_model):
    work = tmp_path_factory.mktemp("compress")
    uri = f"sqlite:///{work / 'mlruns.db'}"
    args = tiny_args(data_dir, tiny_model, uri, log_model="true", **{"optim.lr": "1e-2", "trainer.num_threads": "1"})
    with in_dir(work):
        assert run_cli(["run", "imdb", *args]) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("imdb")
    (run,) = client.search_runs([exp.experiment_id])
    return {"work": work, "uri": uri, "client": client, "run": run, "exp": exp, "data_dir": data_dir}


def _compress(source: dict, method: str, *extra: str):
    with in_dir(source["work"]):
        rc = run_cli(
            [
                "compress",
                source["run"].info.run_id,
                "--method",
                method,
                f"tracking.tracking_uri={source['uri']}",
                *extra,
            ]
        )
    assert rc == 0
    client = source["client"]
    runs = client.search_runs([source["exp"].experiment_id], order_by=["attributes.start_time DESC"])
    return runs[0]


def _losses(client: MlflowClient, run_id: str) -> dict[str, float]:
    table = json.loads(Path(client.download_artifacts(run_id, "predictions/test.json")).read_text())
    key = "row" if "row" in table["columns"] else "text"
    return {r[table["columns"].index(key)]: r[table["columns"].index("loss")] for r in table["data"]}


def _check_common(source: dict, run, method: str) -> dict:
    src = source["run"]
    assert run.info.status == "FINISHED"
    t, m = run.data.tags, run.data.metrics
    assert t["mlflow.parentRunId"] == src.info.run_id and t["harness.compress.source"] == src.info.run_id
    assert t["harness.compress.method"] == method and t["harness.compress.threads"] == "1"
    # the source's test examples, no other
    assert run.data.params["split.test.digest"] == src.data.params["split.test.digest"]
    assert m["test_examples"] == src.data.metrics["test_examples"] == 96
    for k in ("size_mb", "source_size_mb", "latency_b1_p50_ms", "latency_b1_p95_ms", "throughput_b32"):
        assert m[k] > 0, k
    assert m["latency_b1_p95_ms"] >= m["latency_b1_p50_ms"]
    assert m["size_ratio"] == pytest.approx(m["source_size_mb"] / m["size_mb"], rel=1e-6)
    assert 0 <= m["paired_p_accuracy"] <= 1 and "paired_delta_accuracy" in m
    table = json.loads(
        Path(source["client"].download_artifacts(run.info.run_id, "compression/variants.json")).read_text()
    )
    assert table["rows"][0]["run_id"] == src.info.run_id
    assert run.info.run_id in [r["run_id"] for r in table["rows"]]
    return m


def test_onnx_agrees_with_pytorch_on_every_test_example(source):
    run = _compress(source, "onnx", "log_model=true", "eval.prediction_text_chars=100000")
    m = _check_common(source, run, "onnx")
    assert m["logits_max_abs_diff_vs_torch"] <= 1e-4  # checked on the whole test split while it ran
    src, mine = _losses(source["client"], source["run"].info.run_id), _losses(source["client"], run.info.run_id)
    assert src.keys() == mine.keys() and max(abs(src[k] - mine[k]) for k in src) <= 1e-4
    assert m["test_accuracy"] == source["run"].data.metrics["test_accuracy"]
    assert "onnxruntime" in run.data.tags["harness.compress.engine"]
    # the variant is an MLflow model served by ONNX Runtime, predicting what its run predicted (fp32: int8's
    # dynamic activation scales depend on which texts share a batch)
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(source["uri"])
    files = {Path(a.path).name for a in source["client"].list_artifacts(run.info.run_id, "model/artifacts/weights")}
    assert "model.onnx" in files and not any(f.endswith(".safetensors") for f in files)
    table = json.loads(Path(source["client"].download_artifacts(run.info.run_id, "predictions/test.json")).read_text())
    table = pd.DataFrame(table["data"], columns=table["columns"])
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    out = model.predict(pd.DataFrame({"text": table["text"]}))
    assert model.unwrap_python_model().predictor.engine == "onnxruntime"
    assert list(out["label"]) == list(table["prediction"])
    assert (out["prob_positive"] - table["p_positive"]).abs().max() <= 1e-5


def test_onnx_int8_is_smaller_and_compared_with_its_source(source, capsys):
    run = _compress(source, "onnx-int8", "log_model=true", "eval.prediction_text_chars=100000")
    m = _check_common(source, run, "onnx-int8")
    # what the console says while it works, and whose numbers the table holds
    out = capsys.readouterr().out
    src_id = source["run"].info.run_id
    assert f"compressing the model of run {src_id} with onnx-int8" in out
    assert "timing onnx-int8 and the source model on the test inputs" in out
    assert f"onnx-int8 variant of run {src_id[:8]} · imdb · test · 96 examples" in out
    # the variant is a logged model of its own, with its test metrics and the method named
    client = source["client"]
    model = client.get_logged_model(client.get_run(run.info.run_id).outputs.model_outputs[0].model_id)
    assert model.tags["harness.compress.method"] == "onnx-int8" and "mlflow.parentRunId" not in model.tags
    assert {x.key for x in model.metrics} >= {"test_accuracy", "test_accuracy_ci_low", "test_accuracy_ci_high"}
    assert m["size_ratio"] > 2.5  # int8 weights (the tiny model is mostly its embedding table, quantized too)
    assert 0 < m["logits_max_abs_diff_vs_torch"] < 0.5  # close, not equal
    md = source["client"].download_artifacts(run.info.run_id, "compression/variants.md")
    text = Path(md).read_text()
    assert "| source (PyTorch fp32) |" in text and "| onnx-int8 |" in text
    assert Path(source["client"].download_artifacts(run.info.run_id, "compression/variants.png")).stat().st_size > 0
    # its activation scales are computed at run time: a text's answer must not depend on the texts beside it. The
    # served model gives the same probabilities for a text alone and inside requests of 10 and 100, and what the
    # run logged for it
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(source["uri"])
    table = json.loads(Path(source["client"].download_artifacts(run.info.run_id, "predictions/test.json")).read_text())
    table = pd.DataFrame(table["data"], columns=table["columns"])
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    texts = list(table["text"])
    alone = pd.concat([model.predict(pd.DataFrame({"text": [t]})) for t in texts[:12]], ignore_index=True)
    for size in (10, 100):
        for probe in range(3):
            batch = texts[-(size - 1) :] if size <= len(texts) else (texts * 2)[: size - 1]
            batch = batch[:probe] + [texts[probe]] + batch[probe:]
            got = model.predict(pd.DataFrame({"text": batch})).iloc[probe]
            assert got["prob_positive"] == alone["prob_positive"][probe], (size, probe)
    logged = table.set_index("text")["p_positive"]
    assert (alone["prob_positive"] - logged[texts[:12]].to_numpy()).abs().max() <= 1e-6


def test_prune_structured_removes_neurons_and_vocabulary_for_real(source):
    """Half the feed-forward neurons and every vocabulary row the training data does not use are gone from the saved
    model (not zeros in a dense file), the pruned model recovers with the teacher, and, logged, it evaluates and
    serves through the original tokenizer (its vocab_map)."""
    import mlflow
    import pandas as pd
    from safetensors import safe_open

    extra = ("log_model=true", "eval.prediction_text_chars=100000", "trainer.precision=32-true")  # served in fp32
    run = _compress(source, "prune-structured", "--sparsity", "0.5", *extra)
    m = _check_common(source, run, "prune-structured")
    t = run.data.tags
    assert t["harness.compress.feed_forward"] == "32 of 64 neurons per layer kept (norm importance)"
    kept = int(t["harness.compress.vocabulary"].split(" of ")[0])
    assert 1000 < kept < 30522 and t["harness.compress.vocabulary"].endswith("any other maps to [UNK])")
    assert m["size_ratio"] > 1.5  # the tiny model is mostly its embedding table
    assert "train_soft_loss" in run.data.metrics  # recovered against the teacher
    client = source["client"]
    weights = Path(client.download_artifacts(run.info.run_id, "model/artifacts/weights"))
    with safe_open(str(weights / "model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes["bert.embeddings.word_embeddings.weight"] == (kept, 32)
    assert shapes["bert.encoder.layer.0.intermediate.dense.weight"] == (32, 32)
    assert (weights / "vocab_map.npy").is_file()
    mlflow.set_tracking_uri(source["uri"])
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "predictions/test.json")).read_text())
    table = pd.DataFrame(table["data"], columns=table["columns"])
    out = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").predict(pd.DataFrame({"text": table["text"]}))
    assert list(out["label"]) == list(table["prediction"])
    assert (out["prob_positive"] - table["p_positive"]).abs().max() <= 1e-5


def test_a_test_split_held_on_the_device_compresses_as_on_the_host(source):
    """On a GPU data.device_resident=auto holds the test split there and the loader yields index batches; the variant
    builder reads the first batch's input names from it (forced here on the CPU)."""
    run = _compress(source, "onnx", "data.device_resident=true")
    m = _check_common(source, run, "onnx")
    assert run.data.tags["data.resident_splits"] == "test" and m["logits_max_abs_diff_vs_torch"] < 1e-3


@pytest.mark.slow
def test_torch_int8(source):
    run = _compress(source, "torch-int8")
    _check_common(source, run, "torch-int8")
    assert "deprecated" in run.data.tags["harness.compress.quantization"]  # the run says which API it used


@pytest.mark.slow
def test_prune_to_a_sparsity(source):
    run = _compress(source, "prune", "--sparsity", "0.75")
    _check_common(source, run, "prune")
    # the tiny backbone's nn.Linear weights: 2 layers x (4 x 32x32 attention + 2 x 32x64 feed-forward) + pooler 32x32
    total = 2 * (4 * 32 * 32 + 2 * 32 * 64) + 32 * 32
    assert int(run.data.tags["harness.compress.nonzero_weights"]) == total - round(0.75 * total)


def test_compress_refuses_what_it_cannot_do(source, capsys):
    with in_dir(source["work"]):
        rc = run_cli(["compress", "0123456789abcdef", "--method", "onnx", f"tracking.tracking_uri={source['uri']}"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: MLflow run '0123456789abcdef' not found in" in err and "Traceback" not in err
    with in_dir(source["work"]):
        rc = run_cli(
            ["compress", source["run"].info.run_id, "--method", "prune", "--sparsity", "1.5",
             f"tracking.tracking_uri={source['uri']}"]
        )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "error: --sparsity 1.5 is not between 0 and 1" in err


def test_the_default_student_depth_is_named_from_the_teacher(source):
    """Without --layers the student has half the teacher's layers, and its variant says how many (not "LNone")."""
    from harness.commands.compress import _half_depth

    assert _half_depth(source["client"], source["run"].info.run_id) == 1  # the tiny teacher has 2 layers
    assert _half_depth(source["client"], "0" * 32) is None


def test_distill_a_shallower_student(source):
    run = _compress(source, "distill", "--layers", "1", "--temperature", "3")
    m = _check_common(source, run, "distill")
    t = run.data.tags
    assert t["harness.compress.student"] == "the teacher's layers 0 of 2"
    assert t["harness.compress.student_spec"] == "L1" and "T=3" in t["harness.compress.loss"]
    assert int(t["harness.compress.student_parameters"]) < int(t["harness.compress.teacher_parameters"])
    assert m["size_mb"] < m["source_size_mb"]
    # it trained on the distillation loss: both terms were logged, and the total is their mix (alpha 0.5)
    client = source["client"]
    total, soft, hard = (
        {x.step: x.value for x in client.get_metric_history(run.info.run_id, k)}
        for k in ("train_loss", "train_soft_loss", "train_hard_loss")
    )
    assert total and total.keys() == soft.keys() == hard.keys()
    for step in total:
        assert total[step] == pytest.approx(0.5 * soft[step] + 0.5 * hard[step], rel=1e-4)
    assert run.data.params["optim.lr"] == source["run"].data.params["optim.lr"]  # trained as the source was
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "compression/variants.json")).read_text())
    assert "distill L1" in [r["method"] for r in table["rows"]]


def test_distill_refuses_a_student_it_cannot_build(source, capsys, tiny_model, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    other = tmp_path / "other-vocab"  # the tiny model with one more token: its batches would not be the teacher's
    shutil.copytree(tiny_model, other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["zzqx"])
    tok.save_pretrained(other)
    rid = source["run"].info.run_id
    uri = f"tracking.tracking_uri={source['uri']}"
    for extra, message in [
        (["--layers", "2"], "error: --layers 2 is not between 1 and 1 (the teacher has 2 layers)"),
        (["--alpha", "1.5"], "error: --alpha 1.5 is not between 0 and 1"),
        (["--student", str(other)], "does not share the teacher's tokenizer"),
    ]:
        with in_dir(source["work"]):
            rc = run_cli(["compress", rid, "--method", "distill", *extra, uri])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and "Traceback" not in err, err

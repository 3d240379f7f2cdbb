"""`harness run squad` end to end with a tiny model on real SQuAD questions, then the MLflow runs' content: the
trained run, the first-sentence baseline, and evaluating the logged model again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import in_dir, run_cli, tiny_args
from mlflow.tracking import MlflowClient


def _qa_args(data_dir: Path, tiny_model: Path, uri: str, **extra: str) -> list[str]:
    return tiny_args(
        data_dir,
        tiny_model,
        uri,
        **{
            "data.train_size": "120",
            "data.validation_size": "40",
            "data.test_size": "80",
            "data.max_length": "96",
            "data.doc_stride": "24",
            "optim.lr": "3e-3",
            **extra,
        },
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir, tiny_model):
    work = tmp_path_factory.mktemp("qa")
    with in_dir(work):
        uri = f"sqlite:///{work / 'mlruns.db'}"
        assert run_cli(["run", "squad", *_qa_args(data_dir, tiny_model, uri, log_model="true")]) == 0
        assert (
            run_cli(
                [
                    "run",
                    "squad",
                    "model.name=baseline:first-sentence",
                    f"data.data_dir={data_dir}",
                    "data.test_size=80",
                    "profile=quick",
                    f"tracking.tracking_uri={uri}",
                    "eval.bootstrap_resamples=200",
                ]
            )
            == 0
        )
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("squad")
        found = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
        assert len(found) == 2
        yield {"client": client, "trained": found[0], "baseline": found[1], "uri": uri, "data_dir": data_dir}


def test_trained_run_metrics_and_tags(runs):
    run = runs["trained"]
    assert run.info.status == "FINISHED"
    m, tags = run.data.metrics, run.data.tags
    for name in ("exact_match", "f1"):
        assert m[f"test_{name}_ci_low"] <= m[f"test_{name}"] <= m[f"test_{name}_ci_high"], name
        assert 0 <= m[f"test_{name}"] <= 100
    assert m["test_examples"] == 80
    assert tags["family"] == "extractive_qa" and tags["data.official_split"] == "false"
    assert "not available here" in tags["data.warnings"]
    assert tags["data.test.squad_version"] == "1.1"
    client = runs["client"]
    assert client.get_metric_history(run.info.run_id, "val_f1")
    assert client.get_metric_history(run.info.run_id, "val_exact_match")
    params = run.data.params
    assert params["data.doc_stride"] == "24" and params["eval.max_answer_length"] == "30"
    assert "not available, so carved out of 'test'" in params["split.train.selection"]


def test_predictions_table_and_plots(runs):
    client, run_id = runs["client"], runs["trained"].info.run_id
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/f1_by_answer_length.png", "plots/f1_by_question_type.png"}
    table = json.loads(Path(client.download_artifacts(run_id, "predictions/test.json")).read_text())
    cols = table["columns"]
    assert {"question", "context", "gold_answers", "prediction", "exact", "f1", "question_type"} <= set(cols)
    rows = [dict(zip(cols, r)) for r in table["data"]]
    assert len(rows) == 80
    mean_f1 = 100 * sum(r["f1"] for r in rows) / len(rows)
    assert mean_f1 == pytest.approx(runs["trained"].data.metrics["test_f1"], abs=1e-9)


def test_baseline_run_is_in_the_same_experiment(runs):
    run = runs["baseline"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mode"] == "baseline" and run.data.tags["harness.baseline"] == "first-sentence"
    assert run.info.run_name == "squad-baseline-first-sentence-test80"  # the rows scored, named (of 10,570)
    m = run.data.metrics
    assert 3 < m["test_f1"] < 30 and m["test_exact_match"] < 5  # the first sentence is rarely exactly the answer
    # same test questions as the trained run
    trained = runs["trained"].data.params
    assert run.data.params["split.test.digest"] == trained["split.test.digest"]


def _eval_trained(runs: dict, *extra: str):
    """`harness eval squad` of the trained run's logged model on its test questions; the run it made."""
    trained = runs["trained"]
    args = [
        f"data.data_dir={runs['data_dir']}",
        "data.test_size=80",
        "data.max_length=96",
        "data.doc_stride=24",
        "profile=quick",
        f"tracking.tracking_uri={runs['uri']}",
        "eval.bootstrap_resamples=200",
        "trainer.precision=32-true",
        *extra,
    ]
    assert run_cli(["eval", "squad", "--model", f"runs:/{trained.info.run_id}", *args]) == 0
    exp = runs["client"].get_experiment_by_name("squad")
    return runs["client"].search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]


def test_logged_model_evaluates_to_the_same_numbers(runs, tmp_path):
    trained = runs["trained"]
    again = _eval_trained(runs)
    assert again.data.tags["harness.source_run_id"] == trained.info.run_id
    assert again.data.metrics["test_f1"] == pytest.approx(trained.data.metrics["test_f1"], abs=1e-6)


def test_a_resident_test_split_gives_the_same_answers(runs):
    """QA's features gathered on the device (data.device_resident, forced on the CPU): offsets padded with -1 as the
    host collator pads them, so the same spans and the same EM/F1."""
    trained = runs["trained"]
    again = _eval_trained(runs, "data.device_resident=true")
    assert again.data.tags["data.resident_splits"] == "test"
    for key in ("test_f1", "test_exact_match"):
        assert again.data.metrics[key] == pytest.approx(trained.data.metrics[key], abs=1e-6), key


def test_untrained_qa_head_is_refused_for_eval(data_dir, tiny_model, tracking_uri, capsys):
    rc = run_cli(
        [
            "eval",
            "squad",
            "--model",
            str(tiny_model),
            f"data.data_dir={data_dir}",
            "data.test_size=10",
            f"tracking.tracking_uri={tracking_uri}",
        ]
    )
    assert rc == 2
    assert "untrained weights" in capsys.readouterr().err


def test_unknown_baseline(data_dir, tracking_uri, capsys):
    rc = run_cli(
        [
            "run",
            "squad",
            "model.name=baseline:lead-3",
            f"data.data_dir={data_dir}",
            f"tracking.tracking_uri={tracking_uri}",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "no baseline 'lead-3'" in err and "baseline:first-sentence" in err


def test_v2_scoring_of_a_model_on_a_v2_file(runs, tmp_path):
    """SQuAD 2.0 code path: null scores, HasAns/NoAns, thresholds tuned on the data, all with intervals."""
    from test_qa import _v2_gold

    gold, has, no = _v2_gold(tmp_path, runs["data_dir"])
    uri, trained = runs["uri"], runs["trained"]
    args = [
        f"data.data_dir={runs['data_dir']}",
        "data.max_length=96",
        "data.doc_stride=24",
        "profile=quick",
        f"tracking.tracking_uri={uri}",
        "eval.bootstrap_resamples=200",
        "trainer.precision=32-true",
    ]
    assert run_cli(["eval", "squad_v2", "--model", f"runs:/{trained.info.run_id}", "--data", str(gold), *args]) == 0
    client = runs["client"]
    exp = client.get_experiment_by_name("squad_v2")
    run = client.search_runs([exp.experiment_id])[0]
    m = run.data.metrics
    for name in ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact", "best_f1"):
        assert m[f"test_{name}_ci_low"] <= m[f"test_{name}"] <= m[f"test_{name}_ci_high"], name
    assert m["test_HasAns_total"] == len(has) and m["test_NoAns_total"] == len(no)
    assert m["test_best_f1"] >= m["test_f1"] - 1e-9 and "test_best_f1_thresh" in m
    # exact = (HasAns * n_has + NoAns * n_no) / n, as the official totals are
    n = len(has) + len(no)
    assert m["test_exact"] == pytest.approx((m["test_HasAns_exact"] * len(has) + m["test_NoAns_exact"] * len(no)) / n)
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "predictions/test.json")).read_text())
    assert "score_diff" in table["columns"] and "no answer" in {
        r[table["columns"].index("answer_length")] for r in table["data"]
    }


def test_v2_task_refuses_a_v1_file(data_dir, tracking_uri, tmp_path, capsys):
    folder = tmp_path / "data" / "qa" / "squad_v2.0"
    folder.mkdir(parents=True)
    (folder / "dev-v2.0.json.gz").symlink_to(data_dir / "qa/squad_v1.1/dev-v1.1.json.gz")
    rc = run_cli(["run", "squad_v2", f"data.data_dir={tmp_path / 'data'}", f"tracking.tracking_uri={tracking_uri}"])
    assert rc == 2
    assert "is a SQuAD v1.1 file" in capsys.readouterr().err
    client = MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("squad_v2").experiment_id])[0]
    assert run.info.status == "FAILED" and "v1.1" in run.data.tags["error"]


def test_logged_qa_model_answers_as_the_run_did(runs, monkeypatch):
    """pyfunc (what `make serve` answers with) gives every test question the answer the run's evaluation gave."""
    import mlflow
    import pandas as pd

    from harness.data.squad import read_squad_json

    monkeypatch.setenv("MLFLOW_TRACKING_URI", runs["uri"])
    mlflow.set_tracking_uri(runs["uri"])
    client, run_id = runs["client"], runs["trained"].info.run_id
    table = json.loads(Path(client.download_artifacts(run_id, "predictions/test.json")).read_text())
    table = pd.DataFrame(table["data"], columns=table["columns"])
    dev = read_squad_json(runs["data_dir"] / "qa/squad_v1.1/dev-v1.1.json.gz").rows
    by_id = {q: (question, context) for q, question, context in zip(dev["id"], dev["question"], dev["context"])}
    request = pd.DataFrame([by_id[q] for q in table["id"]], columns=["question", "context"])
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    out = model.predict(request)
    assert len(out) == 80 and list(out["answer"]) == list(table["prediction"])
    assert (out["span_score"] - table["span_score"]).abs().max() <= 1e-4
    assert model.metadata.get_input_schema().input_names() == ["question", "context"]
    with pytest.raises(Exception, match=r"missing inputs \['context'\]"):
        model.predict(pd.DataFrame({"question": ["who?"]}))

"""End to end: `harness run imdb` with a tiny model on a few hundred real IMDB rows, then the MLflow run's content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import in_dir, run_cli, tiny_args
from mlflow.tracking import MlflowClient

METRICS = ("accuracy", "f1_macro", "auroc", "ece")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir, tiny_model):
    """One real training run shared by the tests of this module (log_model on, checkpoints kept)."""
    work = tmp_path_factory.mktemp("e2e")
    with in_dir(work):
        uri = f"sqlite:///{work / 'mlruns.db'}"
        args = tiny_args(data_dir, tiny_model, uri, log_model="true", **{"tracking.keep_checkpoints": "true"})
        assert run_cli(["run", "imdb", *args]) == 0
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("imdb")
        runs = client.search_runs([exp.experiment_id])
        assert len(runs) == 1
        yield {"client": client, "run": runs[0], "uri": uri, "work": work, "exp": exp}


def test_run_finished_with_tags_and_params(trained, tiny_model):
    run = trained["run"]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["task"] == "imdb" and tags["family"] == "classification"
    assert tags["model"] == str(tiny_model) and tags["profile"] == "quick" and tags["seed"] == "42"
    assert tags["version.torch"] and tags["version.transformers"] and tags["device"].startswith("cpu")
    params = run.data.params
    assert params["model.name"] == str(tiny_model)
    assert params["data.max_length"] == "64" and params["seed"] == "42" and params["trainer.precision"] == "32-true"
    assert params["task.dataset.hub_id"] == "stanfordnlp/imdb"
    assert params["split.train.rows"] == "160" and params["split.test.rows"] == "96"


def test_test_metrics_have_confidence_intervals(trained):
    m = trained["run"].data.metrics
    for name in METRICS:
        v, lo, hi = m[f"test_{name}"], m[f"test_{name}_ci_low"], m[f"test_{name}_ci_high"]
        assert lo <= v <= hi, name
        assert lo < hi, name
    assert m["test_examples"] == 96


def test_test_metrics_equal_what_the_predictions_table_says(trained):
    """The logged numbers, recomputed by hand from the logged per-example predictions."""
    client, run = trained["client"], trained["run"]
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "predictions/test.json")).read_text())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    m = run.data.metrics
    assert m["test_accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows), abs=1e-6)
    f1s = []
    for c in ("negative", "positive"):
        tp = sum(r["label"] == c and r["prediction"] == c for r in rows)
        fp = sum(r["label"] != c and r["prediction"] == c for r in rows)
        fn = sum(r["label"] == c and r["prediction"] != c for r in rows)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    assert m["test_f1_macro"] == pytest.approx(sum(f1s) / 2, abs=1e-6)
    assert m["test_loss"] == pytest.approx(sum(r["loss"] for r in rows) / len(rows), abs=1e-5)


def test_step_and_validation_metrics_are_logged(trained):
    client, run_id = trained["client"], trained["run"].info.run_id
    loss = client.get_metric_history(run_id, "train_loss")
    assert len(loss) >= 4 and len({p.step for p in loss}) == len(loss)
    assert client.get_metric_history(run_id, "lr")
    assert client.get_metric_history(run_id, "train_samples_per_sec")
    for name in METRICS:
        assert client.get_metric_history(run_id, f"val_{name}"), name
    system = [k for k in trained["run"].data.metrics if k.startswith("system/")]
    assert system, "system metrics missing"


def test_artifacts(trained):
    client, run_id = trained["client"], trained["run"].info.run_id
    paths = {a.path for a in client.list_artifacts(run_id)}
    assert {"config", "environment.json", "predictions", "plots", "data"} <= paths  # the model: a logged model
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == {
        "plots/confusion_matrix.png",
        "plots/reliability_diagram.png",
    }
    local = Path(client.download_artifacts(run_id, "predictions/test.json"))
    table = json.loads(local.read_text())
    cols = table["columns"]
    assert {"text", "label", "prediction", "probability", "correct", "row"} <= set(cols)
    assert len(table["data"]) == 96
    cfg = Path(client.download_artifacts(run_id, "config/resolved.yaml")).read_text()
    assert "max_length: 64" in cfg and "family: classification" in cfg
    env = json.loads(Path(client.download_artifacts(run_id, "environment.json")).read_text())
    assert "torch" in env["packages"] and env["device"].startswith("cpu")
    # an MLflow model (pyfunc) with the save_pretrained folder inside
    assert {"MLmodel", "pyfunc_entry.py"} <= {Path(a.path).name for a in client.list_artifacts(run_id, "model")}
    model_files = {Path(a.path).name for a in client.list_artifacts(run_id, "model/artifacts/weights")}
    assert {"config.json", "model.safetensors", "harness.json"} <= model_files


def test_dataset_inputs(trained):
    inputs = trained["run"].inputs.dataset_inputs
    by_context = {}
    for di in inputs:
        ctx = {t.key: t.value for t in di.tags}["mlflow.data.context"]
        by_context[ctx] = di
    assert set(by_context) == {"train", "validation", "test"}
    test = by_context["test"]
    tags = {t.key: t.value for t in test.tags}
    assert tags["rows"] == "96" and tags["source_rows"] == "25000"
    assert len(tags["source_sha256"]) == 64 and "test.jsonl.gz" in tags["source"]
    assert test.dataset.digest == tags["digest"]
    digests = {di.dataset.digest for di in inputs}
    assert len(digests) == 3


def test_eval_from_mlflow_run_reproduces_test_metrics(trained):
    """A logged model, evaluated again on the same test rows, gives the same numbers, in a run linked to its source."""
    run = trained["run"]
    client, uri = trained["client"], trained["uri"]
    args = [a for a in tiny_args(Path(run.data.params["data.data_dir"]), Path("."), uri) if not a.startswith("model.")]
    rc = run_cli(["eval", "imdb", "--model", f"runs:/{run.info.run_id}", *args])
    assert rc == 0
    runs = client.search_runs([trained["exp"].experiment_id], order_by=["attributes.start_time DESC"])
    assert len(runs) == 2
    ev = runs[0]
    assert ev.info.status == "FINISHED"
    assert ev.data.tags["harness.source_run_id"] == run.info.run_id and ev.data.tags["mode"] == "eval"
    assert ev.data.metrics["test_accuracy"] == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-9)
    assert ev.data.metrics["test_auroc"] == pytest.approx(run.data.metrics["test_auroc"], abs=1e-6)
    assert {"context": "test"} == {
        "context": {t.key: t.value for t in ev.inputs.dataset_inputs[0].tags}["mlflow.data.context"]
    }


def test_eval_on_a_user_file_with_label_names(trained, data_dir, tmp_path, capsys):
    """Cross-domain check: the IMDB model on SST-2 sentences written as a user file with label names. The file is
    named (path and digest) on the console, in the run and in report and compare, never as IMDB's test split, and
    IMDB's published number is marked not comparable beside it (by the report's own rule)."""
    import gzip
    import hashlib

    rows = [json.loads(line) for line in gzip.open(data_dir / "sentiment/sst2/validation.jsonl.gz", "rt")][:40]
    f = tmp_path / "mine.jsonl"
    f.write_text(
        "".join(json.dumps({"text": r["sentence"], "label": ["negative", "positive"][r["label"]]}) + "\n" for r in rows)
    )
    run = trained["run"]
    args = [a for a in tiny_args(data_dir, Path("."), trained["uri"]) if not a.startswith("model.")]
    capsys.readouterr()
    rc = run_cli(["eval", "imdb", "--model", f"runs:/{run.info.run_id}", "--data", str(f), *args])
    assert rc == 0
    out = " ".join(capsys.readouterr().out.split())
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    assert f"scoring your file {f.resolve()} (sha256 {sha}, 40 rows) in place of imdb's test split" in out
    assert f"imdb · your file mine.jsonl (sha256 {sha[:12]}) · 40 examples" in out and "imdb · test ·" not in out
    published = [line for line in out.split("published: ")[1:]]
    assert published and all(
        "(not comparable: another test set (the run scored your file mine.jsonl, not imdb's test split)" in p
        for p in published
    )
    client = trained["client"]
    ev = client.search_runs([trained["exp"].experiment_id], order_by=["attributes.start_time DESC"])[0]
    assert ev.data.metrics["test_examples"] == 40
    assert ev.data.tags["data.test_file"] == str(f.resolve()) and ev.data.tags["data.test_file.sha256"] == sha
    assert ev.data.params["data.test_file"] == str(f.resolve())
    (di,) = ev.inputs.dataset_inputs
    tags = {t.key: t.value for t in di.tags}
    assert tags["source_kind"] == "file" and tags["source"].endswith("mine.jsonl")
    assert di.dataset.name == "file:mine.jsonl" and tags["mlflow.data.context"] == "test (user file)"
    # the report: its own row (other test examples), the file named, IMDB's reference not comparable beside it
    from harness.commands import report as R

    rows = [r for r in R.collect(trained["uri"], ["imdb"], None) if r.run_id == ev.info.run_id]
    assert rows and rows[0].test_file == str(f.resolve())
    ref = next(iter(R.build(rows, trained["uri"]).references["imdb"]))
    assert ref[1].startswith("not comparable: another test set (the run scored your file mine.jsonl")
    assert "no: your file mine.jsonl" in R.markdown(R.build(rows, trained["uri"]))
    # compare names the file too
    assert (
        run_cli(["compare", ev.info.run_id, ev.info.run_id, "--tracking-uri", trained["uri"], "--json", "--no-log"])
        == 0
    )
    compared = json.loads(capsys.readouterr().out)
    assert compared["test_data"] == f"your file mine.jsonl (sha256 {sha[:12]})"


def test_eval_from_checkpoint_matches(trained):
    work = trained["work"]
    ckpts = list((work / ".harness" / "runs" / "imdb").glob("*/checkpoints/last.ckpt"))
    assert len(ckpts) == 1
    run = trained["run"]
    args = [
        a
        for a in tiny_args(Path(run.data.params["data.data_dir"]), Path("."), trained["uri"])
        if not a.startswith("model.")
    ]
    assert run_cli(["eval", "imdb", "--model", str(ckpts[0]), *args]) == 0
    ev = trained["client"].search_runs([trained["exp"].experiment_id], order_by=["attributes.start_time DESC"])[0]
    assert ev.data.metrics["test_accuracy"] == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-9)


def test_checkpoint_keeps_flat_backbone_hyperparameters(trained):
    """Checkpoints store the backbone arguments flat, as they always have, so older ones still load."""
    import torch

    (ckpt,) = (trained["work"] / ".harness" / "runs" / "imdb").glob("*/checkpoints/last.ckpt")
    hp = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["hyper_parameters"]
    assert set(hp) == {
        "labels",
        "optim",
        "metrics",
        "ece_bins",
        "model_path",
        "model_ref",
        "model_source",
        "revision",
        "dropout",
        "attn_implementation",
    }
    assert hp["labels"] == ["negative", "positive"] and hp["model_source"] == "local"


def test_params_hold_only_this_familys_settings(trained):
    params = trained["run"].data.params
    assert params["data.truncation"] == "head_tail" and params["eval.ece_bins"] == "15"
    assert not [k for k in params if k.startswith("generation.") or k in ("data.doc_stride", "eval.n_best")]


@pytest.mark.slow  # the MLflow UI's start (30 s): make test-slow, which CI runs
def test_make_ui_serves_the_run_and_its_artifacts(trained):
    """`make ui` starts the MLflow UI on 127.0.0.1 over the store the run used; the run and its artifacts load."""
    import os
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    from harness.paths import project_root

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MLFLOW_TRACKING_URI=trained["uri"], PORT=str(port))
    proc = subprocess.Popen(
        ["make", "-s", "-C", str(project_root()), "ui"],
        env=env,
        cwd=trained["work"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    run_id = trained["run"].info.run_id
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError("MLflow UI did not come up") from None
                time.sleep(1)
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=10) as r:
            run = json.loads(r.read())["run"]
        assert run["info"]["status"] == "FINISHED"
        url = f"{base}/get-artifact?path=predictions/test.json&run_uuid={run_id}"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert len(json.loads(r.read())["data"]) == 96
        with urllib.request.urlopen(f"{base}/", timeout=10) as r:
            assert b"MLflow" in r.read()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)

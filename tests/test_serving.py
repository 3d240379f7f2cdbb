"""A logged model is an MLflow model: pyfunc loads it (runs:/ and models:/), `make serve` answers over REST with the
predictions the run made, and a malformed request gets a 4xx that says what to send."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import free_port, in_dir, run_cli, tiny_args
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def logged(tmp_path_factory, data_dir, tiny_model):
    work = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{work / 'mlruns.db'}"
    extra = {"optim.lr": "1e-2", "trainer.num_threads": "1", "eval.prediction_text_chars": "100000"}  # whole texts
    args = tiny_args(data_dir, tiny_model, uri, log_model="true", **extra)
    with in_dir(work):
        assert run_cli(["run", "imdb", *args]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("imdb").experiment_id])
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "predictions/test.json")).read_text())
    return {"work": work, "uri": uri, "client": client, "run": run, "table": pd.DataFrame(**_split(table))}


def _split(table: dict) -> dict:
    return {"data": table["data"], "columns": table["columns"]}


def _same_predictions(out: pd.DataFrame, table: pd.DataFrame) -> None:
    assert list(out["label"]) == list(table["prediction"])
    assert (out["prob_positive"] - table["p_positive"]).abs().max() <= 1e-5
    assert (out["score"] - table[["p_negative", "p_positive"]].max(axis=1)).abs().max() <= 1e-5


def test_pyfunc_predicts_what_the_run_predicted_from_runs_and_models_uris(logged, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged["uri"])
    mlflow.set_tracking_uri(logged["uri"])
    run_id = logged["run"].info.run_id
    files = {Path(a.path).name for a in logged["client"].list_artifacts(run_id, "model")}
    assert {"MLmodel", "pyfunc_entry.py", "artifacts"} <= files and not any(f.endswith(".pkl") for f in files)
    table = logged["table"]
    out = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(pd.DataFrame({"text": table["text"]}))
    _same_predictions(out, table)
    version = mlflow.register_model(f"runs:/{run_id}/model", "imdb-best")
    again = mlflow.pyfunc.load_model(f"models:/imdb-best/{version.version}").predict(
        pd.DataFrame({"text": table["text"][:8]})
    )
    _same_predictions(again, table[:8])


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_make_serve_answers_over_rest_and_refuses_a_malformed_request(logged):
    """`make serve` (harness serve: MLflow's scoring app on 127.0.0.1) answers, refuses malformed requests with a 4xx
    that says what to send and never the server's stack trace, and answers an empty request with no predictions."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged["uri"]}
    proc = subprocess.Popen(
        ["make", "-s", "-C", str(ROOT), "serve", f"RUN={logged['run'].info.run_id}", f"SERVE_PORT={port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
                time.sleep(1)
        else:
            pytest.fail("the scoring server did not answer /ping")
        table = logged["table"]
        records = [{"text": t} for t in table["text"][:32]]
        started = time.perf_counter()
        status, body = _post(f"{base}/invocations", json.dumps({"dataframe_records": records}).encode())
        elapsed = time.perf_counter() - started
        assert status == 200, body
        out = pd.DataFrame(body["predictions"])
        _same_predictions(out, table[:32].reset_index(drop=True))
        print(f"one /invocations request with 32 texts: {elapsed * 1000:.0f} ms")
        status, body = _post(f"{base}/invocations", json.dumps({"dataframe_records": [{"review": "x"}]}).encode())
        # the signature is enforced before the model sees the request: MLflow names what is missing
        assert status == 400 and "missing inputs ['text']" in body.get("message", ""), body
        status, body = _post(f"{base}/invocations", json.dumps({"dataframe_records": [{"text": 42}]}).encode())
        assert status == 400, body
        status, body = _post(f"{base}/invocations", b"{not json")
        assert 400 <= status < 500
        # empty in, empty out: every way of sending no records answers 200 with no predictions
        # (MLflow's own app answers the first two with a 400 and its stack trace)
        empties = ({"inputs": []}, {"inputs": {"text": []}}, {"dataframe_records": []})
        for empty in (*empties, {"dataframe_split": {"columns": ["text"], "data": []}}):
            status, body = _post(f"{base}/invocations", json.dumps(empty).encode())
            assert (status, body) == (200, {"predictions": []}), (empty, body)
        # malformed requests: a 4xx with a message, and never the server's traceback
        for bad in ({"inputs": [[1, 2], [3]]}, {"dataframe_records": [{}]}, {"inputs": {"text": [[]]}}):
            status, body = _post(f"{base}/invocations", json.dumps(bad).encode())
            text = json.dumps(body)
            assert 400 <= status < 500 and body.get("message"), (bad, body)
            assert "stack_trace" not in body and "Traceback" not in text and "site-packages" not in text, text
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)

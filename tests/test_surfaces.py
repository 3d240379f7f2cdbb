"""What a user reads about a run: the console's summary and links, the MLflow 3 UI (a real `mlflow ui` read in headless
Chromium from a fresh profile: Model training view, the run's logged model, the experiment's Models tab with test
metrics per dataset), the logged model itself, and the records a run keeps for `harness sync`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from conftest import free_port, in_dir, require, run_cli, tiny_args
from mlflow.tracking import MlflowClient

from harness.tracking import links


@pytest.fixture(scope="module")
def logged(tmp_path_factory, data_dir, tiny_model):
    """One sst2 run with log_model=true; its console output kept."""
    work = tmp_path_factory.mktemp("surfaces")
    uri = f"sqlite:///{work / 'mlruns.db'}"
    from io import StringIO

    from rich.console import Console

    import harness.cli as cli

    buffer = StringIO()
    real = cli._console
    cli._console = lambda: Console(file=buffer, width=400, force_terminal=False)
    try:
        with in_dir(work), redirect_stdout(buffer):  # the step lines go to stdout, the summary to the console
            assert run_cli(["run", "sst2", *tiny_args(data_dir, tiny_model, uri, log_model="true")]) == 0
    finally:
        cli._console = real
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sst2")
    (run,) = client.search_runs([exp.experiment_id])
    return {"uri": uri, "work": work, "client": client, "run": run, "exp": exp, "out": buffer.getvalue()}


# ---- the console ----------------------------------------------------------------------------------------------------


def test_the_printed_links_open_the_run_and_its_model_in_the_model_training_view(logged):
    out, run, exp = logged["out"], logged["run"], logged["exp"]
    model_id = logged["client"].get_run(run.info.run_id).outputs.model_outputs[0].model_id
    run_link = (
        f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    )
    assert f"open it: make ui (or: mlflow ui --backend-store-uri {logged['uri']}" in out
    assert run_link in out
    model_link = f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/models/{model_id}"
    assert f"its model: {model_link}?workflowType=machine_learning" in out


def test_the_console_says_what_the_rows_are_and_the_floor(logged):
    out = logged["out"]
    assert re.search(
        r"data: train 160 of [\d,]+ rows \(local\), validation 64 of 2,000 rows \(local\), test 96 of 872 rows", out
    )
    # the floor: always predicting the commonest test label, with where the run stands
    floor = r"floor \(always predicting '(positive|negative)', the commonest test label; a run under it learnt "
    m = re.search(floor + r"nothing the metric rewards\):\n    accuracy (0\.\d{4}): run (.+)\n", out)
    assert m, out[-3000:]
    assert m.group(3) in ("above it", "BELOW it", "not distinguishable from it (inside the interval)")
    metrics = logged["run"].data.metrics
    assert metrics["test_accuracy_floor"] == pytest.approx(float(m.group(2)), abs=1e-4)
    assert (
        "floor (any constant score (chance); a run under it learnt nothing the metric rewards):\n    auroc 0.5000"
        in out
    )
    assert logged["run"].data.tags["floor.accuracy"].startswith(m.group(2))


def test_a_published_number_states_each_reason_once(logged):
    (line,) = [ln for ln in logged["out"].splitlines() if "published:" in ln]
    assert line.count("GLUE test server") == 1, line
    assert "not comparable: reported on the GLUE test server" in line


def test_the_epoch_metric_counts_epochs_as_the_console_does(logged):
    """The console says "epoch 1" for the first epoch; the `epoch` metric says 1 too (Lightning's own count is 0)."""
    assert "| epoch 1 |" in logged["out"]
    history = logged["client"].get_metric_history(logged["run"].info.run_id, "epoch")
    assert history and {p.value for p in history} == {1.0}


def test_run_names_carry_the_sizes_asked_for(logged):
    assert logged["run"].info.run_name.endswith("-quick-train-s42-train160-test96")


# ---- the logged model (MLflow 3 LoggedModel) ------------------------------------------------------------------------


def test_the_model_is_a_logged_model_linked_to_its_run_test_metrics_and_dataset(logged):
    client, run = logged["client"], logged["run"]
    full = client.get_run(run.info.run_id)
    (out,) = full.outputs.model_outputs
    model = client.get_logged_model(out.model_id)
    assert model.name == "model" and model.source_run_id == run.info.run_id and str(model.status) == "READY"
    assert model.tags["task"] == "sst2" and model.params["optim.lr"] == "0.001"  # the run's config with it
    test = [i.dataset for i in full.inputs.dataset_inputs if i.dataset.name == "sst2-test"][0]
    linked = {m.key: m for m in model.metrics}
    for key in ("test_accuracy", "test_accuracy_ci_low", "test_accuracy_ci_high", "test_auroc"):
        assert linked[key].value == pytest.approx(run.data.metrics[key])
        assert (linked[key].dataset_name, linked[key].dataset_digest) == ("sst2-test", test.digest)
    # its MLmodel names it; runs:/<id>/model finds it and predicts
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(logged["uri"])
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert pyfunc.metadata.model_id == model.model_id
    pred = pyfunc.predict(pd.DataFrame({"text": ["a lovely film", "dull and long"]}))
    assert list(pred.columns[:2]) == ["label", "score"] and len(pred) == 2


def test_the_journal_carries_a_logged_model_to_a_server_that_was_away(logged, tmp_path):
    """While the server is away, the model waits in the run's journal with its metrics; replayed, it becomes the run's
    LoggedModel with the metrics linked (and a replay after a failure part-way does not make a second one)."""
    import mlflow

    from harness.tracking.journal import Journal, logged_model_id

    client = logged["client"]
    exp = logged["exp"].experiment_id
    run_id = client.create_run(exp, run_name="offline").info.run_id
    src = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{logged['run'].info.run_id}/model",
            dst_path=str(tmp_path / "dl"),
            tracking_uri=logged["uri"],
        )
    )
    journal = Journal(tmp_path / "journal", run_id, logged["uri"])
    spec = {
        "name": "model",
        "upload": "u1",
        "step": 10,
        "model_type": "classification",
        "params": {"task": "sst2"},
        "tags": {"task": "sst2"},
        "metrics": [["test_accuracy", 0.75, 1, 10, "sst2-test", "abc"]],
    }
    journal.add("log_model", local=str(src), model=spec)
    assert journal.count() == 1
    assert journal.replay(client, retry_in=0)
    model_id = logged_model_id(client, run_id)
    model = client.get_logged_model(model_id)
    assert [(m.key, m.value, m.dataset_name) for m in model.metrics] == [("test_accuracy", 0.75, "sst2-test")]
    from harness.tracking.journal import send_model

    again = send_model(client, run_id, src, spec)  # the same upload key: the same model
    assert again == model_id


# ---- the MLflow UI in a real browser --------------------------------------------------------------------------------


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        require("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return path


def browser_text(url: str, profile: Path, width: int = 1600, height: int = 2400) -> str:
    """The page's text as a real browser renders it from a fresh profile (empty local storage: the UI's default
    view)."""
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--virtual-time-budget=20000",
        "--dump-dom",
        url,
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
    dom = re.sub(r"<style.*?</style>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


@pytest.fixture(scope="module")
def ui(logged):
    """`make ui` over the run's store, on a free port; the links point there (HARNESS_UI_URL)."""
    from harness.paths import project_root

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged["uri"], "PORT": str(port)}
    proc = subprocess.Popen(
        ["make", "-s", "-C", str(project_root()), "ui"],
        env=env,
        cwd=logged["work"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    started = time.monotonic()
    first = proc.stdout.readline()
    said_in = time.monotonic() - started
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                raise AssertionError("make ui did not come up") from None
            time.sleep(1)
    yield {"base": f"http://127.0.0.1:{port}", "first": first, "said_in": said_in}
    _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """make, mlflow and its workers: SIGTERM, then SIGKILL for what is still there after 30 s (a busy CI machine)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.slow  # a real mlflow ui and Chromium (make test-slow, which CI runs)
def test_make_ui_says_where_it_will_be_at_once(ui):
    """`mlflow ui` is silent for about 30 s; `make ui` names the address (Model training view) before that."""
    assert ui["said_in"] < 15, ui
    assert f"starting on {ui['base']}/#/experiments?workflowType=machine_learning" in ui["first"]


@pytest.mark.slow  # a real mlflow ui and Chromium (make test-slow, which CI runs)
def test_a_printed_link_opens_the_run_in_the_model_training_view_from_a_fresh_profile(logged, ui, tmp_path):
    run, exp = logged["run"], logged["exp"]
    printed = links.run_url(ui["base"], exp.experiment_id, run.info.run_id)
    text = browser_text(printed, tmp_path / "fresh")
    assert run.info.run_name in text, text[:2000]
    assert "Model registry" in text and "Judges" not in text  # the Model training sidebar, not GenAI's
    # the run page names its logged model and its dataset
    assert re.search(r"Logged models \(1\) .* model Ready .* sst2-test", text), text[-4000:]
    # without the parameter, a fresh browser opens MLflow 3's GenAI view: what the links avoid
    bare = browser_text(printed.split("?")[0], tmp_path / "fresh2")
    assert "Judges" in bare


@pytest.mark.slow  # a real mlflow ui and Chromium (make test-slow, which CI runs)
def test_the_models_tab_lists_the_model_with_its_test_metrics_per_dataset(logged, ui, tmp_path):
    exp = logged["exp"]
    text = browser_text(links.models_url(ui["base"], exp.experiment_id), tmp_path / "p", width=3000, height=900)
    assert re.search(r"Model name .* model Ready", text), text[:3000]
    assert "Dataset: sst2-test" in text and "test_accuracy" in text, text[:4000]
    value = f"{logged['run'].data.metrics['test_accuracy']:.4f}".rstrip("0")
    assert value in text


def test_make_dashboard_names_its_address_at_once(tmp_path):
    from harness.paths import project_root

    port = free_port()
    env = {**os.environ, "OPTUNA_STORAGE": f"sqlite:///{tmp_path / 'optuna.db'}", "DASHBOARD_PORT": str(port)}
    proc = subprocess.Popen(
        ["make", "-s", "-C", str(project_root()), "dashboard"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        started = time.monotonic()
        first = proc.stdout.readline()
        assert time.monotonic() - started < 15
        assert f"http://127.0.0.1:{port}/dashboard/" in first and "optuna.db" in first
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


# ---- serving a run that cannot be served ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, words",
    [
        ("runs://model", "'runs://model' names no run — make serve RUN=<run id>"),
        ("runs:/doesnotexist/model", "MLflow run 'doesnotexist' not found"),
        ("NOMODEL", "logged no model — train with log_model=true"),
        ("models:/nope/1", "no registered model 'nope'"),
    ],
)
def test_make_serve_on_what_cannot_be_served_is_one_line(logged, model, words, monkeypatch):
    client = logged["client"]
    if model == "NOMODEL":
        rid = client.create_run(logged["exp"].experiment_id, run_name="no-model", tags={"task": "sst2"}).info.run_id
        client.set_terminated(rid)
        model = f"runs:/{rid}/model"
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged["uri"]}
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "serve", model, "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1, lines[-20:]
    assert lines[0].startswith("error: ") and words in lines[0]

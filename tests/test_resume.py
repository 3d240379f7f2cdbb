"""A run killed mid-training continues from its last checkpoint in the same MLflow run and ends where an
uninterrupted run ends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli, tiny_args
from mlflow.tracking import MlflowClient

HERE = Path(__file__).parent


@pytest.mark.parametrize(
    "resident",
    [
        "false",
        # the splits held on the device (auto on a GPU) resume mid-epoch on the same batches (make test-slow)
        pytest.param("true", marks=pytest.mark.slow),
    ],
)
def test_killed_run_resumes_in_same_mlflow_run(resident, data_dir, tiny_model, tracking_uri, tmp_path):
    # 160 training rows / batch 16 = 10 steps, 2 epochs = 20 steps; checkpoints every 4 steps
    args = tiny_args(
        data_dir, tiny_model, tracking_uri, **{"trainer.max_epochs": "2", "data.device_resident": resident}
    )

    # reference: the same config, uninterrupted, in another experiment
    assert run_cli(["run", "imdb", *args, "tracking.experiment=reference"]) == 0
    client = MlflowClient(tracking_uri)
    ref = client.search_runs([client.get_experiment_by_name("reference").experiment_id])[0]

    # killed at step 14 (epoch 2, two steps after the checkpoint at step 12): a hard kill, no cleanup
    proc = subprocess.run(
        [sys.executable, str(HERE / "kill_driver.py"), "KILL", "14", "run", "imdb", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    exp = client.get_experiment_by_name("imdb")
    (killed,) = client.search_runs([exp.experiment_id])
    assert killed.info.status == "RUNNING"
    assert list(Path(".harness/runs/imdb").glob("*/checkpoints/last.ckpt"))

    # the same command again: continues that run
    assert run_cli(["run", "imdb", *args]) == 0
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, "resume must not create a second run"
    (done,) = runs
    assert done.info.run_id == killed.info.run_id
    assert done.info.status == "FINISHED"
    assert done.data.tags.get("harness.resumed") == "true"
    for key in ("test_accuracy", "test_auroc", "test_ece", "test_loss", "val_loss"):
        assert done.data.metrics[key] == pytest.approx(ref.data.metrics[key], abs=1e-6), key
    # the checkpoints of a finished run are removed; running the command once more starts a fresh run
    assert not list(Path(".harness/runs/imdb").glob("*/checkpoints/last.ckpt"))


@pytest.mark.parametrize(
    "signal_name, code, line",
    [
        (
            "INT",
            130,
            "interrupted: every run this command started is closed as KILLED; run the same command again to resume",
        ),
        (
            "TERM",
            143,
            "terminated (SIGTERM): every run this command started is closed as KILLED; run the same command "
            "again to resume",
        ),
    ],
)
def test_ctrl_c_or_sigterm_marks_the_run_killed_and_it_resumes(
    signal_name, code, line, data_dir, tiny_model, tracking_uri, tmp_path
):
    args = tiny_args(data_dir, tiny_model, tracking_uri)
    proc = subprocess.run(
        [sys.executable, str(HERE / "kill_driver.py"), signal_name, "6", "run", "imdb", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == line
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("imdb")
    (killed,) = client.search_runs([exp.experiment_id])
    assert killed.info.status == "KILLED" and killed.data.tags["error_type"] == "KeyboardInterrupt"
    assert run_cli(["run", "imdb", *args]) == 0
    (done,) = client.search_runs([exp.experiment_id])
    assert done.info.run_id == killed.info.run_id and done.info.status == "FINISHED"
    assert "error" not in done.data.tags and "error_type" not in done.data.tags  # the interruption is history


def test_kill_during_evaluation_resumes_without_training_again(data_dir, tiny_model, tracking_uri, tmp_path):
    args = tiny_args(data_dir, tiny_model, tracking_uri)
    proc = subprocess.run(
        [sys.executable, str(HERE / "kill_driver.py"), "KILL", "test", "run", "imdb", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("imdb")
    (killed,) = client.search_runs([exp.experiment_id])
    steps_before = len(client.get_metric_history(killed.info.run_id, "train_loss"))
    assert steps_before > 0
    assert run_cli(["run", "imdb", *args]) == 0
    (done,) = client.search_runs([exp.experiment_id])
    assert done.info.run_id == killed.info.run_id and done.info.status == "FINISHED"
    assert len(client.get_metric_history(done.info.run_id, "train_loss")) == steps_before  # no step trained again
    assert done.data.metrics["test_examples"] == 96

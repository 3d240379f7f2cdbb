"""DDP on two CPU processes (gloo): the same command trains, evaluates every test example exactly once, and logs
one MLflow run from rank 0."""

from __future__ import annotations

import subprocess
import sys

from conftest import tiny_args
from mlflow.tracking import MlflowClient


def test_ddp_two_cpu_processes(data_dir, tiny_model, tracking_uri, tmp_path):
    args = tiny_args(
        data_dir,
        tiny_model,
        tracking_uri,
        **{
            "trainer.strategy": "ddp",
            "trainer.devices": "2",
            "trainer.accelerator": "cpu",
            "data.eval_batch_size": "32",
            "trainer.num_threads": "1",
        },
    )
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "imdb", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("MLflow run ") == 1  # the report is printed by rank 0 only
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("imdb").experiment_id])
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert m["test_examples"] == 96  # gathered from both ranks, no example lost or counted twice
    assert m["test_accuracy_ci_low"] <= m["test_accuracy"] <= m["test_accuracy_ci_high"]
    assert "val_accuracy" in m and len(client.get_metric_history(run.info.run_id, "train_loss")) >= 2

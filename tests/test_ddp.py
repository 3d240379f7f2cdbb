"""DDP on two CPU processes (gloo): the same command trains, evaluates every test example exactly once, and logs
one MLflow run from rank 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, tiny_args
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
    # dropout is on here: each rank draws its own masks, which the run says (the steps match one process's only
    # with model.dropout=0, as the next test checks)
    assert proc.stdout.count("note: each of the 2 processes draws its own dropout masks") == 1
    assert run.data.tags["ddp.dropout"].startswith("each of the 2 processes draws its own dropout masks")


@pytest.mark.slow  # a minute of processes and servers: make test-slow, which CI runs
def test_two_nodes_train_as_one_process_with_the_same_global_batch(data_dir, tiny_model, tmp_path):
    """`trainer.num_nodes=2`, started by hand on each "node" (two processes on 127.0.0.1, gloo, one thread each, each
    in its own folder as on its own machine) with batch 16 per node gives the test metrics of one process with batch
    32: the same examples make each step. One MLflow run, from node 0; every test example scored once."""
    import os

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    common = {
        "trainer.accelerator": "cpu",
        "trainer.num_threads": "1",
        "model.dropout": "0",
        "data.train_size": "640",
        "trainer.max_epochs": "2",
    }
    two = tiny_args(data_dir, tiny_model, uri, **common, **{"trainer.num_nodes": "2", "trainer.devices": "1"})
    one = tiny_args(data_dir, tiny_model, uri, **common, **{"data.batch_size": "32"})
    port = str(free_port())
    nodes = []
    for rank in range(2):
        cwd = tmp_path / f"node{rank}"
        cwd.mkdir()
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "NODE_RANK": str(rank),
            "WORLD_SIZE": "2",
            "GLOO_SOCKET_IFNAME": "lo",
            "HARNESS_DIST_TIMEOUT_S": "120",
        }
        nodes.append(
            subprocess.Popen(
                [sys.executable, "-m", "harness.cli", "run", "imdb", *two],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=600) for p in nodes]
    for p, (_out, err) in zip(nodes, outs):
        assert p.returncode == 0, err[-3000:]
    assert outs[0][0].count("MLflow run ") == 1 and "MLflow run " not in outs[1][0]  # node 0 reports, node 1 trains
    assert not (tmp_path / "node1" / "mlruns.db").exists() and not (tmp_path / "node1" / ".harness").exists()
    single = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "imdb", *one],
        cwd=tmp_path / "node0",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    # the same two processes started by torchrun (its environment: RANK, WORLD_SIZE, LOCAL_RANK, TORCHELASTIC_*)
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nnodes", "1", "--nproc-per-node", "2"]
    torchrun += ["--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "harness.cli"]
    ddp = tiny_args(data_dir, tiny_model, uri, **common, **{"trainer.devices": "2", "trainer.strategy": "ddp"})
    elastic = subprocess.run(
        [*torchrun, "run", "imdb", *ddp],
        cwd=tmp_path / "node0",
        env={**os.environ, "GLOO_SOCKET_IFNAME": "lo"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert elastic.returncode == 0, elastic.stderr[-3000:]
    assert elastic.stdout.count("MLflow run ") == 1
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("imdb").experiment_id], order_by=["start_time ASC"])
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    nodes_run, one_run, elastic_run = runs
    c = elastic_run.data.metrics
    assert c["test_examples"] == 96 and c["test_accuracy"] == one_run.data.metrics["test_accuracy"]
    assert abs(c["test_loss"] - one_run.data.metrics["test_loss"]) <= 1e-4
    assert nodes_run.data.params["trainer.num_nodes"] == "2"
    a, b = nodes_run.data.metrics, one_run.data.metrics
    assert a["test_examples"] == b["test_examples"] == 96  # gathered from both nodes, none twice
    steps = client.get_metric_history(nodes_run.info.run_id, "train_loss")
    single_steps = client.get_metric_history(one_run.info.run_id, "train_loss")
    assert [m.step for m in steps] == [m.step for m in single_steps]
    losses = [m.value for m in steps]
    assert max(losses) - min(losses) > 0.005  # the steps saw different batches: the match below is not trivial
    # every step's loss, not only the end: both nodes took each global batch and made the same update
    assert max(abs(x - m.value) for x, m in zip(losses, single_steps)) <= 1e-4
    assert abs(a["test_loss"] - b["test_loss"]) <= 1e-4 and abs(a["val_loss"] - b["val_loss"]) <= 1e-4
    assert a["test_accuracy"] == b["test_accuracy"]

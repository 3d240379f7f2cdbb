"""Sharded training (trainer.strategy=fsdp, FSDP2 through Lightning) on two CPU processes (gloo): the same steps as
DDP, resumed after kill -9 from a sharded checkpoint, and a logged model gathered on rank 0 that serves what the
run predicted. The refusals are one line each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli, tiny_args
from mlflow.tracking import MlflowClient

from harness.config import resolve_run_config
from harness.errors import ConfigError
from harness.families.registry import get_task
from harness.models.sharding import check_world, layer_stacks
from harness.runtime import check_sharding

HERE = Path(__file__).parent

COMMON = {
    "trainer.devices": "2",
    "trainer.accelerator": "cpu",
    "trainer.num_threads": "1",
    "model.dropout": "0",
    "data.train_size": "640",
    "trainer.max_epochs": "2",
    "optim.lr": "1e-2",
}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "imdb", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _losses(client: MlflowClient, run_id: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, "train_loss")}


def _serves_what_it_predicted(client: MlflowClient, uri: str, run_id: str) -> None:
    """The run's logged model, loaded with mlflow.pyfunc, predicts the labels and probabilities the run logged."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    table = json.loads(Path(client.download_artifacts(run_id, "predictions/test.json")).read_text())
    table = pd.DataFrame(data=table["data"], columns=table["columns"])
    out = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(pd.DataFrame({"text": table["text"]}))
    assert list(out["label"]) == list(table["prediction"])
    assert (out["prob_positive"] - table["p_positive"]).abs().max() <= 1e-5


def _gone(group: int, within: float) -> bool:
    """Whether every process of the process group has exited within `within` seconds (the rest are then killed)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    os.killpg(group, signal.SIGKILL)
    return False


# ---- which modules become shard groups ------------------------------------------------------------------------------


def test_each_layer_is_a_group_and_a_tied_embedding_stays_with_its_head(tiny_model, tiny_mlm, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=2)
    assert [type(m).__name__ for m in layer_stacks(cls)] == ["BertEmbeddings", "BertLayer", "BertLayer"]
    # the masked LM's output layer shares the word embeddings' weight: they stay together in the root group
    mlm = AutoModelForMaskedLM.from_pretrained(str(tiny_mlm))
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    assert [type(m).__name__ for m in layer_stacks(mlm)] == ["BertLayer", "BertLayer"]
    llama = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    assert [type(m).__name__ for m in layer_stacks(llama)] == ["LlamaDecoderLayer", "LlamaDecoderLayer"]


# ---- refusals -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, said",
    [
        (["trainer.strategy=fsdp_cpu_offload"], "trainer.strategy=fsdp_cpu_offload is Lightning's first FSDP"),
        (["trainer.shard_size=2"], "trainer.shard_size=2 applies to sharded training only"),
        (["trainer.strategy=fsdp", "trainer.precision=16-mixed"], "trainer.precision=16-mixed with trainer.strategy"),
        (["trainer.strategy=fsdp", "trainer.compile=reduce-overhead"], "CUDA graphs cannot capture the all-gathers"),
    ],
)
def test_combinations_sharding_cannot_take_are_refused(overrides, said):
    cfg = resolve_run_config(get_task("imdb"), overrides)
    with pytest.raises(ConfigError) as e:
        check_sharding(cfg)
    assert said in str(e.value)


def test_a_model_without_repeated_layers_is_refused():
    import torch

    from harness.models.sharding import check_shardable

    with pytest.raises(ConfigError) as e:
        check_shardable(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)), "my-mlp")
    assert "trainer.strategy=fsdp cannot shard my-mlp: it has no stack of repeated layers" in str(e.value)


def test_a_shard_size_that_does_not_divide_the_world_is_refused():
    check_world(4, 2)
    with pytest.raises(ConfigError) as e:
        check_world(6, 4)
    assert "trainer.shard_size=4 does not divide the 6 processes" in str(e.value)


def test_the_cli_refuses_in_one_line_before_anything_starts(data_dir, tiny_model, tracking_uri, capsys):
    args = tiny_args(data_dir, tiny_model, tracking_uri, **{"trainer.strategy": "fsdp", "trainer.precision": "16"})
    assert run_cli(["run", "imdb", *args]) == 2
    err = capsys.readouterr().err
    assert "error: trainer.precision=16 with trainer.strategy=fsdp" in err and "Traceback" not in err
    store = MlflowClient(tracking_uri)
    assert not Path("mlruns.db").exists() or not store.search_experiments(filter_string="name='imdb'")


def test_a_sharded_run_in_this_process_leaves_no_group_or_port_behind(data_dir, tiny_model, tracking_uri, monkeypatch):
    """One process sharded (the GPU check's imdb-fsdp phase, a suite's entry): the run ends its process group and
    takes back the rendezvous Lightning put in the environment, so a later two-process run started from here neither
    inherits a port this process still holds (CI: "address already in use" in every sharded test after the GPU
    check's) nor waits, as a rank launched from outside (LOCAL_RANK), for a peer nobody starts."""
    import torch.distributed as dist

    from harness.run.launch import RENDEZVOUS_ENV

    for key in RENDEZVOUS_ENV:
        monkeypatch.delenv(key, raising=False)
    args = tiny_args(data_dir, tiny_model, tracking_uri, **{"trainer.strategy": "fsdp", "trainer.devices": "1"})
    assert run_cli(["run", "imdb", *args, "trainer.max_steps=2", "data.train_size=32"]) == 0
    assert not dist.is_initialized()
    assert not [k for k in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK") if k in os.environ]
    client = MlflowClient(tracking_uri)
    (r,) = client.search_runs([client.get_experiment_by_name("imdb").experiment_id])
    assert r.info.status == "FINISHED" and r.data.metrics["shard_processes"] == 1


# ---- two processes --------------------------------------------------------------------------------------------------


@pytest.mark.slow  # four two-process runs (minutes): make test-slow, which CI runs
def test_sharded_training_takes_ddps_steps_resumes_after_kill_and_logs_a_model_that_serves(
    data_dir, tiny_model, tracking_uri, tmp_path
):

    ddp = tiny_args(data_dir, tiny_model, tracking_uri, **COMMON, **{"trainer.strategy": "ddp"})
    fsdp = tiny_args(
        data_dir,
        tiny_model,
        tracking_uri,
        **COMMON,
        **{"trainer.strategy": "fsdp", "log_model": "true", "eval.prediction_text_chars": "100000"},
    )
    for args, exp in ((ddp, "ddp"), (fsdp, "fsdp")):
        done = _run([*args, f"tracking.experiment={exp}"], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    assert "sharded (FSDP2) over 2 processes, 3 groups (layers, embeddings) and the rest" in done.stdout
    client = MlflowClient(tracking_uri)
    (d,) = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    (f,) = client.search_runs([client.get_experiment_by_name("fsdp").experiment_id])
    # each rank held half the parameters, and took the steps DDP (every rank holding all of them) took
    assert f.data.metrics["shard_processes"] == 2
    assert f.data.tags["fsdp.sharding"].startswith("sharded (FSDP2) over 2 processes")
    a, b = _losses(client, f.info.run_id), _losses(client, d.info.run_id)
    assert sorted(a) == sorted(b) and len(a) >= 10
    assert max(a.values()) - min(a.values()) > 0.005  # the steps differ: the match below is not trivial
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-4
    for key in ("test_loss", "val_loss"):
        assert abs(f.data.metrics[key] - d.data.metrics[key]) <= 1e-4, key
    assert f.data.metrics["test_examples"] == 96 and f.data.metrics["test_accuracy"] == d.data.metrics["test_accuracy"]

    # HSDP: shards of one process, replicated twice (the 2-D mesh a multi-node run uses), the same steps again
    hsdp = _run([*ddp[:-1], "trainer.strategy=fsdp", "trainer.shard_size=1", "tracking.experiment=hsdp"], tmp_path)
    assert hsdp.returncode == 0, hsdp.stderr[-3000:]
    assert "sharded (FSDP2) over 1 processes, replicated 2 times (HSDP)" in hsdp.stdout
    (h,) = client.search_runs([client.get_experiment_by_name("hsdp").experiment_id])
    assert max(abs(v - b[s]) for s, v in _losses(client, h.info.run_id).items()) <= 1e-4

    # the logged model, gathered on rank 0, is an ordinary MLflow model that predicts what the run predicted
    _serves_what_it_predicted(client, tracking_uri, f.info.run_id)

    # killed (every process, kill -9) two steps after the sharded checkpoint of step 12, then the same command again
    killed = subprocess.Popen(
        [sys.executable, str(HERE / "kill_driver.py"), "KILL", "14", "run", "imdb", *fsdp, "tracking.experiment=k"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _, err = killed.communicate(timeout=600)
    assert killed.returncode == -9, err[-3000:]
    assert _gone(killed.pid, within=60)  # no rank is left behind waiting for the others
    (link,) = (tmp_path / ".harness" / "runs" / "imdb").glob("*/checkpoints/last.ckpt")
    assert link.is_symlink() and (link / ".metadata").is_file() and len(list(link.glob("*.distcp"))) == 2
    again = _run([*fsdp, "tracking.experiment=k"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout
    (k,) = client.search_runs([client.get_experiment_by_name("k").experiment_id])
    assert k.info.status == "FINISHED" and k.data.tags.get("harness.resumed") == "true"
    resumed = _losses(client, k.info.run_id)
    assert sorted(resumed) == sorted(a)
    assert max(abs(resumed[s] - a[s]) for s in a) <= 1e-5  # the steps after the resume are the uninterrupted run's
    assert abs(k.data.metrics["test_loss"] - f.data.metrics["test_loss"]) <= 1e-5
    assert not link.exists()  # a finished run's checkpoints are removed


@pytest.mark.slow  # four short two-process jobs
def test_bench_shard_halves_each_ranks_training_state_over_two_processes(tiny_model, tmp_path):
    """make bench-shard on the CPU: under DDP each rank holds parameters, gradients and both AdamW moments in full
    (16 bytes a trained parameter); over two FSDP processes each holds half."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import shard_memory

    out = tmp_path / "rows.json"
    assert (
        shard_memory.main(["--device", "cpu", "--models", str(tiny_model), "--ranks", "1,2", "--json", str(out)]) == 0
    )
    rows = {(r["strategy"], r["ranks"]): r for r in json.loads(out.read_text())}
    assert set(rows) == {("ddp", 1), ("fsdp", 1), ("ddp", 2), ("fsdp", 2)}

    def state(r):
        return r["param_bytes"] + r["grad_bytes"] + r["optim_bytes"]

    ddp, fsdp = rows[("ddp", 2)], rows[("fsdp", 2)]
    assert ddp["param_bytes"] == 4 * ddp["parameters"]  # float32, every parameter on every rank
    assert 2 * ddp["grad_bytes"] == pytest.approx(ddp["optim_bytes"], rel=0.01)  # two moments per trained parameter
    assert state(rows[("ddp", 1)]) == state(ddp) == state(rows[("fsdp", 1)])  # one process holds all of it
    assert state(fsdp) == pytest.approx(state(ddp) / 2, rel=0.02)


@pytest.mark.slow  # two two-process runs
def test_lora_trains_sharded_with_ddps_steps_and_logs_its_adapter(data_dir, tiny_model, tracking_uri, tmp_path):
    """Transfer modes wrap the model before it is sharded: LoRA over two FSDP processes takes the steps LoRA under
    DDP takes, trains only the adapter, and its logged adapter predicts what the run predicted."""

    lora = {**COMMON, "model.mode": "lora", "data.train_size": "320", "trainer.max_epochs": "1", "log_model": "true"}
    lora["eval.prediction_text_chars"] = "100000"  # the whole review in the table, so the model sees what the run saw
    for strategy in ("ddp", "fsdp"):
        args = tiny_args(data_dir, tiny_model, tracking_uri, **lora, **{"trainer.strategy": strategy})
        done = _run([*args, f"tracking.experiment=lora-{strategy}"], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    assert "sharded (FSDP2) over 2 processes" in done.stdout
    client = MlflowClient(tracking_uri)
    (d,) = client.search_runs([client.get_experiment_by_name("lora-ddp").experiment_id])
    (f,) = client.search_runs([client.get_experiment_by_name("lora-fsdp").experiment_id])
    a, b = _losses(client, f.info.run_id), _losses(client, d.info.run_id)
    assert sorted(a) == sorted(b) and len(a) >= 4
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-4
    assert abs(f.data.metrics["test_loss"] - d.data.metrics["test_loss"]) <= 1e-4
    # each process held its share of every parameter, frozen ones included; only the adapter trained
    assert f.data.params.get("model.mode") == "lora"
    m = f.data.metrics
    assert 0 < m["params_trainable_pct"] < 5 and m["params_trainable"] == d.data.metrics["params_trainable"]
    assert m["shard_params_per_rank"] == pytest.approx(m["params_total"] / 2, rel=0.01)
    _serves_what_it_predicted(client, tracking_uri, f.info.run_id)

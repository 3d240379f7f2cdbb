"""`make bench-train` smoke test on CPU: both sides train the same tiny model on the same real IMDB rows, and
the throughput table, ratio and MLflow run come out (the GPU numbers are measured on a GPU host)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_bench_train_smoke_on_cpu(data_dir, tiny_model, tracking_uri, capsys):
    import train_throughput

    res = train_throughput.main(
        [
            "--device",
            "cpu",
            "--models",
            "small",
            "--model-path",
            str(tiny_model),
            "--steps",
            "2",
            "--warmup",
            "1",
            "--batch-size",
            "4",
            "--max-length",
            "64",
            "--data-dir",
            str(data_dir),
            "--tracking-uri",
            tracking_uri,
            "--profile-steps",
            "4",
            "--json",
        ]
    )
    for side in ("trainer", "harness"):
        r = res[f"small/{side}"]
        assert r["samples_per_sec"] > 0 and r["tokens_per_sec"] > 0 and 0 < r["mfu"]
        assert 0 <= r["padding_share"] < 1
        # both sides measured the same number of samples: 2 steps of 4
        assert r["samples_per_sec"] * r["seconds"] == pytest.approx(8)
    assert res["small/ratio"] == res["small/harness"]["samples_per_sec"] / res["small/trainer"]["samples_per_sec"]
    out = capsys.readouterr().out
    assert "ratio harness/Trainer" in out and "MFU" in out
    assert re.search(r"peak memory \d+\.\d GB \(limit 8 GB: kept\)", out)
    client = MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("bench-train").experiment_id])[0]
    assert run.data.metrics["small_ratio_samples_per_sec"] == res["small/ratio"]
    assert run.data.metrics["small_harness_mfu"] > 0
    # the step profile: host time and aten operations per optimizer step on the three sides, judged by the goals
    steps = res["step_profile"]
    for side in ("harness", "trainer", "plain"):
        assert steps[side]["host_ms_per_step"] > 0 and steps[side]["aten_ops_per_step"] > 50
        assert "aten::mm" in steps[side]["top_ops_per_step"]  # the model's matmuls are counted on every side
    assert steps["ops_vs_trainer"] == steps["harness"]["aten_ops_per_step"] / steps["trainer"]["aten_ops_per_step"]
    assert "host time/step" in out and run.data.metrics["steps_harness_aten_ops_per_step"] > 50
    last = json.loads(out.strip().splitlines()[-1])  # --json: every result, one object
    assert last["step_profile"]["plain"]["syncs_per_step"] == steps["plain"]["syncs_per_step"]


def test_on_a_cpu_the_shapes_fit_the_memory_a_run_may_take(capsys):
    """BERT-base at the GPU's 32 x 512 took more than 24 GB on a CPU (the OOM killer stopped `make bench-train
    DEVICE=cpu`): on a CPU the shapes are halved until the estimate fits 8 GB, and said; given ones are kept."""
    import argparse

    import train_throughput
    from transformers import BertConfig

    from harness.commands import benchtrain

    args = argparse.Namespace(batch_size=None, max_length=None, models=["bert-base", "small"])
    train_throughput._shapes(args, cuda=False)
    c = BertConfig()
    need = benchtrain.training_bytes(12, 768, 12, 3072, c.vocab_size, args.batch_size, args.max_length)
    assert need <= benchtrain.CPU_MEMORY_LIMIT < benchtrain.training_bytes(12, 768, 12, 3072, c.vocab_size, 32, 512)
    assert f"on a CPU: batch {args.batch_size} x {args.max_length} tokens" in capsys.readouterr().out
    gpu = argparse.Namespace(batch_size=None, max_length=None, models=["bert-base"])
    train_throughput._shapes(gpu, cuda=True)
    assert (gpu.batch_size, gpu.max_length) == (32, 512)
    mine = argparse.Namespace(batch_size=16, max_length=256, models=["bert-base"])
    train_throughput._shapes(mine, cuda=False)
    assert (mine.batch_size, mine.max_length) == (16, 256)

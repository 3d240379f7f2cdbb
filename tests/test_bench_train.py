"""`make bench-train` smoke test on CPU: both sides train the same tiny model on the same real IMDB rows, and
the throughput table, ratio and MLflow run come out (the GPU numbers are measured on a GPU host)."""

from __future__ import annotations

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
    client = MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("bench-train").experiment_id])[0]
    assert run.data.metrics["small_ratio_samples_per_sec"] == res["small/ratio"]
    assert run.data.metrics["small_harness_mfu"] > 0

"""The GPU check's pieces on the CPU: the bundle's model and data (built by scripts/gpu_bundle.py's own functions),
the check's IMDB phases on them, its offline records and `harness sync` turning them into MLflow runs. The bare-host
simulation (a venv with only the image's packages) is `make gpu-sim`, run by CI."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, data_dir):
    import os

    os.environ["HARNESS_DATA_DIR"] = str(data_dir)
    gb = _script("gpu_bundle")
    folder = tmp_path_factory.mktemp("bundle")
    model = gb.build_model(folder / "model", gb.MODEL)
    data = gb.build_data(folder / "data", folder / "model", rows=48)
    manifest = {"model": {"name": gb.MODEL, "folder": "model"}, "data": {**data, "file": "data/imdb.npz.xz"}}
    (folder / "bundle.json").write_text(json.dumps(manifest))
    return {"folder": folder, "model": model, "manifest": manifest, "gb": gb}


@pytest.mark.slow  # builds the GPU bundle (a minute): make test-slow, which CI runs
def test_bundle_holds_bf16_weights_and_the_runs_own_tokens(bundle, data_dir):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from harness.commands.gpucheck import Bundle
    from harness.config import resolve_run_config
    from harness.data.classification import ClassificationDataModule
    from harness.data.sources import load_task_data
    from harness.families.registry import get_task

    b = Bundle.open(bundle["folder"])
    with safe_open(str(b.model_dir / "model.safetensors"), "pt") as f:  # unpacked from the bundle's xz
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    # the same rows and ids as harness run imdb profile=full (with the same subset) would train and test on
    task = get_task("imdb")
    cfg = resolve_run_config(
        task,
        ["profile=full", f"data.data_dir={data_dir}", *[f"data.{s}_size=48" for s in ("train", "validation", "test")]],
    )
    dm = ClassificationDataModule(
        cfg,
        task,
        load_task_data(task, cfg, ("train", "validation", "test")),
        AutoTokenizer.from_pretrained(str(bundle["folder"] / "model")),
    )
    dm.setup()
    for split in ("train", "validation", "test"):
        mine, theirs = b.split(split), dm.encoded[split]
        assert np.array_equal(mine.sequences["input_ids"][0], theirs.sequences["input_ids"][0])
        assert np.array_equal(mine.scalars["label"], theirs.scalars["label"])
        assert bundle["manifest"]["data"]["splits"][split]["digest"] == dm.data[split].digest()
    assert max(np.diff(b.split("train").sequences["input_ids"][1])) <= 512


@pytest.mark.slow  # builds the GPU bundle (a minute): make test-slow, which CI runs
def test_the_weights_travel_compressed_and_unpack_once(bundle, tmp_path):
    """The bf16 weights go in the bundle xz-compressed (the bundle and the checkout travel in one 64 MiB device
    call); the check unpacks them on the host once, to the same bytes."""
    import lzma
    import shutil

    from harness.commands.gpucheck import Bundle

    copy = tmp_path / "bundle"
    shutil.copytree(bundle["folder"], copy, ignore=shutil.ignore_patterns("model.safetensors"))
    packed = copy / "model" / "model.safetensors.xz"
    assert packed.is_file() and not (copy / "model" / "model.safetensors").exists()
    raw = lzma.decompress(packed.read_bytes())
    assert packed.stat().st_size < 0.8 * len(raw)  # about 33 MB of 45
    weights = Bundle.open(copy).model_dir / "model.safetensors"
    assert weights.read_bytes() == raw and not (copy / "model" / "model.safetensors.partial").exists()
    stamp = weights.stat().st_mtime_ns
    Bundle.open(copy).model_dir  # noqa: B018 (a second open leaves the unpacked weights as they are)
    assert weights.stat().st_mtime_ns == stamp


@pytest.mark.slow  # builds the GPU bundle (a minute): make test-slow, which CI runs
def test_a_bf16_checkpoint_trains_in_float32(bundle):
    from harness.commands.gpucheck import Bundle
    from harness.models.classification import SequenceClassifier

    folder = Bundle.open(bundle["folder"]).model_dir
    m = SequenceClassifier(labels=["negative", "positive"], optim={}, model_path=str(folder))
    assert {p.dtype for p in m.model.parameters()} == {torch.float32}


@pytest.mark.slow  # every phase on the CPU (minutes; make gpu-sim runs them too)
def test_check_phases_record_runs_that_sync_into_mlflow(bundle, tmp_path, capsys):
    from harness.commands.gpucheck import main

    out = tmp_path / "out"
    rc = main(
        [
            "--bundle",
            str(bundle["folder"]),
            "--device",
            "cpu",
            "--out",
            str(out),
            "--train-limit",
            "32",
            "--test-limit",
            "40",
            "--max-length",
            "96",
            "--bench-models",
            "small",
            "--kernels",
            "auto,flash,eager",
            "--phases",
            "kernels,bench-train,steps,imdb,imdb-no-bucketing,imdb-b128,imdb-fsdp",
            "trainer.max_epochs=1",
            "eval.bootstrap_resamples=200",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "== gpu-check summary (cpu" in text and "bucketing:" in text and "left out:" in text
    assert "small-b4 ratio harness/Trainer" in text and "goals: not judged" in text
    assert "flash" in text and "efficient" not in text  # the CPU's own flash kernel is measured
    assert (out / "summary.txt").read_text().startswith("== gpu-check summary")
    assert "steps (the default model: per optimizer step)" in text and "harness ops/step = " in text
    # the IMDB phases' clocks apart (training, evaluation, start-up, intervals), no checkpoint written in a timed
    # phase, and the batch size measured as a choice (batch 128 with its scaled learning rate)
    assert re.search(r"imdb +accuracy .* \(batch 32, lr 5e-05\) · train \d+\.\d s \+ evaluate \d+\.\d s \(setup", text)
    assert re.search(r"imdb-b128 +accuracy .* \(batch 128, lr 0\.0001\)", text)
    assert re.search(r"batch choice: (32|128) \(lr [0-9.e-]+\): ", text)
    assert re.search(r"imdb-fsdp +accuracy .* \(batch 32, lr 5e-05\)", text)  # the optional sharded phase
    assert not list((out / "work").rglob("*.ckpt"))
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    for phase in ("kernels", "bench-train", "steps", "imdb", "imdb-no-bucketing", "imdb-b128", "imdb-fsdp"):
        assert run_cli(["sync", str(out / "runs" / phase), "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    bench = {
        r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("bench-train").experiment_id])
    }
    m = bench["gpu-check-bench-train"].data.metrics
    assert m["small-b4_ratio_samples_per_sec"] == pytest.approx(
        m["small-b4_harness_samples_per_sec"] / m["small-b4_trainer_samples_per_sec"]
    )
    assert 0 < m["small-b4_harness_mfu"] and 0 <= m["small-b4_trainer_padding_share"] < 1
    steps = bench["gpu-check-steps"].data.metrics
    assert steps["steps_harness_aten_ops_per_step"] > 0 and steps["steps_plain_host_ms_per_step"] > 0
    assert steps["steps_ops_vs_trainer"] == pytest.approx(
        steps["steps_harness_aten_ops_per_step"] / steps["steps_trainer_aten_ops_per_step"]
    )
    k = bench["gpu-check-kernels"]
    assert k.data.metrics["kernels_auto_speedup"] == 1.0 and "kernels_eager_samples_per_sec" in k.data.metrics
    assert k.data.tags["harness.gpu_check.kept"] in ("defaults", "model.attn_implementation=eager")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("imdb").experiment_id])}
    assert set(runs) == {"gpu-check-imdb", "gpu-check-imdb-no-bucketing", "gpu-check-imdb-b128", "gpu-check-imdb-fsdp"}
    sharded = runs["gpu-check-imdb-fsdp"]  # one process holds every shard: the same parameters, said so
    assert sharded.info.status == "FINISHED" and sharded.data.params["trainer.strategy"] == "fsdp"
    assert sharded.data.metrics["shard_processes"] == 1 and sharded.data.metrics["shard_params_per_rank"] > 0
    on, off = runs["gpu-check-imdb"], runs["gpu-check-imdb-no-bucketing"]
    for r in (on, off):
        m = r.data.metrics
        assert r.info.status == "FINISHED" and m["test_examples"] == 40
        assert m["test_accuracy_ci_low"] <= m["test_accuracy"] <= m["test_accuracy_ci_high"]
        assert (
            r.data.tags["harness.recorded_offline"] == "true" and "MLflow" in r.data.tags["harness.gpu_check.left_out"]
        )
        assert r.data.params["split.train.rows"] == "32" and r.data.params["profile"] == "full"
        # the GPU's path on the CPU: auto holds IMDB's splits on a GPU, so the dry run holds them on the device too
        assert r.data.params["data.resident_splits"] == "train,validation,test"
        summary = json.loads(Path(client.download_artifacts(r.info.run_id, "gpu_check.json")).read_text())
        assert summary["estimates"]["accuracy"][0] == pytest.approx(m["test_accuracy"])
    assert on.data.params["data.bucketing"] == "true" and off.data.params["data.bucketing"] == "false"
    # the same rows either way: without bucketing only the batch composition differs
    assert on.data.tags["split.test.digest"] == off.data.tags["split.test.digest"]


def test_check_without_a_bundle_says_how_to_make_one(tmp_path, capsys):
    from harness.commands.gpucheck import main

    assert main(["--bundle", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "holds no GPU check bundle" in err and "make gpu-bundle" in err


def test_offline_record_syncs_once_and_refuses_a_second_recording(tmp_path):
    from harness.tracking.offline import OfflineRun

    rec = OfflineRun(tmp_path / "rec", "offline-exp", "offline-run", {"k": "v"})
    rec.log_params({"a": 1})
    rec.log_metrics({"m": 0.5}, step=3)
    rec.end()
    with pytest.raises(FileExistsError):
        OfflineRun(tmp_path / "rec", "offline-exp", "again")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert run_cli(["sync", str(tmp_path / "rec"), "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("offline-exp").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params == {"a": "1"} and run.data.tags["k"] == "v"
    assert [(x.step, x.value) for x in client.get_metric_history(run.info.run_id, "m")] == [(3, 0.5)]
    assert run_cli(["sync", str(tmp_path / "rec"), "--tracking-uri", uri]) == 0  # nothing left: no second run
    assert len(client.search_runs([client.get_experiment_by_name("offline-exp").experiment_id])) == 1


def _fake_side(rates: dict, fit_extra: dict):
    """harness_side standing in for a GPU: samples/s per variant (by its overrides), warm-up seconds per variant."""

    def side(model_dir, rows, spec):
        key = " ".join(spec.extra) or "auto"
        if rates.get(key) is None:
            raise RuntimeError("No available kernel. Aborting execution.\nmore lines")
        return {"samples_per_sec": rates[key], "seconds": 10.0, "fit_seconds": 12.0 + fit_extra.get(key, 0.0)}

    return side


@pytest.mark.parametrize(
    "compile_rate, compile_warmup, graphs_rate, kept",
    [
        (1300.0, 10.0, None, ["model.sdpa_backend=efficient", "trainer.compile=true"]),  # saves 14 s, costs 10 s
        (1300.0, 60.0, None, ["model.sdpa_backend=efficient"]),  # faster, but compiling costs more than it saves
        (1110.0, 1.0, None, ["model.sdpa_backend=efficient"]),  # within the 3% margin: not kept
        # CUDA graphs on top save more than plain compiling, for the same compile time: they are kept instead
        (1300.0, 10.0, 1600.0, ["model.sdpa_backend=efficient", "trainer.compile=reduce-overhead"]),
    ],
)
def test_kernel_choices_are_kept_only_where_they_help(monkeypatch, compile_rate, compile_warmup, graphs_rate, kept):
    from harness.commands import benchtrain

    rates = {
        "auto": 1000.0,
        "model.sdpa_backend=efficient": 1100.0,  # 10% faster: kept
        "model.sdpa_backend=cudnn": 1020.0,
        "model.sdpa_backend=flash": None,  # cannot run with a padding mask
        "model.sdpa_backend=math": 600.0,
        "model.attn_implementation=eager": 700.0,
        "model.sdpa_backend=efficient trainer.compile=true": compile_rate,
        "model.sdpa_backend=efficient trainer.compile=reduce-overhead": graphs_rate,
    }
    warm = {
        "model.sdpa_backend=efficient trainer.compile=true": compile_warmup,
        "model.sdpa_backend=efficient trainer.compile=reduce-overhead": compile_warmup,
    }
    monkeypatch.setattr(benchtrain, "harness_side", _fake_side(rates, warm))
    spec = benchtrain.BenchSpec(device="cuda")
    k = benchtrain.measure_kernels(Path("m"), None, spec, list(benchtrain.VARIANTS), 50_000 * 2, say=lambda s: None)
    assert k["kept"] == kept
    v = k["variants"]
    assert v["flash"]["error"] == "RuntimeError: No available kernel. Aborting execution."
    assert v["efficient"]["speedup"] == pytest.approx(1.1) and v["auto"]["speedup"] == 1.0
    # compiling's cost: its warm-up beyond the reference's; its gain: the planned samples at the two rates
    assert v["compile"]["overhead_seconds"] == pytest.approx(compile_warmup)
    assert v["compile"]["saved_seconds"] == pytest.approx(100_000 * (1 / 1100 - 1 / compile_rate))
    assert "kept: " + (" ".join(kept)) in benchtrain.kernels_line(k)


def test_on_a_cpu_the_cuda_kernel_choice_is_not_measured(monkeypatch):
    from harness.commands import benchtrain

    monkeypatch.setattr(
        benchtrain, "harness_side", _fake_side({"auto": 10.0, "model.attn_implementation=eager": 10.1}, {})
    )
    spec = benchtrain.BenchSpec(device="cpu")
    k = benchtrain.measure_kernels(Path("m"), None, spec, ["auto", "efficient", "cudnn", "eager"], 10)
    assert k["variants"]["efficient"] == {"skipped": "a CUDA kernel (the CPU's attention has flash and math)"}
    assert "cudnn" in k["variants"] and "skipped" in k["variants"]["cudnn"]
    assert k["kept"] == []  # eager: 1% faster, inside the margin


def test_a_kernel_that_cannot_run_is_one_line_for_a_user_run():
    from harness.errors import user_error

    err = user_error(RuntimeError("No available kernel. Aborting execution."))
    assert err is not None and "model.sdpa_backend=auto" in err.message


def test_the_summary_judges_the_goals_on_a_gpu_only():
    from harness.commands.gpucheck import goals

    def side(rate, mfu):
        return {"samples_per_sec": rate, "mfu": mfu}

    done = {
        "bench-train": {
            "results": {
                "bert-base-b32": {
                    "batch_size": 32,
                    "trainer": side(447.0, 0.08),
                    "harness": side(900.0, 0.17),
                    "plain": side(705.0, 0.15),
                    "ratio": 900 / 447,
                    "ratio_plain": 900 / 705,
                },
                "bert-base-b128": {"batch_size": 128, "trainer": side(669.0, 0.13), "harness": side(1600.0, 0.31)}
                | {"ratio": 1600 / 669},
                "small-b32": {"batch_size": 32, "trainer": side(816.0, 0.02), "harness": side(1224.0, 0.03)}
                | {"ratio": 1.5},
            }
        },
        # the clock the goal reads: training plus evaluation (start-up and the host's bootstrap are told apart)
        "imdb": {
            "estimates": {"accuracy": [0.9312, 0.9281, 0.9343]},
            "wall_seconds": 41.0,
            "fit_seconds": 24.0,
            "test_seconds": 5.0,
            "batch_size": 32,
            "test_examples": 25000,
        },
    }
    line = goals(done, "cuda")
    assert "bert-base-b32 2.01x the Trainer met" in line and "bert-base-b32 1.28x the plain loop met" in line
    assert "small-b32 1.50x the Trainer MISSED" in line and "bert-base-b128 MFU 31.0% met" in line
    assert "bert-base-b128" not in line.split("MFU")[0]  # batch 128 is judged on MFU, not on the ratio
    assert "imdb (batch 32) 0.9312 [0.9281, ...] on 25,000 in 29.0 s of training and evaluation met" in line
    done["imdb"]["fit_seconds"] = 26.0
    assert "in 31.0 s of training and evaluation MISSED" in goals(done, "cuda")
    # the larger batch, faster and as accurate, is the one judged
    done["imdb-b128"] = {**done["imdb"], "fit_seconds": 14.0, "batch_size": 128}
    assert "imdb (batch 128) 0.9312 [0.9281, ...] on 25,000 in 19.0 s of training and evaluation met" in goals(
        done, "cuda"
    )
    del done["imdb-b128"]
    done["imdb"]["fit_seconds"], done["imdb"]["estimates"]["accuracy"][1] = 24.0, 0.9250  # the interval fell
    assert "in 29.0 s of training and evaluation MISSED" in goals(done, "cuda")
    assert goals(done, "cpu").startswith("goals: not judged")


@pytest.mark.slow  # builds the GPU bundle (a minute): make test-slow, which CI runs
def test_a_failing_phase_is_recorded_and_the_next_ones_still_run(bundle, tmp_path, capsys, monkeypatch):
    """The first GPU run lost everything to one exception in its first phase, and a second run into the same folder
    raised FileExistsError: now the failure is a FAILED record with its one-line error and traceback, the other
    phases run, the exit status says so, and a rerun keeps the earlier records beside the new ones."""
    from harness.commands import gpucheck

    real = gpucheck.run_phase

    def flaky(bundle_, name, *args, **kwargs):
        if name == "imdb":
            raise RuntimeError("The current optimizer, AdamW, does not allow for gradient clipping\nsecond line")
        return real(bundle_, name, *args, **kwargs)

    monkeypatch.setattr(gpucheck, "run_phase", flaky)
    out = tmp_path / "out"
    argv = [
        "--bundle",
        str(bundle["folder"]),
        "--device",
        "cpu",
        "--out",
        str(out),
        "--phases",
        "imdb,imdb-no-bucketing",
    ]
    argv += ["--train-limit", "32", "--test-limit", "40", "--max-length", "64", "trainer.max_epochs=1"]
    assert gpucheck.main(argv) == 1
    text = capsys.readouterr().out
    line = "RuntimeError: The current optimizer, AdamW, does not allow for gradient clipping"
    assert f"   imdb FAILED: {line} (traceback: {out / 'errors' / 'imdb.txt'})" in text
    assert f"FAILED imdb: {line}" in text and "imdb-no-bucketing" in text.split("== gpu-check summary")[1]
    assert "goals: not judged (they are set for a GPU; this was a dry run on the CPU); not judged: imdb failed" in text
    assert "second line" in (out / "errors" / "imdb.txt").read_text()  # the whole traceback, kept
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    for phase in ("imdb", "imdb-no-bucketing"):
        assert run_cli(["sync", str(out / "runs" / phase), "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("imdb").experiment_id])}
    assert runs["gpu-check-imdb"].info.status == "FAILED" and runs["gpu-check-imdb"].data.tags["harness.error"] == line
    assert runs["gpu-check-imdb-no-bucketing"].info.status == "FINISHED"
    # a rerun into the same folder (the failed record not synced yet this time): both records are kept
    out2 = tmp_path / "out2"
    argv2 = [*argv[:5], str(out2), *argv[6:]]
    argv2[argv2.index("imdb,imdb-no-bucketing")] = "imdb"
    assert gpucheck.main(argv2) == 1
    assert gpucheck.main(argv2) == 1
    text = capsys.readouterr().out
    kept = [p.name for p in (out2 / "runs").iterdir()]
    assert len(kept) == 2 and "imdb" in kept and "the earlier record of imdb is kept as" in text


@pytest.mark.slow
def test_the_full_bundle_and_the_checkout_fit_one_device_call(data_dir, tmp_path):
    """A device call carries the checkout's tracked files and the bundle, 64 MiB in all: the full bundle (every
    IMDB row, the model, the wheels) and the tracked tree together stay within 56 MiB (the build refuses more)."""
    import os
    import re

    from harness.paths import project_root

    done = subprocess.run(
        [sys.executable, str(project_root() / "scripts" / "gpu_bundle.py"), "--dest", str(tmp_path / "b")],
        env={**os.environ, "HARNESS_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    m = re.search(r"(\d+\.\d+) MiB  with the checkout's tracked files \((\d+\.\d+)( MiB)?; budget 56\)", done.stdout)
    assert m and float(m.group(1)) <= 56.0, done.stdout[-2000:]
    assert (tmp_path / "b" / "model" / "model.safetensors.xz").is_file()

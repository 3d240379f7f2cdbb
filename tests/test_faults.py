"""The fault suite: what a user gets wrong, and what goes wrong around them, each checked the same way.

Every case runs the real command (in this process, or as a subprocess where signals or resource limits are involved)
with tiny settings against one MLflow store that already holds a finished run, and asserts: the exit code, exactly
one `error:` line that names the thing and says what to do (compared whole), no traceback anywhere in the output,
the run marked FAILED with that message as its `error` tag where a run had started, and every run recorded before
unchanged.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import free_port, in_dir, run_cli
from mlflow.tracking import MlflowClient

from harness.config import DataConfig, TrainerConfig
from harness.families.registry import registry

HERE = Path(__file__).resolve().parent


# ---- the store, the data, and how a case is judged -------------------------------------------------------------------


@dataclass
class Store:
    work: Path
    uri: str
    data: Path  # a data dir with real IMDB rows (both labels)
    finished: str  # the run recorded before any fault


def _write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _args(store: Store, model: Path | str, data: Path | None = None, **extra: str) -> list[str]:
    base = {
        "model.name": str(model),
        "data.data_dir": str(data or store.data),
        "data.train_size": "48",
        "data.validation_size": "16",
        "data.test_size": "32",
        "data.max_length": "32",
        "trainer.precision": "32-true",
        "trainer.log_every_n_steps": "2",
        "tracking.tracking_uri": store.uri,
        "tracking.system_metrics": "false",
        "eval.bootstrap_resamples": "100",
        "profile": "quick",
        **extra,
    }
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def store(tmp_path_factory, data_dir, tiny_model) -> Store:
    work = tmp_path_factory.mktemp("faults")
    data = work / "data"
    for split, n in (("train", 600), ("test", 50)):  # train: enough for the task's 1,000-row validation split
        with gzip.open(data_dir / f"sentiment/imdb/{split}.jsonl.gz", "rt") as f:
            rows = [json.loads(line) for line in f]
        _write_jsonl_gz(data / f"sentiment/imdb/{split}.jsonl.gz", rows[:n] + rows[-n:])
    uri = f"sqlite:///{work / 'mlruns.db'}"
    with in_dir(work):
        s = Store(work, uri, data, "")
        assert run_cli(["run", "imdb", *_args(s, tiny_model), "log_model=true"]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("imdb").experiment_id])
    s.finished = run.info.run_id
    return s


def _snapshot(uri: str) -> dict[str, tuple]:
    client = MlflowClient(uri)
    out = {}
    for exp in client.search_experiments():
        for r in client.search_runs([exp.experiment_id]):
            out[r.info.run_id] = (r.info.status, r.data.metrics, r.data.params, r.data.tags)
    return out


@dataclass
class Outcome:
    rc: int
    error: str  # the one error line, without "error: "
    new_runs: dict  # run id -> (status, metrics, params, tags) of the runs the command made
    output: str


def judge(store: Store, rc: int, out: str, err: str, before: dict) -> Outcome:
    assert "Traceback" not in out + err, (out + err)[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == (1 if rc not in (0, 130, 143) else 0), err[-3000:]
    after = _snapshot(store.uri)
    for run_id, was in before.items():
        assert after[run_id] == was, f"run {run_id} changed"
    return Outcome(
        rc,
        errors[0][len("error: ") :] if errors else "",
        {r: after[r] for r in after.keys() - before.keys()},
        out + err,
    )


def attempt(store: Store, capsys, args: list[str]) -> Outcome:
    before = _snapshot(store.uri)
    capsys.readouterr()
    with in_dir(store.work):
        rc = run_cli(args)
    captured = capsys.readouterr()
    return judge(store, rc, captured.out, captured.err, before)


def failed_run(outcome: Outcome) -> dict:
    """The one run the command started: FAILED, its `error` tag the message printed, no test metric."""
    assert len(outcome.new_runs) == 1, outcome.new_runs
    ((status, metrics, _, tags),) = outcome.new_runs.values()
    assert status == "FAILED" and tags["error"] == outcome.error
    assert not [k for k in metrics if k.startswith("test_")]
    return tags


def no_run(outcome: Outcome) -> None:
    assert outcome.new_runs == {}


# ---- 1. the command line and the config: refused before anything starts ----------------------------------------------


def test_unknown_task(store, capsys):
    o = attempt(store, capsys, ["run", "imbd"])
    known = ", ".join(sorted(registry()))
    assert (o.rc, o.error) == (2, f"unknown task 'imbd' — known tasks: {known} (see `harness ls`)")
    no_run(o)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "trainer.max_epoch=2",
            "override 'trainer.max_epoch=2': unknown config key 'trainer.max_epoch' — allowed "
            "keys at 'trainer': " + ", ".join(sorted(TrainerConfig.model_fields)),
        ),
        (
            "data.batch_size=many",
            "override 'data.batch_size=many': bad value 'many' for 'data.batch_size': Input "
            "should be a valid integer, unable to parse string as an integer — fix that value (see "
            "docs/configuration.md)",
        ),
        (
            "trainer.precision=fp8",
            "override 'trainer.precision=fp8': bad value 'fp8' for 'trainer.precision': "
            "unknown precision; use one of auto, 32-true, bf16-mixed, 16-mixed, bf16-true, 16-true, 64-true — fix that "
            "value (see docs/configuration.md)",
        ),
        (
            "generation.prompt=nosource",
            "override 'generation.prompt=nosource': 'generation': generation.prompt must "
            "contain {source} — fix that value (see docs/configuration.md)",
        ),
        (
            "data.max_len=3",
            "override 'data.max_len=3': unknown config key 'data.max_len' — allowed keys at 'data': "
            + ", ".join(sorted(DataConfig.model_fields)),
        ),
    ],
)
def test_bad_override(store, capsys, tiny_model, override, message):
    o = attempt(store, capsys, ["run", "imdb", *_args(store, tiny_model), override])
    assert (o.rc, o.error) == (2, message)
    no_run(o)


def test_gpu_asked_for_on_a_machine_without_one(store, capsys, tiny_model):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    o = attempt(store, capsys, ["run", "imdb", *_args(store, tiny_model), "trainer.accelerator=gpu"])
    assert (o.rc, o.error) == (
        2,
        "trainer.accelerator=gpu, but torch sees no CUDA device on this machine — use "
        "trainer.accelerator=auto (a GPU where there is one, else the CPU) or cpu",
    )
    no_run(o)


def test_eval_told_to_train(store, capsys, tiny_model):
    o = attempt(
        store, capsys, ["eval", "imdb", "--model", str(tiny_model), *_args(store, tiny_model)[1:], "train=true"]
    )
    assert (o.rc, o.error) == (
        2,
        "`harness eval` evaluates without training, but override 'train=true' asks to "
        "train — drop it, or use `harness run <task> model.name=...` to fine-tune and "
        "evaluate",
    )
    no_run(o)


def test_score_with_an_unknown_metric(store, capsys):
    o = attempt(store, capsys, ["score", "meteor", "--predictions", "p.txt", "--references", "r.txt"])
    assert (o.rc, o.error) == (
        2,
        "`harness score` knows no metric or task 'meteor' — score with a metric (rouge, "
        "bleu, chrf) or a QA task (squad, squad_v2)",
    )


def test_score_reads_any_system_output_as_plain_text(store, capsys, tmp_path):
    """sacreBLEU's convention: a file that is not JSON is plain text, one segment per line, whatever its name."""
    hyp, ref = tmp_path / "newstest2016.en-ro.output", tmp_path / "newstest2016.en-ro.ro"
    hyp.write_text("the cat sat on the mat\nthere is a cat\n")
    ref.write_text("the cat sat on the mat\na cat is there\n")
    o = attempt(store, capsys, ["score", "bleu", "--predictions", str(hyp), "--references", str(ref), "--json"])
    assert o.rc == 0 and json.loads(o.output.strip().splitlines()[-1])["bleu"] > 0


def test_tune_with_a_missing_database_driver(store, capsys, tiny_model):
    o = attempt(
        store,
        capsys,
        [
            "tune",
            "imdb",
            "--trials",
            "1",
            "--storage",
            "postgresql://tuner:s3cret@127.0.0.1:9/s",
            *_args(store, tiny_model),
        ],
    )
    assert o.rc == 2 and o.error.startswith("cannot open the study storage postgresql://tuner:***@127.0.0.1:9/s")
    assert "s3cret" not in o.output
    no_run(o)


# ---- 2. the tracking store: checked in seconds, named with its password masked, left untouched -----------------------


def _store_case(store: Store, capsys, tiny_model, uri: str) -> Outcome:
    started = time.monotonic()
    o = attempt(store, capsys, ["run", "imdb", *_args(store, tiny_model), f"tracking.tracking_uri={uri}"])
    assert time.monotonic() - started < 60  # not MLflow's minutes of retries (a guard, not a speed goal)
    assert o.rc == 2 and "s3cret" not in o.output
    no_run(o)
    return o


def test_unreachable_tracking_server(store, capsys, tiny_model):
    port = free_port()  # nothing listens here
    o = _store_case(store, capsys, tiny_model, f"http://bob:s3cret@127.0.0.1:{port}")
    assert o.error == (
        f"cannot use the tracking store http://bob:***@127.0.0.1:{port}: the server is not reachable "
        "([Errno 111] Connection refused) — start it (mlflow server ..., or make "
        "server), or point MLFLOW_TRACKING_URI (or tracking.tracking_uri) at a store that works; "
        "sqlite:///mlruns.db needs no server"
    )


@contextlib.contextmanager
def _slow_server(slow_requests: int, delay: float):
    """An HTTP server whose first `slow_requests` requests are answered after `delay` seconds (a busy MLflow server)."""
    import http.server
    import threading

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            if len(seen) <= slow_requests:
                time.sleep(delay)
            with contextlib.suppress(OSError):  # the client gave up on a late answer
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_busy_tracking_server_is_waited_for_not_called_unreachable():
    """CI once saw eight tuning workers' check time out on a server busy with their logging: a server that accepts the
    connection but answers late is asked again (within a bound), not reported as unreachable."""
    from harness.tracking.store import check_store

    with _slow_server(slow_requests=2, delay=1.5) as (url, seen):
        check_store(url, timeout=0.5, busy=10)
    assert seen.count("/health") == 3 and seen[-1].startswith("/api/2.0/mlflow/experiments/search")


def test_a_stuck_tracking_server_is_named_after_the_bound():
    from harness.errors import TrackingError
    from harness.tracking.store import check_store

    with _slow_server(slow_requests=100, delay=3) as (url, _):
        started = time.monotonic()
        with pytest.raises(TrackingError) as e:
            check_store(url, timeout=0.5, busy=2)
    assert time.monotonic() - started < 10
    said = f"cannot use the tracking store {url}: the server did not answer /health (asked for "
    assert str(e.value).startswith(said)
    assert "mlflow server --workers N" in str(e.value)


def test_corrupt_sqlite_store_is_named_and_left_as_it_is(store, capsys, tiny_model, tmp_path):
    db = tmp_path / "mlruns.db"
    db.write_bytes(b"not a database, but somebody's notes\n" * 40)
    content = db.read_bytes()
    o = _store_case(store, capsys, tiny_model, f"sqlite:///{db}")
    assert o.error == (
        f"cannot use the tracking store sqlite:///{db}: {db} is not an SQLite database (damaged, or "
        "another kind of file) — restore it from a backup, or point the store at another file; it was "
        "left as it is"
    )
    assert db.read_bytes() == content


def test_missing_database_driver_for_the_store(store, capsys, tiny_model):
    o = _store_case(store, capsys, tiny_model, "mysql://bob:s3cret@127.0.0.1:9/mlflow")  # mysqlclient: not installed
    assert o.error.startswith(
        "cannot use the tracking store mysql://bob:***@127.0.0.1:9/mlflow: its database "
        "driver is not installed (No module named "
    )
    assert "pip install pymysql" in o.error


@contextlib.contextmanager
def _read_only(folder: Path, fill: Any):
    """A tmpfs at `folder`, filled by `fill(folder)`, then remounted read-only (which stops root too)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a filesystem here to make read-only ({mounted.stderr.decode().strip()[:120]})")
    try:
        fill(folder)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_read_only_sqlite_store(store, capsys, tiny_model, tmp_path):
    """The store's file on a read-only filesystem (which stops root too): named, nothing written."""
    db = tmp_path / "ro" / "mlruns.db"
    with _read_only(db.parent, lambda f: shutil.copy(store.work / "mlruns.db", db)):
        before = db.read_bytes()
        o = _store_case(store, capsys, tiny_model, f"sqlite:///{db}")
        assert o.error == (
            f"cannot use the tracking store sqlite:///{db}: {db} is read-only (runs cannot be "
            f"recorded) — make {db} writable, or point MLFLOW_TRACKING_URI (or tracking.tracking_uri) "
            "at a store that works; sqlite:///mlruns.db needs no server"
        )
        assert db.read_bytes() == before


def test_sqlite_store_locked_by_another_process(store, capsys, tiny_model, tmp_path):
    """Another process holds the store's write lock (a long query, a stuck writer): named as such after the wait,
    not as a damaged file; nothing written, and the same command works once the lock is gone."""
    db = tmp_path / "mlruns.db"
    shutil.copy(store.work / "mlruns.db", db)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        o = _store_case(store, capsys, tiny_model, f"sqlite:///{db}")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert o.error == (
        f"cannot use the tracking store sqlite:///{db}: {db} is locked by another process (waited 5 s) — let the "
        "other writer finish (a long query in an MLflow UI, another run) and run the same command again; for "
        "several writers at once use a tracking server (make server, then MLFLOW_TRACKING_URI)"
    )
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (1,)


# ---- data: the run starts, then stops on the file and the row, FAILED ------------------------------------------------


def _corrupt(store: Store, tmp_path: Path, content: bytes, split: str = "test") -> tuple[Path, Path]:
    data = tmp_path / "data"
    shutil.copytree(store.data, data)
    path = data / f"sentiment/imdb/{split}.jsonl.gz"
    path.write_bytes(content)
    return data, path


def _gz(text: str | bytes) -> bytes:
    return gzip.compress(text.encode("utf-8") if isinstance(text, str) else text)


@pytest.mark.parametrize(
    "content, message",
    [
        (
            b"\x1f\x8b\x08\x00garbage that is not deflate",
            "{path}: not a readable gzip file (its compressed data is damaged: Error -3 while decompressing data: "
            "invalid code lengths set) — re-create it with gzip, or give the uncompressed file",
        ),
        (_gz(""), "{path}: the file is empty — use a file with rows in the task's schema"),
        (
            _gz(b'{"text": "fine", "label": 1}\n{"text": "caf\xe9 cr\xe8me", "label": 0}\n'),
            "{path}: row 2: field 'text' is not valid UTF-8 text — save the file as UTF-8 (e.g. iconv -f latin1 -t "
            "utf-8 old > new)",
        ),
        (
            _gz('{"text": "fine", "label": 1}\n{"text": "broken, "label": 0}\n'),
            "{path}: line 2 is not valid JSON (Expecting ',' delimiter at column 20) — fix that line: one JSON object "
            "per line",
        ),
        (
            _gz('{"text": "fine", "label": 1}\n{"text": 1234, "label": 0}\n'),
            "{path}: row 2: field 'text' holds 1234 (int), but the task's `text` must be text — put text there (in "
            "JSON, a string in quotes)",
        ),
        (
            _gz('{"text": "fine", "label": 1}\n{"review": "no text field", "label": 0}\n'),
            "{path}: row 2 has no value for field 'text' — fill in or remove that row",
        ),
        (
            _gz('{"text": "fine", "label": 1}\n{"text": "a third class", "label": 2}\n'),
            "{path}: row 2 has label 2, outside the task's label set 0..1 (negative, positive) — fix the label, or "
            "list it in the task's `labels`",
        ),
    ],
    ids=["gzip-garbage", "empty", "not-utf8", "broken-json-line", "number-as-text", "missing-field", "bad-label"],
)
def test_bad_data_file(store, capsys, tiny_model, tmp_path, content, message):
    data, path = _corrupt(store, tmp_path, content)
    o = attempt(store, capsys, ["run", "imdb", *_args(store, tiny_model, data)])
    assert (o.rc, o.error) == (2, message.format(path=path))
    failed_run(o)


def test_bad_data_file_given_to_eval(store, capsys, tiny_model, tmp_path):
    bad = tmp_path / "mine.jsonl"
    bad.write_bytes(b'{"text": "ok", "label": "positive"}\n{"text": "caf\xe9", "label": "negative"}\n')
    o = attempt(
        store,
        capsys,
        ["eval", "imdb", "--model", f"runs:/{store.finished}", "--data", str(bad), *_args(store, tiny_model)[1:]],
    )
    assert (o.rc, o.error) == (
        2,
        f"{bad}: row 2: field 'text' is not valid UTF-8 text — save the file as UTF-8 "
        "(e.g. iconv -f latin1 -t utf-8 old > new)",
    )
    failed_run(o)


def test_missing_data_dir(store, capsys, tiny_model, tmp_path):
    o = attempt(store, capsys, ["run", "imdb", *_args(store, tiny_model, tmp_path / "nowhere")])
    assert o.rc == 2 and o.error.startswith(f"task 'imdb': split 'train' not found; looked in: {tmp_path}/nowhere/")
    failed_run(o)


# ---- models: unknown, weightless, unsafe, too short for the data, code that comes with them --------------------------


def test_unknown_model_offline(store, capsys):
    o = attempt(store, capsys, ["run", "imdb", *_args(store, "someorg/no-such-model")])
    assert o.rc == 2 and o.error.startswith(
        "model 'someorg/no-such-model' is not in the local cache and "
        "HF_HUB_OFFLINE is set — point model.name at a local directory"
    )
    failed_run(o)


def test_unknown_mlflow_run_as_model(store, capsys, tiny_model):
    o = attempt(store, capsys, ["eval", "imdb", "--model", "runs:/0123456789abcdef", *_args(store, tiny_model)[1:]])
    assert (o.rc, o.error) == (
        2,
        f"MLflow run '0123456789abcdef' not found in tracking store {store.uri} — check the "
        "run id (harness prints it at the end of a run) and MLFLOW_TRACKING_URI",
    )
    failed_run(o)


def test_evaluating_untrained_weights(store, capsys, tiny_model):
    o = attempt(store, capsys, ["eval", "imdb", "--model", str(tiny_model), *_args(store, tiny_model)[1:]])
    assert (o.rc, o.error) == (
        2,
        f"model '{tiny_model}' has untrained weights (classifier.bias, classifier.weight), "
        "and train=false evaluates it as is — evaluate a fine-tuned model (runs:/<run_id>, a "
        "saved folder or a .ckpt), or set train=true",
    )
    failed_run(o)


class _Payload:
    """Unpickling this would run a shell command: what a malicious weights file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


UNSAFE = (
    "the weights were refused as unsafe: the file holds pickled Python objects (posix.system) that only an "
    "unsafe load would run — use the model's safetensors weights (model.safetensors), or convert them to "
    "safetensors where you trust their source"
)


def test_unsafe_pickled_weights_are_refused_unread(store, capsys, tiny_model, tmp_path):
    folder = tmp_path / "evil"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    torch.save({"x": _Payload(tmp_path / "pwned")}, folder / "pytorch_model.bin")
    o = attempt(store, capsys, ["run", "imdb", *_args(store, folder)])
    assert (o.rc, o.error) == (2, f"{folder}: {UNSAFE}")
    assert "weights_only" not in o.output
    assert not (tmp_path / "pwned").exists()
    failed_run(o)


def test_unsafe_checkpoint_is_refused_unread(store, capsys, tiny_model, tmp_path):
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": {"model_path": str(tiny_model)}, "x": _Payload(tmp_path / "pwned")}, ckpt)
    o = attempt(store, capsys, ["eval", "imdb", "--model", str(ckpt), *_args(store, tiny_model)[1:]])
    assert (o.rc, o.error) == (2, f"{ckpt}: {UNSAFE}")
    assert not (tmp_path / "pwned").exists()
    failed_run(o)


def test_unsafe_checkpoint_in_torchs_legacy_format_is_refused_as_unsafe(store, capsys, tiny_model, tmp_path):
    """A raw-pickle .ckpt (torch's legacy format, which cannot be memory-mapped): refused as unsafe, in those words,
    not with torch's mmap message."""
    ckpt = tmp_path / "legacy.ckpt"
    torch.save(
        {"hyper_parameters": {"model_path": str(tiny_model)}, "x": _Payload(tmp_path / "pwned")},
        ckpt,
        _use_new_zipfile_serialization=False,
    )
    o = attempt(store, capsys, ["eval", "imdb", "--model", str(ckpt), *_args(store, tiny_model)[1:]])
    assert (o.rc, o.error) == (2, f"{ckpt}: {UNSAFE}")
    assert "mmap" not in o.output and not (tmp_path / "pwned").exists()
    failed_run(o)


def test_model_folder_without_weights(store, capsys, tiny_model, tmp_path):
    folder = tmp_path / "weightless"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    o = attempt(store, capsys, ["run", "imdb", *_args(store, folder)])
    assert (o.rc, o.error) == (
        2,
        f"{folder} holds no weights (no model.safetensors or pytorch_model.bin beside its config) — save the model "
        "there with save_pretrained, or point model.name at a folder that has its weights",
    )
    failed_run(o)


def test_model_that_needs_its_own_code(store, capsys, tiny_model, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="my-bert", auto_map={"AutoConfig": "modeling.MyConfig", "AutoModel": "modeling.My"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w').close()\n")
    o = attempt(store, capsys, ["run", "imdb", *_args(store, folder)])
    assert (o.rc, o.error) == (
        2,
        f"model '{folder}' needs Python code of its own to load (a custom architecture), "
        "and harness never runs code that comes with a model — use a model whose "
        "architecture transformers ships (its config.json names a known model_type)",
    )
    assert not (tmp_path / "pwned").exists()
    failed_run(o)


def test_max_length_beyond_the_models_positions(store, capsys, tiny_model):
    o = attempt(store, capsys, ["run", "imdb", *_args(store, tiny_model, **{"data.max_length": "1024"})])
    assert (o.rc, o.error) == (
        2,
        f"data.max_length=1024 is longer than model '{tiny_model}' can read: 512 positions "
        "(bert, max_position_embeddings) — set data.max_length to 512 or less",
    )
    failed_run(o)


# ---- health during training: a diverged run fails, it is never a result ----------------------------------------------


def test_diverged_training_fails_without_test_metrics(store, capsys, tiny_model):
    o = attempt(store, capsys, ["run", "imdb", *_args(store, tiny_model, **{"optim.lr": "1e10"})])
    assert o.rc == 2
    assert re.fullmatch(
        r"training diverged: the (loss|gradients) became NaN or infinite at step \d+ — likely cause: the learning "
        r"rate is far too high for fine-tuning \(optim\.lr=1e\+10; try 1e-5 to 1e-4\)\. No test metrics were "
        r"computed from the diverged model",
        o.error,
    ), o.error
    failed_run(o)


# ---- the disk: checkpoints are whole or absent; a failed write is one line, and the run can go on later --------------


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_checkpoint_that_cannot_be_written(store, tiny_model, tmp_path):
    """Files may not grow past 8 MB (as on a full disk, writes fail; the tiny model's checkpoint is about 12 MB):
    the checkpoint write fails cleanly, no partial file is left, the run is FAILED naming the file; without the limit,
    the same command runs to the end."""
    args = ["run", "imdb", *_args(store, tiny_model, **{"trainer.checkpoint_every_n_steps": "2"})]
    before = _snapshot(store.uri)
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size(8 << 20),
    )
    o = judge(store, proc.returncode, proc.stdout, proc.stderr, before)
    ckpt_dir = next((tmp_path / ".harness/runs/imdb").glob("*/checkpoints"))
    assert o.rc == 2 and re.fullmatch(
        rf"could not write the checkpoint {re.escape(str(ckpt_dir))}/last\.ckpt: the write failed \(.*\); the "
        r"previous checkpoint, if any, is kept — free some space or point tracking\.output_dir at a disk with room, "
        r"then run the same command again \(it resumes from the last complete checkpoint\)",
        o.error,
    ), o.error
    assert list(ckpt_dir.iterdir()) == []  # no half-written file, no temporary left behind
    failed_run(o)
    with in_dir(tmp_path):
        assert run_cli(args) == 0


def test_disk_full_is_named_as_such():
    from harness.run.checkpoints import write_error

    e = write_error(Path("/data/out/last.ckpt"), OSError(28, "No space left on device"))
    assert e.message.startswith("could not write the checkpoint /data/out/last.ckpt: no space left on the device;")


def test_damaged_checkpoint_is_not_resumed_from(store, capsys, tiny_model, tmp_path):
    """A run killed hard leaves its checkpoint; if that file is damaged later, the same command says so and starts
    over in a new run (the old one is closed FAILED) instead of dying on it every time."""
    args = [
        "run",
        "imdb",
        *_args(store, tiny_model, **{"data.train_size": "96", "trainer.checkpoint_every_n_steps": "2"}),
    ]
    before = _snapshot(store.uri)
    proc = subprocess.run(
        [sys.executable, str(HERE / "kill_driver.py"), "KILL", "4", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL
    (ckpt,) = (tmp_path / ".harness/runs/imdb").glob("*/checkpoints/last.ckpt")
    ckpt.write_bytes(ckpt.read_bytes()[:4096])  # truncated
    (killed,) = [r for r in _snapshot(store.uri) if r not in before]
    with in_dir(tmp_path):
        assert run_cli(args) == 0
    out = capsys.readouterr().out
    assert (
        f"warning: the last checkpoint {ckpt.resolve()} cannot be read (" in out and "starting over in a new run" in out
    )
    client = MlflowClient(store.uri)
    old = client.get_run(killed)
    assert old.info.status == "FAILED" and old.data.tags["error"].startswith(
        f"its checkpoint {ckpt.resolve()} cannot be read"
    )
    new = [r for r in _snapshot(store.uri) if r not in before and r != killed]
    assert len(new) == 1 and client.get_run(new[0]).info.status == "FINISHED"


# ---- what the data says about itself: empty texts and duplicates are counted and reported ----------------------------


def test_empty_texts_and_duplicate_rows_are_counted_and_reported(store, capsys, tiny_model, tmp_path):
    rows = [
        {"text": "a fine film", "label": 1},
        {"text": "a fine film", "label": 1},
        {"text": "  ", "label": 0},
        {"text": "dull", "label": 0},
    ]
    data, path = _corrupt(store, tmp_path, _gz("".join(json.dumps(r) + "\n" for r in rows)))
    o = attempt(store, capsys, ["run", "imdb", *_args(store, tiny_model, data, **{"data.test_size": "null"})])
    assert o.rc == 0
    assert (
        "warning: test: 1 row(s) with an empty text field and 1 duplicate row(s), used as they are (counted in "
        "the run's lineage)"
    ) in o.output
    (run_id,) = o.new_runs
    inputs = MlflowClient(store.uri).get_run(run_id).inputs.dataset_inputs
    test = next(
        {t.key: t.value for t in d.tags}
        for d in inputs
        if {t.key: t.value for t in d.tags}["mlflow.data.context"] == "test"
    )
    assert (test["empty_texts"], test["duplicate_rows"]) == ("1", "1")


# ---- stopped from outside: SIGTERM closes what it owns ---------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_stops_a_study_cleanly_and_it_resumes(store, tiny_model, tmp_path, workers):
    """A scheduler's time limit: the trials' runs and the study's parent run are KILLED, one line is printed (with
    two workers too: neither they nor Optuna add their own), and the same command carries on with the study."""
    space = tmp_path / "space.yaml"
    space.write_text(
        "params:\n  optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}\n"
        "config:\n  trainer: {max_epochs: 1000}\n"  # still training when the signal comes, on any machine
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["tune", "imdb", "--trials", str(workers), "--workers", str(workers), "--space", str(space)]
    args += ["--storage", storage, *_args(store, tiny_model)]
    before = _snapshot(store.uri)
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and (
        sum(s[0] == "RUNNING" and "optuna.trial" in s[3] for r, s in _snapshot(store.uri).items() if r not in before)
        < workers
    ):
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    o = judge(store, proc.returncode, out, err, before)
    assert o.rc == 143
    line = (
        "terminated (SIGTERM): every run this command started is closed as KILLED; run the same command again to resume"
    )
    assert err.strip().splitlines()[-1] == line and (out + err).count("terminated (SIGTERM)") == 1, err[-2000:]
    assert not re.search(r"^\[W ", out + err, re.M), err[-2000:]  # no Optuna warning about the stopped study
    statuses = sorted((s[0], "optuna.trial" in s[3]) for s in o.new_runs.values())
    assert statuses == [("KILLED", False)] + [("KILLED", True)] * workers  # the study's parent run, each trial's run
    if workers == 1:
        with in_dir(tmp_path):
            assert run_cli([*args, "trainer.max_epochs=1"]) == 0  # the same study goes on


# ---- several nodes: a launch that cannot come together ---------------------------------------------------------------


def test_several_nodes_without_a_rendezvous_address(store, capsys, tiny_model, monkeypatch):
    for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    o = attempt(store, capsys, ["run", "imdb", *_args(store, tiny_model), "trainer.num_nodes=2", "trainer.devices=1"])
    assert o.rc == 2
    assert o.error == (
        "trainer.num_nodes=2, but MASTER_ADDR is not set — set MASTER_ADDR and MASTER_PORT (node 0's address and a "
        "free port) and NODE_RANK (0..N-1) on every node, or launch with torchrun / srun"
    )
    no_run(o)


def test_a_node_whose_peers_never_come(store, tiny_model, tmp_path):
    """Node 0 started, node 1 never: after HARNESS_DIST_TIMEOUT_S one line, non-zero, no run, nothing trained."""
    port = free_port()
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "NODE_RANK": "0",
        "GLOO_SOCKET_IFNAME": "lo",
        "HARNESS_DIST_TIMEOUT_S": "5",
    }
    args = ["run", "imdb", *_args(store, tiny_model), "trainer.num_nodes=2", "trainer.devices=1"]
    before = _snapshot(store.uri)
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    o = judge(store, proc.returncode, proc.stdout, proc.stderr, before)
    assert o.rc == 2
    assert o.error.startswith(f"rank 0 of 2 could not join the others at 127.0.0.1:{port} (")
    assert o.error.endswith(
        "start the same command on every node with the same MASTER_ADDR/MASTER_PORT, reachable from all; "
        "HARNESS_DIST_TIMEOUT_S sets how long they wait (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME pick the network)"
    )
    no_run(o)
    assert not (tmp_path / ".harness").exists() or not any((tmp_path / ".harness").rglob("*.ckpt"))


def test_sigterm_inside_optunas_bookkeeping_is_still_the_interrupt(monkeypatch):
    """A signal that lands while Optuna records a finished trial makes Optuna fail with an UnboundLocalError of its
    own (its `finally` reads a state the interrupted `tell` never set); the worker turns that back into the
    interrupt, so the command prints its one 'terminated' line and exits 143 instead of a traceback."""
    import optuna

    from harness.tuning import study as tuning_study

    def tell(*args, **kwargs):
        raise KeyboardInterrupt("signal 15")  # what the SIGTERM handler raises, here inside Optuna's tell

    monkeypatch.setattr(optuna.study._optimize, "_tell_with_warning", tell)
    st = optuna.create_study()
    with pytest.raises(Exception) as raw:  # Optuna's own failure, as CI met it
        st.optimize(lambda t: 1.0, n_trials=1)
    assert isinstance(raw.value, UnboundLocalError) and tuning_study._caused_by_interrupt(raw.value)
    assert not tuning_study._caused_by_interrupt(ValueError("a real error"))


# ---- secrets: a password in the tracking URI appears nowhere a run writes or prints ---------------------------------


def test_password_in_the_tracking_uri_is_never_shown_or_stored(store, tiny_model, tmp_path):
    """A real MLflow server (which ignores the credentials); a run with log_model against it. The password must not
    be on the console, in params, tags or artifacts, in the server's store, or in any file the run leaves, nor in
    what `make -n ui` would run."""
    from harness.paths import project_root

    secret = "s3cretPW-" + os.urandom(4).hex()
    port = free_port()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{server_dir / 'store.db'}",
            "--artifacts-destination",
            str(server_dir / "artifacts"),
        ],
        cwd=server_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://bob:{secret}@127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        work = tmp_path / "work"
        work.mkdir()
        args = [a for a in _args(store, tiny_model) if not a.startswith("tracking.tracking_uri=")]
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "CI": "1"}
        env.pop("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", None)  # harness's own default must do it
        proc = subprocess.run(
            [sys.executable, "-m", "harness.cli", "run", "imdb", *args, "log_model=true"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert secret not in proc.stdout + proc.stderr
        assert f"http://bob:***@127.0.0.1:{port}" in proc.stdout  # the store is named, masked
        client = MlflowClient(f"http://127.0.0.1:{port}")
        (run,) = client.search_runs([client.get_experiment_by_name("imdb").experiment_id])
        assert run.info.status == "FINISHED" and run.data.params["tracking.tracking_uri"] == (
            f"http://bob:***@127.0.0.1:{port}"
        )
        assert secret not in json.dumps([run.data.params, run.data.tags])
        leaked = [
            str(p)
            for folder in (work, server_dir)
            for p in folder.rglob("*")
            if p.is_file() and secret.encode() in p.read_bytes()
        ]
        assert leaked == [], f"the password is written in {leaked}"
        assert any((server_dir / "artifacts").rglob("model.safetensors"))  # the artifacts were really searched
        make = subprocess.run(
            ["make", "-n", "-s", "-C", str(project_root()), "ui", "dashboard"],
            env={**env, "OPTUNA_STORAGE": f"postgresql://bob:{secret}@h/db"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert make.returncode == 0 and secret not in make.stdout + make.stderr
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_library_errors_become_user_errors_in_one_place():
    """What `user_error` makes of exceptions a library raises on the user's behalf; a bug stays a bug (None)."""
    import pickle

    from harness.errors import user_error

    full = user_error(OSError(28, "No space left on device", "/data/out/state.json"))
    assert full.message == (
        "no space left on the device writing /data/out/state.json (No space left on device) — "
        "free some space or point tracking.output_dir at a disk with room, then run the same "
        "command again (it resumes from the last complete checkpoint)"
    )
    oom = user_error(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert oom.message.startswith(
        "the GPU ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB) — lower data.batch_size"
    )
    unsafe = user_error(pickle.UnpicklingError("Weights only load failed. ... GLOBAL posix.system ..."))
    assert "refused as unsafe" in unsafe.message and "weights_only" not in unsafe.message
    assert user_error(ZeroDivisionError("a bug")) is None


# ---- round two: sync, the run folder, signals, small ones ------------------------------------------------------------


def _journal(folder: Path) -> Path:
    """An offline record (as the GPU check writes one) of a run with two metric batches, then its end."""
    from harness.tracking.offline import OfflineRun

    rec = OfflineRun(folder, "synced", "kept-run", {"k": "v"})
    rec.log_params({"a": 1})
    rec.log_metrics({"m": 0.5}, step=1)
    rec.log_metrics({"m": 0.25}, step=2)
    rec.end()
    return folder / "pending.jsonl"


@pytest.mark.parametrize(
    "damage, problem",
    [
        ("{not json", "is not JSON (Expecting property name enclosed in double quotes at column 2)"),
        ('{"op": "log_batch", "metrics": [["m", 9.0, 0, 9]]}', "is not a journal record (no run_id)"),
    ],
)
def test_sync_of_a_damaged_journal_sends_what_comes_before_once_and_names_the_line(
    store, capsys, tmp_path, damage, problem
):
    """A damaged line (not JSON; a record without run_id) stops `harness sync` with one line naming the file and the
    line; what came before it is sent, once; the damaged line and what follows stay in the journal."""
    journal = _journal(tmp_path / "rec")
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join([*lines[:3], damage, *lines[3:]]) + "\n")  # after create, params, first metrics
    o = attempt(store, capsys, ["sync", str(tmp_path / "rec"), "--tracking-uri", store.uri])
    assert o.rc == 2
    assert o.error == (
        f"{journal}, line 1: {problem} — the 2 record(s) before it were sent; fix or delete that line, then run "
        "harness sync again (nothing is sent twice)"
    )
    ((status, metrics, params, tags),) = o.new_runs.values()
    assert status == "RUNNING" and params == {"a": "1"} and metrics == {"m": 0.5} and tags["k"] == "v"
    assert journal.read_text().splitlines()[0] == damage  # the damaged record now comes first; nothing was lost
    again = attempt(store, capsys, ["sync", str(tmp_path / "rec"), "--tracking-uri", store.uri])
    assert again.rc == 2 and again.error.startswith(f"{journal}, line 1: {problem} — fix or delete that line")
    assert again.new_runs == {}  # nothing sent twice (the run above is unchanged: judged by attempt)
    journal.write_text("\n".join(journal.read_text().splitlines()[1:]) + "\n")  # the user deletes the line
    assert run_cli(["sync", str(tmp_path / "rec"), "--tracking-uri", store.uri]) == 0  # the rest goes to that run
    run = MlflowClient(store.uri).get_run(next(iter(o.new_runs)))
    assert run.info.status == "FINISHED"
    assert [p.value for p in MlflowClient(store.uri).get_metric_history(run.info.run_id, "m")] == [0.5, 0.25]


def test_a_synced_run_ends_when_it_ended_not_when_it_was_synced(store, capsys, tmp_path):
    journal = _journal(tmp_path / "rec")
    ended = json.loads(journal.read_text().splitlines()[-1])["end_time"]
    time.sleep(1.5)
    o = attempt(store, capsys, ["sync", str(tmp_path / "rec"), "--tracking-uri", store.uri])
    assert o.rc == 0
    run = MlflowClient(store.uri).get_run(next(iter(o.new_runs)))
    assert run.info.end_time == ended and run.info.end_time < int(time.time() * 1000) - 1000


def test_a_second_identical_command_does_not_touch_the_first_ones_folder(store, capsys, tiny_model):
    """While a run holds its folder (`.harness/runs/<task>/<hash>`), the same command started again stops in one line
    before it starts a run or reads a checkpoint; once the first is gone (even killed), the folder is free."""
    from harness.config import resolve_run_config
    from harness.run.runner import RunState
    from harness.runtime import resolve_device_settings

    args = _args(store, tiny_model, **{"seed": "7"})
    with in_dir(store.work):
        cfg = resolve_run_config(registry()["imdb"], args)
        resolve_device_settings(cfg)  # as the run does before it names its folder
        folder = RunState(cfg).dir.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', flush=True); "
            "time.sleep(120)",
            str(folder / "lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        o = attempt(store, capsys, ["run", "imdb", *args])
        assert o.rc == 2
        assert o.error == (
            f"the same command is already running (pid {holder.pid}) and holds its run folder {folder} — wait for it "
            "to finish (running this again then resumes or reuses its result), or make this run differ (another "
            "seed=..., or tracking.output_dir=<another folder>)"
        )
        no_run(o)
        assert sorted(p.name for p in folder.iterdir()) == ["lock"]  # no state, no checkpoint written
    finally:
        holder.kill()
        holder.wait()
    done = attempt(store, capsys, ["run", "imdb", *args])  # the holder was killed: its lock went with it
    assert done.rc == 0 and len(done.new_runs) == 1


def test_read_only_study_storage(store, capsys, tiny_model, tmp_path):
    """The study's sqlite file on a read-only filesystem: "read-only", as for the tracking store, not SQLite's
    "unable to open database file"; nothing written, no run."""
    from harness.tuning.study import open_storage

    db = tmp_path / "ro" / "optuna.db"
    with _read_only(db.parent, lambda f: open_storage(f"sqlite:///{db}").engine.dispose()):  # a real, empty study
        before = db.read_bytes()
        o = attempt(
            store, capsys, ["tune", "imdb", "--trials", "1", "--storage", f"sqlite:///{db}", *_args(store, tiny_model)]
        )
        assert o.rc == 2
        assert o.error == (
            f"cannot use the study storage sqlite:///{db}: {db} is read-only (trials cannot be recorded) — make {db} "
            "writable, or pass --storage (or OPTUNA_STORAGE) a storage that works; sqlite:///optuna.db needs no server"
        )
        no_run(o)
        assert db.read_bytes() == before


# ---- round three: config words, honest labels, prompt exits, the lock first -----------------------------------------


@pytest.mark.parametrize(
    "override, words",
    [
        ("data.device_resident=maybe", "'maybe' for 'data.device_resident': use one of true, false, auto"),
        ("optim.fused=2", "2 for 'optim.fused': use one of true, false, auto"),
        (
            "trainer.compile=turbo",
            "'turbo' for 'trainer.compile': use one of true, false, default, reduce-overhead, max-autotune",
        ),
        ("optim.scheduler=step", "'step' for 'optim.scheduler': use one of linear, cosine, constant"),
    ],
)
def test_a_setting_that_takes_words_names_the_key_and_the_words(store, capsys, tiny_model, override, words):
    """pydantic named the union's branch (`data.device_resident.bool`) and "a valid boolean"; the key is the one the
    user wrote, with the values it takes."""
    o = attempt(store, capsys, ["run", "imdb", *_args(store, tiny_model), override])
    assert (o.rc, o.error) == (
        2,
        f"override '{override}': bad value {words} — fix that value (see docs/configuration.md)",
    )
    no_run(o)


def test_a_users_file_is_never_labelled_official(store, capsys, tiny_model, tmp_path):
    mine = tmp_path / "reviews.jsonl"
    mine.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in [("good", "positive")] * 3))
    mine.write_text(mine.read_text() + json.dumps({"text": "bad", "label": "negative"}) + "\n")
    args = ["eval", "imdb", "--model", f"runs:/{store.finished}", "--data", str(mine), *_args(store, tiny_model)[1:]]
    o = attempt(store, capsys, args)
    assert o.rc == 0
    ((_, _, params, tags),) = o.new_runs.values()
    assert tags["data.official_split"] == "false" and params["split.test.official"] == "false"
    run_id = next(iter(o.new_runs))
    (inp,) = [i for i in MlflowClient(store.uri).get_run(run_id).inputs.dataset_inputs]
    assert {t.key: t.value for t in inp.tags}["official"] == "False"


def test_a_missing_column_lists_only_the_files_columns(store, capsys, tiny_model, tmp_path):
    mine = tmp_path / "nolabel.jsonl"
    mine.write_text(json.dumps({"text": "fine", "stars": 5}) + "\n")
    args = ["eval", "imdb", "--model", f"runs:/{store.finished}", "--data", str(mine), *_args(store, tiny_model)[1:]]
    o = attempt(store, capsys, args)
    assert o.rc == 2 and "columns there: text, stars" in o.error and "_row" not in o.error, o.error
    failed_run(o)


def test_compare_of_files_names_the_files_not_a_task(store, capsys, tmp_path):
    import hashlib

    refs, a, b = tmp_path / "refs.txt", tmp_path / "a.txt", tmp_path / "b.txt"
    refs.write_text("the cat sat on the mat\nit rained all day\nwe went home early\n")
    a.write_text("a cat sat on a mat\nit rained the whole day\nwe went home\n")
    b.write_text("the cat sat on the mat\nit rained all day long\nwe went home early today\n")
    args = ["compare", "--predictions", str(a), str(b), "--references", str(refs), "--json"]
    o = attempt(store, capsys, [*args, "--tracking-uri", store.uri, "--resamples", "200"])
    assert o.rc == 0
    out = json.loads(o.output[o.output.index("{") :].split("\nMLflow run")[0])
    sha = hashlib.sha256(refs.read_bytes()).hexdigest()
    assert out["test_data"] == f"the references {refs} (sha256 {sha})" and "task" not in out["test_data"]
    assert out["files"][1] == {"system": "b.txt", "path": str(b), "sha256": hashlib.sha256(b.read_bytes()).hexdigest()}
    run_id = next(r for r, v in o.new_runs.items() if v[3].get("mode") == "compare")
    saved = json.loads(Path(MlflowClient(store.uri).download_artifacts(run_id, "compare/result.json")).read_text())
    assert saved["test_data"] == out["test_data"]


def test_when_the_two_tests_disagree_the_row_says_so_and_which_one_decides():
    from harness.commands import compare as C

    rng = __import__("numpy").random.default_rng(0)
    n = 60
    a = {"correct": (rng.random(n) < 0.5).astype(float)}
    b = {"correct": a["correct"].copy()}
    m = C.Metric("accuracy", lambda x: float(x["correct"].mean()), test="bootstrap", trials=200)
    base = C.System("A", [a], __import__("numpy").arange(n), ["x"] * n)
    other = C.System("B", [b], __import__("numpy").arange(n), ["x"] * n)
    result = C.compare([base, other], [m], resamples=200)
    r = result.results["B"]["accuracy"]
    assert r["verdict_by"] == r["method"] and r["tests_disagree"] is False
    # one system's row where p and p (AR) fall on two sides of alpha: marked, and the rule said
    r.update(p_value=0.114, p_approximate_randomization=0.0005, significant=False, tests_disagree=True)
    lines: list[str] = []
    C.print_table(result, lines.append)
    said = "\n".join(lines)
    assert "the verdict (at α=0.05) follows p, the test in the `test` column" in said
    assert "the two tests disagree on: B · accuracy" in said


def test_a_user_error_exits_at_once_whatever_a_library_left_running(tmp_path):
    """After the one line, the process exits: it does not wait for the interpreter to tear down torch and the other
    libraries, nor for a thread left running (here one that would hold a normal exit for 120 s)."""
    script = tmp_path / "slow_exit.py"
    script.write_text(
        "import threading, time, sys\n"
        "import harness.cli as cli\n"
        "from harness.errors import ConfigError\n"
        "def fail(args):\n"
        "    threading.Thread(target=time.sleep, args=(120,)).start()\n"
        "    raise ConfigError('something the user got wrong', 'fix it')\n"
        "cli.cmd_config = fail\n"
        "sys.argv = ['harness', 'config', 'imdb']\n"
        "cli.entry()\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=110)
    assert done.returncode == 2 and done.stderr.strip() == "error: something the user got wrong — fix it"
    assert time.monotonic() - started < 60


def test_the_second_identical_command_stops_before_its_start_up(store, tiny_model):
    """The lock is taken before anything slow: the second command says so without importing torch (its start-up
    took 57 s at load 8-10 before saying it)."""
    from harness.config import resolve_run_config
    from harness.run.runlock import command_folder

    args = _args(store, tiny_model, **{"seed": "11"})
    with in_dir(store.work):
        folder = command_folder(resolve_run_config(registry()["imdb"], args), "imdb").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', flush=True); "
            "time.sleep(120)",
            str(folder / "lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    probe = (
        "import sys\nfrom harness.cli import main\nrc = main(sys.argv[1:])\n"
        "print('@@', rc, 'torch' in sys.modules, 'mlflow' in sys.modules)\n"
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        done = subprocess.run(
            [sys.executable, "-c", probe, "run", "imdb", *args],
            cwd=store.work,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.kill()
        holder.wait()
    assert done.stdout.strip().splitlines()[-1] == "@@ 2 False False", done.stdout + done.stderr
    assert done.stderr.strip() == (
        f"error: the same command is already running (pid {holder.pid}) and holds its run folder {folder} — wait "
        "for it to finish (running this again then resumes or reuses its result), or make this run differ (another "
        "seed=..., or tracking.output_dir=<another folder>)"
    )

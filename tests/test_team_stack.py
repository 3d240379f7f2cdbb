"""The team stack, for real: PostgreSQL (Debian's package) and an MLflow server, as `make server` starts them; runs
and studies against them give what the zero-setup sqlite path gives."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_port, in_dir, require, run_cli, tiny_args
from mlflow.tracking import MlflowClient

SPACE = """
params:
  optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
config:
  data: {train_size: 96, validation_size: 64, max_length: 48}
  trainer: {max_epochs: 1, precision: 32-true}
"""


@pytest.fixture(scope="module")
def stack():
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        require("PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require("psycopg is not installed (pip install -e '.[server]'; make setup installs it)")
    from harness.commands import server

    # under /tmp itself: the postgres user must be able to reach the cluster (pytest's folders are root-only)
    base = Path(tempfile.mkdtemp(prefix="harness-stack-"))
    base.chmod(0o755)
    folder = base / ".server"
    stack = server.start(folder, mlflow_port=free_port(), pg_port=free_port())
    try:
        yield stack
    finally:
        server.stop(folder)
        shutil.rmtree(base, ignore_errors=True)


def _contents(uri: str, run_id: str) -> dict:
    client = MlflowClient(uri)
    run = client.get_run(run_id)

    def walk(path: str = "", listing=lambda p: client.list_artifacts(run_id, p)) -> list[str]:
        out = []
        for a in listing(path or None):
            out += walk(a.path, listing) if a.is_dir else [a.path]
        return out

    models = [o.model_id for o in (run.outputs.model_outputs if run.outputs else [])]
    model_files = [
        sorted(walk(listing=lambda p, m=m: client.list_logged_model_artifacts(m, p))) for m in models
    ]  # an MLflow 3 logged model keeps its files beside the run's

    params = {k: v for k, v in run.data.params.items() if k not in ("tracking.tracking_uri", "data.data_dir")}
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith(("mlflow.", "wall_seconds", "device"))}
    return {
        "status": run.info.status,
        "params": params,
        "tags": sorted(tags),
        "artifacts": sorted(walk()),
        "models": model_files,
        "metrics": {k: round(v, 6) for k, v in run.data.metrics.items() if not k.startswith("system/")},
        "inputs": sorted({t.key: t.value for t in d.tags}["mlflow.data.context"] for d in run.inputs.dataset_inputs),
    }


def test_no_password_in_any_process_arguments_while_the_server_starts(stack):
    """`mlflow db upgrade` took the database URL, password and all, as an argument: any local user could read it in
    `ps` for the ~40 s it ran. Every process's command line is watched while the MLflow server is (re)started."""
    import signal
    import threading

    from harness.commands import server

    secret = stack.password
    assert len(secret) >= 16
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if secret in args:
                    seen.append(args)
            time.sleep(0.02)

    os.killpg(int((stack.folder / "mlflow.pid").read_text()), signal.SIGTERM)
    time.sleep(2)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        server.start_mlflow(stack)  # the schema upgrade, then the server
    finally:
        stop.set()
        watcher.join()
    assert seen == [], seen[:1]
    assert MlflowClient(stack.tracking_uri).search_experiments() is not None  # it came up


def test_a_run_against_the_server_holds_what_a_sqlite_run_holds(stack, data_dir, tiny_model, tmp_path, capsys):
    got = {}
    for name, uri in (("server", stack.tracking_uri), ("sqlite", f"sqlite:///{tmp_path / 'mlruns.db'}")):
        work = tmp_path / name
        work.mkdir()
        with in_dir(work):
            assert run_cli(["run", "imdb", *tiny_args(data_dir, tiny_model, uri, log_model="true")]) == 0
        run_id = re.search(r"MLflow run ([0-9a-f]{32})", capsys.readouterr().out).group(1)
        got[name] = _contents(uri, run_id)
    server, sqlite = got["server"], got["sqlite"]
    assert server["status"] == "FINISHED"
    assert server["params"] == sqlite["params"] and server["tags"] == sqlite["tags"]
    assert server["artifacts"] == sqlite["artifacts"] and "predictions/test.json" in server["artifacts"]
    assert server["models"] == sqlite["models"] and "artifacts/weights/model.safetensors" in server["models"][0]
    assert set(server["metrics"]) == set(sqlite["metrics"])
    for k in ("test_accuracy", "test_auroc", "test_ece", "test_loss"):
        assert server["metrics"][k] == sqlite["metrics"][k], k
    assert server["inputs"] == sqlite["inputs"] == ["test", "train", "validation"]
    files = list((stack.folder / "artifacts").rglob("model.safetensors"))  # proxied: on the server's side
    assert files


@pytest.mark.slow  # half a minute of servers and processes: make test-slow, which CI runs
def test_a_study_on_postgres_with_workers_and_the_server(stack, data_dir, tiny_model, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = stack.database("optuna", "postgresql")
    env = {**os.environ, "MLFLOW_TRACKING_URI": stack.tracking_uri, "OPTUNA_STORAGE": storage, "CI": "1"}
    args = [
        "--space",
        str(space),
        "--study",
        "pg",
        f"model.name={tiny_model}",
        f"data.data_dir={data_dir}",
        "tracking.system_metrics=false",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "tune", "imdb", "--trials", "3", "--workers", "2", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert stack.password not in proc.stdout + proc.stderr
    import optuna

    study = optuna.load_study(study_name="pg", storage=storage)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) >= 3
    client = MlflowClient(stack.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("imdb").experiment_id], filter_string="tags.`optuna.study` = 'pg'"
    )
    parents = [r for r in runs if r.data.tags.get("mode") == "tune"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["optuna.storage"].endswith(f":***@127.0.0.1:{stack.pg_port}/optuna")
    assert sum(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in runs) >= 3


@pytest.mark.slow  # a minute of processes and servers: make test-slow, which CI runs
def test_workers_on_other_hosts_join_one_study_with_bounded_connections(stack, data_dir, tiny_model, tmp_path):
    """One coordinator and seven `--join` workers (eight processes, as on eight hosts) share a study on PostgreSQL;
    the study database never sees more than two connections per worker."""
    import sqlalchemy

    from harness.tuning.study import POOL_OVERFLOW, POOL_SIZE

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = stack.database("optuna", "postgresql")
    env = {**os.environ, "MLFLOW_TRACKING_URI": stack.tracking_uri, "OPTUNA_STORAGE": storage, "CI": "1"}
    args = [
        "tune",
        "imdb",
        "--trials",
        "8",
        "--space",
        str(space),
        "--study",
        "hosts",
        f"model.name={tiny_model}",
        f"data.data_dir={data_dir}",
        "tracking.system_metrics=false",
        "trainer.num_threads=1",
    ]
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watch = sqlalchemy.create_engine(stack.database("postgres"), pool_size=1)
    query = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE datname = 'optuna'")
    time.sleep(8)  # the coordinator creates the study and its parent run
    joiners = [
        subprocess.Popen(
            [sys.executable, "-m", "harness.cli", *args, "--join"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(7)
    ]
    peak = 0
    with watch.connect() as con:
        # the watch sees a connection to the study database when there is one (the workers' own are brief and may
        # fall between two looks, so the watch itself is checked on one of ours)
        mine = sqlalchemy.create_engine(stack.database("optuna"), pool_size=1)
        with mine.connect():
            assert con.execute(query).scalar() >= 1
        mine.dispose()
        while coordinator.poll() is None or any(j.poll() is None for j in joiners):
            peak = max(peak, con.execute(query).scalar())
            time.sleep(0.5)
    watch.dispose()
    out = coordinator.communicate()[0]
    assert coordinator.returncode == 0, out[-3000:]
    assert all(j.returncode == 0 for j in joiners), [j.stderr.read()[-1000:] for j in joiners]
    limit = 8 * (POOL_SIZE + POOL_OVERFLOW)
    print(f"peak connections to the study database: {peak} (limit {limit})")
    assert peak <= limit, (peak, limit)
    import optuna

    states = [t.state.name for t in optuna.load_study(study_name="hosts", storage=storage).trials]
    assert states.count("COMPLETE") >= 8


@pytest.mark.slow  # half a minute of servers and processes: make test-slow, which CI runs
def test_journal_storage_for_workers_on_one_host(data_dir, tiny_model, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    journal = tmp_path / "optuna.log"
    args = [
        "tune",
        "imdb",
        "--trials",
        "2",
        "--workers",
        "2",
        "--space",
        str(space),
        "--storage",
        f"journal:{journal}",
        "--study",
        "j",
        f"model.name={tiny_model}",
        f"data.data_dir={data_dir}",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}",
        "tracking.system_metrics=false",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import optuna

    from harness.tuning.study import open_storage

    study = optuna.load_study(study_name="j", storage=open_storage(f"journal:{journal}"))
    assert sum(t.state.name == "COMPLETE" for t in study.trials) >= 2 and journal.stat().st_size > 0


@pytest.mark.slow  # a minute of processes and servers: make test-slow, which CI runs
def test_basic_auth_server(stack, data_dir, tiny_model, tmp_path):
    """MLflow's basic-auth app with a generated admin password: a run with the credentials works, one without is
    refused in seconds, and the password is shown nowhere."""
    from harness.commands import server

    folder = Path(tempfile.mkdtemp(prefix="harness-auth-")) / ".server"
    env_pg = os.environ.get("PG_URL")
    os.environ["PG_URL"] = stack.pg_url
    try:
        auth = server.start(folder, mlflow_port=free_port(), auth=True)
    finally:
        if env_pg is None:
            os.environ.pop("PG_URL")
        else:
            os.environ["PG_URL"] = env_pg
    try:
        password = (folder / "admin.secret").read_text().strip()
        assert password != "password1234"  # not MLflow's documented default
        # every secret of the stack is readable by its owner only: the admin's hash in auth.db too
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in folder.iterdir() if p.suffix in (".secret", ".db")}
        assert modes and set(modes.values()) == {"0o600"} and "auth.db" in modes, modes
        args = ["run", "imdb", *tiny_args(data_dir, tiny_model, auth.tracking_uri)]
        base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        refused = subprocess.run(
            [sys.executable, "-m", "harness.cli", *args],
            cwd=tmp_path,
            env=base,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode == 2
        assert (
            refused.stderr.strip()
            .splitlines()[-1]
            .startswith(
                f"error: cannot use the tracking store {auth.tracking_uri}: the server refused the credentials "
                "(HTTP 401)"
            )
        )
        env = {**base, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
        ok = subprocess.run(
            [sys.executable, "-m", "harness.cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert ok.returncode == 0, ok.stderr[-3000:]
        assert password not in ok.stdout + ok.stderr + refused.stdout + refused.stderr
        leaked = [str(p) for p in tmp_path.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
        assert leaked == []
    finally:
        server.stop(folder)
        shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.mark.slow  # half a minute of servers and processes: make test-slow, which CI runs
def test_a_stack_under_a_closed_folder_and_half_dead_is_reported_and_repaired(monkeypatch, capsys):
    """As root, a checkout under a folder PostgreSQL's user cannot enter (root's 0700 home, a mktemp -d folder): the
    cluster goes where it can reach it. Then the MLflow server dies while PostgreSQL runs on: status says so part by
    part, start reuses the cluster (same port) and starts the server again, stop stops every part."""
    import signal

    from harness.commands import server

    if os.geteuid() != 0:
        require("runs as root (PostgreSQL then runs as its own user, who cannot enter a 0700 folder)")
    home = Path(tempfile.mkdtemp(prefix="harness-home-"))  # mode 0700, like /root
    pg_root = Path(tempfile.mkdtemp(prefix="harness-pgroot-"))
    pg_root.chmod(0o755)
    monkeypatch.setenv("HARNESS_PG_ROOT", str(pg_root))
    monkeypatch.delenv("PG_URL", raising=False)
    folder = home / "checkout" / ".server"
    try:
        stack = server.start(folder, mlflow_port=free_port(), pg_port=free_port())
        data = server.cluster_dir(folder)
        assert data.parent.parent == pg_root and (data / "PG_VERSION").is_file()
        assert (folder / "pg.location").read_text() == str(data)
        pg_port = stack.pg_port
        os.killpg(int((folder / "mlflow.pid").read_text()), signal.SIGKILL)  # the server dies, PostgreSQL runs on
        time.sleep(1)
        assert server.parts(folder) == {
            "mlflow server": "not running",
            "postgresql": f"running on 127.0.0.1:{pg_port} (cluster {data})",
        }
        assert run_cli(["server", "status", "--folder", str(folder)]) == 1
        out = capsys.readouterr().out
        assert f"postgresql: running on 127.0.0.1:{pg_port}" in out and "mlflow server: not running" in out
        again = server.start(folder, mlflow_port=free_port(), pg_port=free_port())
        assert again.pg_port == pg_port and server.status(folder) is not None
        MlflowClient(again.tracking_uri).search_experiments()  # it answers, on the same database
        assert run_cli(["server", "status", "--folder", str(folder)]) == 0
    finally:
        stopped = server.stop(folder)
    assert stopped == ["mlflow server", "postgresql"]
    assert not (data / "postmaster.pid").exists() and server.parts(folder) == {
        "mlflow server": "not running",
        "postgresql": f"not running (cluster {data})",
    }
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(pg_root, ignore_errors=True)


# ---- the server goes away in the middle of a run ---------------------------------------------------------------------


class _ServerCrash:
    """A Lightning callback that kills the MLflow server (SIGKILL, as a crash) once training reaches `at_step`, and
    optionally starts it again `back_after` seconds later, in the background, while training goes on."""

    def __init__(self, stack, at_step: int, back_after: float | None):
        import lightning as L

        class _Cb(L.Callback):
            def on_train_batch_end(cb, trainer, *a):  # noqa: N805
                if trainer.global_step == at_step and not self.killed:
                    self.kill()

        self.stack, self.back_after, self.killed = stack, back_after, False
        self.callback = _Cb()
        self.restarted = None

    def kill(self) -> None:
        import signal
        import threading

        from harness.commands import server

        os.killpg(int((self.stack.folder / "mlflow.pid").read_text()), signal.SIGKILL)
        self.killed = True
        if self.back_after is not None:

            def restart() -> None:
                time.sleep(self.back_after)
                server.start_mlflow(self.stack)
                self.restarted = time.time()

            threading.Thread(target=restart, daemon=True).start()


def _run_with_crash(stack, data_dir, tiny_model, work: Path, crash: _ServerCrash) -> tuple[str, str]:
    import io

    from rich.console import Console

    from harness.config import resolve_run_config
    from harness.families.registry import get_task
    from harness.run.runner import run

    task = get_task("imdb")
    overrides = tiny_args(data_dir, tiny_model, stack.tracking_uri, log_model="true", **{"data.train_size": "480"})
    cfg = resolve_run_config(task, overrides)
    out = io.StringIO()
    with in_dir(work):
        result = run(cfg, task, console=Console(file=out, width=300), extra_callbacks=[crash.callback])
    return result.run_id, out.getvalue()


def _assert_complete(uri: str, run_id: str) -> None:
    """FINISHED, every logged training step there exactly once, validation and test metrics, the predictions."""
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    epochs = int(run.data.params["trainer.max_epochs"])
    assert steps == sorted(set(steps)), steps  # none twice
    assert steps == list(range(1, 2 * len(steps), 2)), steps  # none missing (logged every 2 steps)
    assert len(steps) == 30 * epochs // 2  # 480 rows / 16 per batch = 30 steps per epoch
    assert len(client.get_metric_history(run_id, "val_loss")) == epochs
    assert {"test_accuracy", "test_accuracy_ci_low", "test_accuracy_ci_high"} <= set(run.data.metrics)
    assert "predictions/test.json" in [a.path for a in client.list_artifacts(run_id, "predictions")]
    # the tag that makes the UI open the predictions as a table (MLflow's log_table sets it; a kept table too)
    assert {"path": "predictions/test.json", "type": "table"} in json.loads(run.data.tags["mlflow.loggedArtifacts"])
    assert len(run.inputs.dataset_inputs) == 3
    # the model: the run's logged model, with its test metrics linked
    (out,) = run.outputs.model_outputs
    model = client.get_logged_model(out.model_id)
    assert str(model.status) == "READY" and {m.key for m in model.metrics} >= {"test_accuracy", "test_accuracy_ci_low"}


@pytest.mark.slow  # half a minute of servers and processes: make test-slow, which CI runs
def test_a_run_goes_on_while_the_server_is_away_and_sends_everything_when_it_is_back(
    stack, data_dir, tiny_model, tmp_path
):
    crash = _ServerCrash(stack, at_step=6, back_after=3.0)
    run_id, out = _run_with_crash(stack, data_dir, tiny_model, tmp_path, crash)
    assert crash.killed and crash.restarted is not None
    assert "the tracking server stopped answering during the run; what it missed was sent" in out, out
    _assert_complete(stack.tracking_uri, run_id)
    assert not list(tmp_path.rglob("pending.jsonl")) or all(
        p.stat().st_size == 0 for p in tmp_path.rglob("pending.jsonl")
    )


@pytest.mark.slow  # half a minute of servers and processes: make test-slow, which CI runs
def test_harness_sync_sends_what_a_run_kept_when_the_server_stayed_away(
    stack, data_dir, tiny_model, tmp_path, monkeypatch, capsys
):
    from harness.commands import server

    monkeypatch.setenv("HARNESS_TRACKING_WAIT_S", "2")
    crash = _ServerCrash(stack, at_step=6, back_after=None)
    try:
        run_id, out = _run_with_crash(stack, data_dir, tiny_model, tmp_path, crash)
        finished_by = int(time.time() * 1000)
        assert crash.killed
        line = [ln for ln in out.splitlines() if "is away" in ln]
        assert len(line) == 1 and "harness sync" in line[0] and run_id in line[0], out
        with in_dir(tmp_path):  # while it is still away: one clear error, nothing sent, nothing dropped
            kept = sum(1 for _ in next(tmp_path.rglob("pending.jsonl")).open())
            assert run_cli(["sync", "--tracking-uri", stack.tracking_uri]) == 2
            assert "does not answer" in capsys.readouterr().err
            assert sum(1 for _ in next(tmp_path.rglob("pending.jsonl")).open()) == kept
    finally:
        server.start_mlflow(stack)
    assert MlflowClient(stack.tracking_uri).get_run(run_id).info.status == "RUNNING"
    with in_dir(tmp_path):
        assert run_cli(["sync", "--tracking-uri", stack.tracking_uri]) == 0
    assert f"run {run_id}: {kept} records sent" in capsys.readouterr().out
    _assert_complete(stack.tracking_uri, run_id)
    # the run ends when it ended, not when it was synced (the server was restarted after it)
    assert MlflowClient(stack.tracking_uri).get_run(run_id).info.end_time <= finished_by
    with in_dir(tmp_path):  # a second sync has nothing left to send
        assert run_cli(["sync", "--tracking-uri", stack.tracking_uri]) == 0
    assert "nothing to send" in capsys.readouterr().out


def test_a_dataset_two_workers_log_at_once_is_retried_not_failed():
    """Two tuning workers logging the same new dataset at the same moment: the store's check-then-insert races and
    one gets a unique-constraint error (met on sqlite with `make tune WORKERS=2`); the input is sent again."""
    from harness.tracking.journal import send_input

    class Store:
        calls = 0

        def log_inputs(self, run_id, datasets):
            Store.calls += 1
            if Store.calls == 1:
                raise RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id")

    dataset = {"name": "imdb-train", "digest": "abc", "source_type": "local", "source": "{}"}
    send_input(Store(), "run", dataset, "train", {})
    assert Store.calls == 2

    class Broken:
        def log_inputs(self, run_id, datasets):
            raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        send_input(Broken(), "run", dataset, "train", {})

"""`harness tune`: search-space checks, a real study with nested MLflow runs, resume, seeding, pruning (also under
DDP on two CPU processes), parallel workers with a killed worker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import free_port, in_dir, run_cli
from mlflow.tracking import MlflowClient

SPACE = """
params:
  optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
  optim.scheduler: {type: categorical, choices: [linear, cosine]}
  model.dropout: {type: float, low: 0.0, high: 0.3, when: {optim.scheduler: cosine}}
config:
  data: {train_size: 96, validation_size: 64, max_length: 48}
  trainer: {max_epochs: 2, val_check_interval: 0.5, precision: 32-true}
"""


def _args(tmp_path: Path, data_dir: Path, tiny_model: Path, *extra: str, space: str = SPACE) -> list[str]:
    path = tmp_path / "space.yaml"
    path.write_text(space)
    return [
        "--space",
        str(path),
        "--storage",
        f"sqlite:///{tmp_path / 'optuna.db'}",
        f"model.name={tiny_model}",
        f"data.data_dir={data_dir}",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}",
        "tracking.system_metrics=false",
        *extra,
    ]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize(
    "space, message",
    [
        ("params:\n  optim.lrr: {type: float, low: 1.0e-5, high: 1.0e-3}\n", "unknown config key 'optim.lrr'"),
        ("params:\n  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-5}\n", "empty or inverted range"),
        ("params:\n  optim.lr: {type: float, low: 0, high: 1.0e-3, log: true}\n", "log scale needs low > 0"),
        ("params:\n  optim.scheduler: {type: categorical, choices: []}\n", "non-empty `choices`"),
        (
            "params:\n  data.batch_size: {type: int, low: 0, high: 8}\n",
            "parameter 'data.batch_size' value 0 is rejected",
        ),
        (
            "params:\n  model.dropout: {type: float, low: 0, high: 0.2, when: {optim.sched: cosine}}\n",
            "refers to 'optim.sched'",
        ),
        ("params: {}\n", "params"),
    ],
)
def test_bad_search_space(space, message, tmp_path, data_dir, tiny_model, capsys):
    rc = run_cli(["tune", "imdb", "--trials", "2", *_args(tmp_path, data_dir, tiny_model, space=space)])
    assert rc == 2
    assert message in _error(capsys)
    assert not (tmp_path / "optuna.db").exists()  # nothing was created for a bad space


def test_bad_workers_and_storage(tmp_path, data_dir, tiny_model, capsys):
    assert run_cli(["tune", "imdb", "--trials", "2", "--workers", "3", *_args(tmp_path, data_dir, tiny_model)]) == 2
    assert "need 1 <= workers <= trials" in _error(capsys)
    args = _args(tmp_path, data_dir, tiny_model)
    args[args.index("--storage") + 1] = "postgresql://tuner:s3cret@127.0.0.1:9/studies"
    assert run_cli(["tune", "imdb", "--trials", "2", *args]) == 2
    line = _error(capsys)
    assert "cannot open the study storage postgresql://tuner:***@127.0.0.1:9/studies" in line
    assert "s3cret" not in line


@pytest.mark.parametrize(
    "override, message",
    [
        ("train=false", "error: a search trial needs training — tune a trainable model with train=true"),
        (
            "model.name=baseline:first-sentence",
            "error: a search trial needs training — tune a trainable model with train=true",
        ),
        (
            "data.train_on_validation=true",
            "error: data.train_on_validation=true leaves a search trial nothing to "
            "validate on — use it only for the final fit (harness tune --retrain-best does)",
        ),
    ],
)
def test_what_a_trial_cannot_be_is_refused_before_the_study(override, message, tmp_path, data_dir, tiny_model, capsys):
    assert run_cli(["tune", "imdb", "--trials", "2", *_args(tmp_path, data_dir, tiny_model), override]) == 2
    assert _error(capsys) == message
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlruns.db").exists()


def test_existing_study_with_other_direction(tmp_path, data_dir, tiny_model, capsys):
    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="minimize")
    assert run_cli(["tune", "imdb", "--trials", "1", "--study", "s", *_args(tmp_path, data_dir, tiny_model)]) == 2
    assert "exists with direction 'minimize'" in _error(capsys)


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_dir, tiny_model):
    from contextlib import redirect_stdout
    from io import StringIO

    work = tmp_path_factory.mktemp("tune")
    out = StringIO()
    with in_dir(work):
        with redirect_stdout(out):
            assert run_cli(["tune", "imdb", "--trials", "4", "--study", "s", *_args(work, data_dir, tiny_model)]) == 0
        (work / "console.txt").write_text(out.getvalue())
        yield work


def test_the_study_names_its_metric_and_each_trial_line_its_parameters(study):
    """optuna-dashboard labels the objective with the study's metric names ("Objective 0" without them); each trial's
    console line names its parameters, and a pruned trial's number is said to be an intermediate value."""
    s = optuna.load_study(study_name="s", storage=f"sqlite:///{study / 'optuna.db'}")
    assert s.metric_names == ["val_accuracy"]
    out = (study / "console.txt").read_text()
    for t in s.get_trials():
        (line,) = [ln for ln in out.splitlines() if re.match(rf"trial\s+{t.number} ", ln)]
        assert f"optim.lr={t.params['optim.lr']:.3g}" in line, line
        if t.state.name == "COMPLETE":
            assert f"val_accuracy {t.value:.4f}" in line
        else:
            assert re.search(r"PRUNED\s+stopped at validation \d+: val_accuracy [\d.]+ there \(intermediate\)", line)
        assert "best val_accuracy" in line or "no complete trial yet" in line
        assert t.user_attrs["mlflow_run_url"].endswith(
            f"/runs/{t.user_attrs['mlflow_run_id']}?workflowType=machine_learning"
        )
    assert re.search(r"open it: .*/#/experiments/\d+/runs/\w+\?workflowType=machine_learning", out)


def test_study_and_nested_mlflow_runs(study):
    s = optuna.load_study(study_name="s", storage=f"sqlite:///{study / 'optuna.db'}")
    trials = s.get_trials()
    assert len(trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    for t in trials:  # conditional parameter: dropout only with the cosine schedule
        assert ("model.dropout" in t.params) == (t.params["optim.scheduler"] == "cosine")
    client = MlflowClient(f"sqlite:///{study / 'mlruns.db'}")
    exp = client.get_experiment_by_name("imdb")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mode") == "tune"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_id == s.user_attrs["mlflow_parent_run_id"]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert sorted(c.data.tags["optuna.trial"] for c in children) == ["0", "1", "2", "3"]
    for c in children:
        t = trials[int(c.data.tags["optuna.trial"])]
        assert c.data.tags["optuna.state"] == t.state.name
        assert c.data.params["optim.lr"] == str(t.params["optim.lr"])
        assert not any(k.startswith("test_") for k in c.data.metrics)  # the test split is never touched
        assert "split.test.rows" not in c.data.params
        assert client.get_metric_history(c.info.run_id, "val_accuracy")
    best = s.best_trial
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    assert parent.data.tags["optuna.best_trial"] == str(best.number)
    assert parent.data.metrics["trials_complete"] + parent.data.metrics.get("trials_pruned", 0) == 4
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "tune")}
    assert {
        "tune/optimization_history.html",
        "tune/optimization_history.png",
        "tune/best.json",
        "tune/space.json",
    } <= arts


def test_same_command_resumes_the_study(study, data_dir, tiny_model, capsys):
    os.chdir(study)
    args = ["tune", "imdb", "--study", "s", *_args(study, data_dir, tiny_model)]
    assert run_cli([*args[:2], "--trials", "4", *args[2:]]) == 0
    assert "already has 4 finished trial(s)" in capsys.readouterr().out
    assert run_cli([*args[:2], "--trials", "5", *args[2:]]) == 0
    s = optuna.load_study(study_name="s", storage=f"sqlite:///{study / 'optuna.db'}")
    assert len(s.get_trials()) == 5 and s.user_attrs["mlflow_parent_run_id"]
    client = MlflowClient(f"sqlite:///{study / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("imdb").experiment_id])
    assert sum(r.data.tags.get("mode") == "tune" for r in runs) == 1  # still one parent run


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_seeded_sampler_repeats_first_trials(tmp_path):
    import yaml

    from harness.tuning.space import SearchSpace, suggest
    from harness.tuning.study import open_storage, open_study

    space = SearchSpace.model_validate(yaml.safe_load(SPACE))
    firsts = []
    for i in range(2):
        storage = open_storage(f"sqlite:///{tmp_path / f'o{i}.db'}")
        st = open_study("s", storage, "maximize", seed=7, pruner="median")
        firsts.append([suggest(st.ask(), space) for _ in range(3)])
    assert firsts[0] == firsts[1]


@pytest.mark.parametrize(
    "interval, epochs, reports, min_resource", [(0.25, 2, 8, 1), (0.5, 2, 4, 1), (0.125, 4, 32, 4)]
)
def test_successive_halving_rungs_follow_the_validations_a_trial_makes(interval, epochs, reports, min_resource):
    from harness.families.registry import get_task
    from harness.tuning.study import make_pruner, make_study

    space = Path(__file__).parent.parent / "configs/hpo/classification.yaml"
    study = make_study(
        get_task("imdb"), space_path=space, study_name="s", storage_url="sqlite:///:memory:", trials=4, workers=1,
        pruner="sha", seed=None,
        overrides=[f"trainer.val_check_interval={interval}", f"trainer.max_epochs={epochs}"],
    )  # fmt: skip
    assert study.reports == reports
    pruner = make_pruner("sha", study.reports)
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner) and pruner._min_resource == min_resource
    assert pruner._reduction_factor == 3


def test_a_trial_is_never_pruned_after_its_last_validation(tmp_path, data_dir, tiny_model):
    """Pruning there saves nothing: a trial that ran to its end is COMPLETE with its value, even when it is the
    worst (three seeded trials validated at 1.0 at every step)."""
    _seed_study(tmp_path / "optuna.db")
    os.chdir(tmp_path)
    args = _args(tmp_path, data_dir, tiny_model, "trainer.val_check_interval=1.0", "trainer.max_epochs=1")
    assert run_cli(["tune", "imdb", "--trials", "4", "--study", "s", "--pruner", "median", *args]) == 0
    t = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").get_trials()[-1]
    assert t.state.name == "COMPLETE" and len(t.intermediate_values) == 1 and t.value < 1.0


def _seed_study(path: Path, name: str = "s") -> None:
    """Three finished trials that validated at 1.0: any real trial of the tiny model is below their median."""
    st = optuna.create_study(study_name=name, storage=f"sqlite:///{path}", direction="maximize")
    for _ in range(3):
        st.add_trial(
            optuna.trial.create_trial(
                params={"optim.lr": 1e-3, "optim.scheduler": "linear"},
                distributions={
                    "optim.lr": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True),
                    "optim.scheduler": optuna.distributions.CategoricalDistribution(["linear", "cosine"]),
                },
                value=1.0,
                intermediate_values={0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0},
            )
        )


def _check_pruned(tmp_path: Path) -> None:
    s = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    t = s.get_trials()[-1]
    assert t.state.name == "PRUNED" and len(t.intermediate_values) == 1
    assert t.user_attrs["epochs"] == 0.5  # stopped at the first of four validations
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    run = client.get_run(t.user_attrs["mlflow_run_id"])
    assert run.data.tags["optuna.state"] == "PRUNED" and run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 1


def test_pruning_stops_a_bad_trial(tmp_path, data_dir, tiny_model):
    _seed_study(tmp_path / "optuna.db")
    os.chdir(tmp_path)
    args = ["--pruner", "median", *_args(tmp_path, data_dir, tiny_model)]
    assert run_cli(["tune", "imdb", "--trials", "4", "--study", "s", *args]) == 0
    _check_pruned(tmp_path)


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_pruning_under_ddp_two_cpu_processes(tmp_path, data_dir, tiny_model, strategy):
    """Rank 0 decides and broadcasts; both ranks stop at the same validation and exit cleanly (replicated or
    sharded)."""
    _seed_study(tmp_path / "optuna.db")
    cmd = [
        sys.executable,
        "-m",
        "harness.cli",
        "tune",
        "imdb",
        "--trials",
        "4",
        "--study",
        "s",
        "--pruner",
        "median",
        *_args(
            tmp_path,
            data_dir,
            tiny_model,
            f"trainer.strategy={strategy}",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            "trainer.num_threads=1",
        ),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a follower rank ends a pruned trial normally: any non-zero exit there lets Lightning's observer SIGKILL the
    # whole study a few seconds later (a race this check catches even when the study got through)
    assert "Traceback" not in proc.stderr and "terminated with code" not in proc.stderr, proc.stderr[-3000:]
    assert "PRUNED" in proc.stdout
    _check_pruned(tmp_path)


def _running_child_runs(tmp_path: Path) -> int:
    try:
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
        exp = client.get_experiment_by_name("imdb")
        runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'") if exp else []
    except Exception:
        return 0
    return sum("mlflow.parentRunId" in r.data.tags for r in runs)


@pytest.mark.slow  # two workers and a kill (40 s): make test-slow, which CI runs
def test_parallel_workers_survive_a_killed_worker(tmp_path, data_dir, tiny_model):
    """Two workers on sqlite; one is killed with SIGKILL mid-trial: its trial is marked FAIL (no heartbeat) and
    retried, the study still finishes its trials, and no worker hits 'database is locked'."""
    space = SPACE.replace("max_epochs: 2", "max_epochs: 4")  # trials long enough to be killed inside one
    env = {**os.environ, "HARNESS_TUNE_GRACE_S": "4", "HARNESS_TUNE_HEARTBEAT_S": "1", "CI": "1"}
    cmd = [
        sys.executable,
        "-m",
        "harness.cli",
        "tune",
        "imdb",
        "--trials",
        "5",
        "--workers",
        "2",
        "--study",
        "s",
        "--pruner",
        "none",
        *_args(tmp_path, data_dir, tiny_model, space=space),
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    victim = None
    deadline = time.time() + 120
    while time.time() < deadline and victim is None:
        time.sleep(1)
        workers = [
            q.pid
            for q in psutil.process_iter(["cmdline"])
            if "--worker-index" in (q.info["cmdline"] or [])
            and q.info["cmdline"][q.info["cmdline"].index("--worker-index") + 1] == "1"
        ]
        try:
            running = optuna.load_study(study_name="s", storage=storage).get_trials(
                states=(optuna.trial.TrialState.RUNNING,)
            )
        except Exception:
            continue
        if workers and len(running) == 2 and _running_child_runs(tmp_path) == 2:
            time.sleep(1)  # inside the trial: both workers' MLflow runs exist
            still = optuna.load_study(study_name="s", storage=storage).get_trials(
                states=(optuna.trial.TrialState.RUNNING,)
            )
            if len(still) == 2 and _running_child_runs(tmp_path) == 2:  # neither trial ended meanwhile
                victim = int(workers[0])
                os.kill(victim, signal.SIGKILL)
    assert victim is not None, "no worker to kill"
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "database is locked" not in out
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    states = [t.state.name for t in trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") >= 5
    failed = next(t for t in trials if t.state.name == "FAIL")
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
    assert retried and retried[0].params == failed.params
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("imdb").experiment_id], filter_string=f"tags.`optuna.trial` = '{failed.number}'"
    )
    assert [(r.info.status, r.data.tags["optuna.state"]) for r in runs] == [("FAILED", "FAIL")]


def _serve(cmd: list[str], env: dict, cwd: Path, url: str) -> subprocess.Popen:
    import urllib.request

    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                raise AssertionError(f"{cmd[0]} did not come up at {url}") from None
            time.sleep(1)


def _text(dom: str) -> str:
    return " ".join(re.sub(r"<[^>]*>", " ", re.sub(r"<style.*?</style>", " ", dom, flags=re.S)).split())


def _browser_dom(url: str, tmp: Path) -> str:
    """The page as a real browser renders it (headless Chromium, scripts run)."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no Chromium on this machine")
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'chrome'}",
        "--virtual-time-budget=15000",
        "--dump-dom",
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


@pytest.mark.slow
def test_make_dashboard_shows_the_study_in_a_browser(study, tmp_path):
    from harness.paths import project_root

    port = free_port()
    env = dict(os.environ, OPTUNA_STORAGE=f"sqlite:///{study / 'optuna.db'}", DASHBOARD_PORT=str(port))
    proc = _serve(["make", "-s", "-C", str(project_root()), "dashboard"], env, study, f"http://127.0.0.1:{port}/")
    try:
        parent = optuna.load_study(study_name="s", storage=f"sqlite:///{study / 'optuna.db'}").user_attrs[
            "mlflow_parent_run_id"
        ]
        text = _text(_browser_dom(f"http://127.0.0.1:{port}/dashboard", tmp_path))
        assert re.search(r"\bs Direction: MAXIMIZE", text), text[-2000:]  # the study in the study list
        text = _text(_browser_dom(f"http://127.0.0.1:{port}/dashboard/studies/1", tmp_path))
        assert "s (id=1)" in text and "Best Trial (number=" in text, text[-2000:]
        assert "val_accuracy" in text and "Objective 0" not in text  # the objective named by the study's metric
        assert "trial #3" in text and parent in text  # every trial's curve, and the link to the MLflow parent
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_mlflow_ui_shows_trials_nested_under_the_study(study, tmp_path):
    from harness.paths import project_root

    port = free_port()
    uri = f"sqlite:///{study / 'mlruns.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PORT=str(port))
    proc = _serve(["make", "-s", "-C", str(project_root()), "ui"], env, study, f"http://127.0.0.1:{port}/health")
    try:
        exp = MlflowClient(uri).get_experiment_by_name("imdb")
        text = _text(_browser_dom(f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs", tmp_path))
        assert "study-s" in text, text[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_retrain_best_on_train_plus_validation_and_register(study, data_dir, tiny_model, capsys):
    os.chdir(study)
    args = ["tune", "imdb", "--trials", "4", "--study", "s", *_args(study, data_dir, tiny_model), "retrain_best=true"]
    assert run_cli(args) == 0
    out = capsys.readouterr().out
    uri = f"sqlite:///{study / 'mlruns.db'}"
    client = MlflowClient(uri)
    (mv,) = client.search_model_versions("name='imdb-best'")
    run = client.get_run(mv.run_id)
    s = optuna.load_study(study_name="s", storage=f"sqlite:///{study / 'optuna.db'}")
    assert run.data.tags["optuna.retrain_of_trial"] == str(s.best_trial.number)
    assert run.data.tags["mlflow.parentRunId"] == s.user_attrs["mlflow_parent_run_id"]
    assert run.data.params["optim.lr"] == str(s.best_params["optim.lr"])
    assert run.data.params["data.train_on_validation"] == "true"
    assert "split.validation.rows" not in run.data.params  # validation rows went back into train
    assert "without the rows" not in run.data.params["split.train.selection"]
    m = run.data.metrics
    assert m["test_accuracy_ci_low"] <= m["test_accuracy"] <= m["test_accuracy_ci_high"]
    parent = client.get_run(s.user_attrs["mlflow_parent_run_id"])
    assert parent.data.tags["optuna.retrain_run_id"] == run.info.run_id
    assert parent.data.metrics["best_test_accuracy"] == m["test_accuracy"]
    # the registered version is of the run's logged model (MLflow 3), and the console says exactly what trained it
    (model_output,) = run.outputs.model_outputs
    assert mv.source == f"models:/{model_output.model_id}"
    versions = json.loads(client.get_logged_model(model_output.model_id).tags["mlflow.modelVersions"])
    assert {"name": "imdb-best", "version": str(mv.version)} in versions
    rows = run.data.params["split.train.rows"]
    line = [ln for ln in out.splitlines() if ln.startswith("best parameters on ")][0]
    assert f"trained on {int(rows):,} of " in line and re.search(r"accuracy [\d.]+ \[[\d.]+, [\d.]+\] \(95% CI\)", line)
    assert "/#/models/imdb-best/versions/" in out and "workflowType=machine_learning" in out


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_orphaned_after_the_last_check_is_failed_when_the_workers_are_done(tmp_path, monkeypatch):
    """A worker killed while the others finish the study's last trials: nobody starts another trial to notice its
    stale heartbeat (CI met this), so the coordinator marks it FAIL, and its retry waits in the study."""
    from types import SimpleNamespace

    from harness.tuning import study as S

    monkeypatch.setattr(S, "GRACE_S", 1)
    monkeypatch.setattr(S, "HEARTBEAT_S", 1)
    storage = S.open_storage(f"sqlite:///{tmp_path / 'o.db'}")
    st = optuna.create_study(study_name="s", storage=storage)
    trial = st.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.record_heartbeat(trial._trial_id)  # then the worker dies: no more heartbeats
    time.sleep(2.5)
    S._fail_orphans(SimpleNamespace(name="s", storage=storage))
    states = [t.state.name for t in st.get_trials()]
    assert states == ["FAIL", "WAITING"]  # failed, and its retry enqueued
    assert st.get_trials()[1].system_attrs.get("failed_trial") == 0

"""Hyperparameter search with Optuna: `harness tune <task>` (`make tune TASK=imdb TRIALS=20 WORKERS=4`).

- The search space is a YAML file (`configs/hpo/<family>.yaml` by default): any run-config key, float (linear or
  log), int, or categorical, optionally conditional on another parameter's value (`when:`), plus fixed overrides
  for every trial (`config:`). It is checked before anything runs: unknown keys, empty or inverted ranges, values
  the config would reject.
- Each trial is a normal harness run in objective mode (train + validate, the test split is never loaded) and a
  nested MLflow run under one parent run per study. The objective is the task's main metric on the validation
  split, in the task's direction (generation families: the validation loss, minimised, since generating for
  every validation example would dominate a trial).
- Pruning: the validation metric is reported to Optuna at every validation; the decision is taken on rank 0 and
  broadcast, so it works under DDP. Median pruner by default, Hyperband or none selectable.
- Storage: a sqlite file (`optuna.db`) by default, or any SQLAlchemy URL. The same command resumes the same study.
  Workers are separate processes sharing the study; sqlite waits for locks instead of failing, heartbeats mark a
  killed worker's trial FAIL, and it is retried once (`RetryHeartbeatStaleTrialCallback`, formerly
  `RetryFailedTrialCallback`).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import Field, ValidationError, model_validator

from harness.config import RunConfig, Strict, TaskSpec, check_keys, flatten, load_yaml, redact_uri, set_dotted
from harness.errors import ConfigError
from harness.families import search_objective

DEFAULT_STORAGE = "sqlite:///optuna.db"
HEARTBEAT_S = int(os.environ.get("HARNESS_TUNE_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("HARNESS_TUNE_GRACE_S", "30"))  # a trial without heartbeat this long is FAIL


# ---- search space ----------------------------------------------------------------------------------------------------


class ParamSpec(Strict):
    type: Literal["float", "int", "categorical"]
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[list[Union[float, int, str, bool, None]]] = None
    when: dict[str, Any] = {}  # sample only when these parameters have these values (a value or a list of values)

    @model_validator(mode="after")
    def _check(self) -> "ParamSpec":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty `choices` list")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical parameter takes `choices`, not low/high")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs `low` and `high`")
        if self.low > self.high or (self.type == "float" and self.low == self.high):
            raise ValueError(f"empty or inverted range: low {self.low} >= high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0 (got {self.low})")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an int parameter needs whole-number low and high")
        return self


class SearchSpace(Strict):
    params: dict[str, ParamSpec] = Field(min_length=1)
    config: dict[str, Any] = {}  # fixed overrides for every trial (e.g. a smaller subset for the search)
    path: Optional[str] = Field(default=None, exclude=True)

    def fixed_overrides(self) -> list[str]:
        """`config:` as command-line overrides (key=value), applied to every trial before the sampled values."""
        return [f"{k}={_yaml_value(v)}" for k, v in flatten(self.config).items()]

    @model_validator(mode="after")
    def _check(self) -> "SearchSpace":
        for name, p in self.params.items():
            for dep in p.when:
                if dep not in self.params:
                    raise ValueError(f"'{name}': `when` refers to '{dep}', which is not a parameter of this space")
                if dep == name:
                    raise ValueError(f"'{name}': `when` cannot refer to itself")
        return self


def load_space(path: Path) -> SearchSpace:
    if not path.is_file():
        from harness.paths import project_root

        known = sorted(p.name for p in (project_root() / "configs" / "hpo").glob("*.yaml"))
        raise ConfigError(f"search space {path} does not exist", f"pass --space with a YAML file (shipped: {', '.join(known)})")
    data = load_yaml(path)
    try:
        space = SearchSpace.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{path}: {loc + ': ' if loc else ''}{msg}", "fix the search space (see README.md, 'Tuning')") from None
    space.path = str(path)
    return space


def default_space_path(task: TaskSpec) -> Path:
    from harness.paths import project_root

    return project_root() / "configs" / "hpo" / f"{task.family}.yaml"


def check_space(space: SearchSpace, task: TaskSpec, overrides: list[str]) -> None:
    """Every key must be a run-config key, and the range ends / choices must be values the config accepts."""
    from harness.config import resolve_run_config

    for key in [*space.params, *flatten(space.config)]:
        one: dict[str, Any] = {}
        set_dotted(one, key, None)
        check_keys(one, RunConfig, f"{space.path}: parameter '{key}'")
    fixed = space.fixed_overrides()
    for key, p in space.params.items():
        values = p.choices if p.type == "categorical" else [p.low, p.high]
        for v in values:
            if p.type == "int":
                v = int(v)
            try:
                resolve_run_config(task, [*fixed, *overrides, f"{key}={_yaml_value(v)}"])
            except ConfigError as e:
                raise ConfigError(f"{space.path}: parameter '{key}' value {v!r} is rejected by the config: {e.message}",
                                  "change the range or choices") from None


def _yaml_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """Sample the space in file order; a conditional parameter is sampled only when its condition holds."""
    chosen: dict[str, Any] = {}
    for name, p in space.params.items():
        if p.when and not all(_matches(chosen.get(dep, _MISSING), want) for dep, want in p.when.items()):
            continue
        if p.type == "float":
            chosen[name] = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        elif p.type == "int":
            chosen[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            chosen[name] = trial.suggest_categorical(name, p.choices)
    return chosen


_MISSING = object()


def _matches(value: Any, want: Any) -> bool:
    if value is _MISSING:
        return False
    return value in want if isinstance(want, list) else value == want


# ---- pruning ---------------------------------------------------------------------------------------------------------


def make_pruning_callback(trial: Any, monitor: str):
    """A Lightning callback: report `monitor` after each validation, prune on rank 0, broadcast the decision.

    Pruning stops training gracefully (`trainer.should_stop`) on every rank at once; the caller then raises
    `optuna.TrialPruned`. Ranks other than 0 get `trial=None` and only follow the broadcast.
    """
    import lightning as L

    class OptunaPruning(L.Callback):
        def __init__(self) -> None:
            self.pruned = False
            self.reports = 0
            self.last: Optional[float] = None

        def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            if trainer.sanity_checking:
                return
            value = trainer.callback_metrics.get(monitor)
            prune = False
            if trainer.is_global_zero and trial is not None and value is not None:
                v = float(value)
                self.last = v
                trial.report(v, step=self.reports)
                prune = trial.should_prune()
            self.reports += 1
            prune = trainer.strategy.broadcast(prune, src=0)
            if prune:
                self.pruned = True
                trainer.should_stop = True

    return OptunaPruning()


# ---- storage and study -----------------------------------------------------------------------------------------------


def open_storage(url: str) -> Any:
    import warnings

    import optuna
    from optuna.storages import RDBStorage

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:  # Optuna >= 4.9 renamed the retry-a-dead-worker's-trial callback
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        retry = {"heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=1)}
    except ImportError:  # pragma: no cover - older Optuna
        from optuna.storages import RetryFailedTrialCallback

        retry = {"failed_trial_callback": RetryFailedTrialCallback(max_retry=1)}
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # parallel workers: wait for the write lock instead of failing with "database is locked"
        engine_kwargs = {"connect_args": {"timeout": 120}}
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        return RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, **retry,
        )
    except Exception as e:  # sqlalchemy: bad URL, unreachable host, missing driver...
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else e.__class__.__name__
        raise ConfigError(f"cannot open the study storage {redact_uri(url)} ({e.__class__.__name__}: {first})",
                          "check the URL, that the database is reachable, and its driver is installed") from None
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_pruner(name: str) -> Any:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner '{name}'", "use median, hyperband or none")


def open_study(name: str, storage: Any, direction: str, seed: int, pruner: str, worker: int = 0) -> Any:
    import optuna

    sampler = optuna.samplers.TPESampler(seed=seed + worker, n_startup_trials=5)
    try:
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    except Exception as e:
        raise ConfigError(f"cannot read studies from the storage ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})",
                          "check the storage URL and that the database is reachable") from None
    if name in existing:
        have = existing[name].direction.name.lower()
        if have != direction:
            raise ConfigError(
                f"study '{name}' exists with direction '{have}', but this task's metric is to '{direction}'",
                "use another --study name, or the task the study was made for",
            )
    return optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler,
                               pruner=make_pruner(pruner), load_if_exists=True)


# ---- one trial -------------------------------------------------------------------------------------------------------


def run_trial(trial: Any, task: TaskSpec, space: SearchSpace, overrides: list[str], study_name: str,
              parent_run_id: str, params: Optional[dict[str, Any]] = None) -> float:
    """Run one trial as a nested MLflow run. `params` given: a DDP follower rank replaying rank 0's trial."""
    import optuna

    from harness.config import resolve_run_config
    from harness.runner import run

    if params is None:
        params = suggest(trial, space)
    number = trial.number if trial is not None else int(os.environ.get("HARNESS_TRIAL_NUMBER", "0"))
    chosen = [f"{k}={_yaml_value(v)}" for k, v in params.items()]
    trial_overrides = [
        *space.fixed_overrides(), *overrides, *chosen,
        f"tracking.run_name=trial-{number}",
        f"tracking.output_dir={Path('.harness') / 'tune' / study_name / f'trial-{number}'}",
    ]
    cfg = resolve_run_config(task, trial_overrides)
    # nested under the study's parent run in the MLflow UI
    cfg.tracking.tags = {**cfg.tracking.tags, "mlflow.parentRunId": parent_run_id, "optuna.study": study_name,
                         "optuna.trial": str(number)}
    monitor = f"val_{search_objective(task)[0]}"
    callback = make_pruning_callback(trial, monitor)
    # DDP: Lightning starts the other ranks by re-running this command; they replay this trial from the environment
    os.environ["HARNESS_TRIAL_PARAMS"] = json.dumps(params)
    os.environ["HARNESS_TRIAL_NUMBER"] = str(number)
    os.environ["HARNESS_PARENT_RUN_ID"] = parent_run_id
    os.environ.pop("HARNESS_RUN_ID", None)
    result = run(cfg, task, extra_callbacks=[callback], objective=True)
    value = (result.validation or {}).get(monitor)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(f"trial {number} produced no '{monitor}' (task '{task.name}' has no validation split?)",
                          "tune tasks with a validation split (dataset.splits or dataset.derive)")
    if trial is not None and result.run_id:
        from mlflow.tracking import MlflowClient

        state = "PRUNED" if callback.pruned else "COMPLETE"
        client = MlflowClient(cfg.tracking.tracking_uri)
        client.set_tag(result.run_id, "optuna.state", state)
        client.log_metric(result.run_id, "objective", value)
        trial.set_user_attr("mlflow_run_id", result.run_id)
        trial.set_user_attr("validations", callback.reports)
        trial.set_user_attr("epochs", _epochs_run(cfg, callback.reports))
    if callback.pruned:
        raise optuna.TrialPruned(f"pruned after {callback.reports} validation(s)")
    return value


def _epochs_run(cfg: RunConfig, reports: int) -> float:
    """Training epochs a trial ran, from its validation count (validations per epoch from val_check_interval)."""
    v = cfg.trainer.val_check_interval
    per_epoch = round(1 / v) if isinstance(v, float) and v < 1 else 1
    return reports / max(per_epoch, 1)


# ---- the study -------------------------------------------------------------------------------------------------------


def _parent_run(study: Any, task: TaskSpec, tracking_uri: str, space: SearchSpace, storage_url: str, seed: int,
                pruner: str, trials: int, workers: int) -> str:
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id:
        try:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            return run_id
        except Exception:
            run_id = None
    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.set_experiment(task.name)
    run = client.create_run(exp.experiment_id, run_name=f"study-{study.study_name}", tags={
        "task": task.name, "family": task.family, "mode": "tune", "optuna.study": study.study_name,
        "optuna.storage": redact_uri(storage_url), "optuna.sampler": type(study.sampler).__name__,
        "optuna.pruner": pruner, "optuna.direction": study.direction.name.lower(),
    })
    run_id = run.info.run_id
    client.log_param(run_id, "tune.seed", str(seed))
    client.log_param(run_id, "tune.trials", str(trials))
    client.log_param(run_id, "tune.workers", str(workers))
    client.log_param(run_id, "tune.space", space.path or "")
    client.log_dict(run_id, space.model_dump(mode="json"), "tune/space.json")
    study.set_user_attr("mlflow_parent_run_id", run_id)
    return run_id


def _progress(study: Any, trial: Any) -> None:
    import optuna

    state = trial.state.name
    reports = trial.intermediate_values
    if state == "PRUNED" and reports:
        value = f"{reports[max(reports)]:.4f} at validation {len(reports)}"
    else:
        value = f"{trial.value:.4f}" if trial.value is not None else "-"
    try:
        best = study.best_trial
        best_s = f"best {best.value:.4f} (trial {best.number})"
    except ValueError:
        best_s = "best -"
    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)))
    print(f"trial {trial.number:>3} {state:<8} value {value} · {best_s} · {done} finished", flush=True)


def worker_main(task: TaskSpec, space: SearchSpace, overrides: list[str], study_name: str, storage_url: str,
                seed: int, pruner: str, trials: int, worker: int) -> None:
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    storage = open_storage(storage_url)
    study = open_study(study_name, storage, search_objective(task)[1], seed, pruner, worker)
    parent = study.user_attrs["mlflow_parent_run_id"]

    def objective(trial: Any) -> float:
        return run_trial(trial, task, space, overrides, study_name, parent)

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if done >= trials:
        print(f"study '{study_name}' already has {done} finished trial(s) (asked for {trials}); raise --trials to "
              "continue it", flush=True)
        return
    total = MaxTrialsCallback(trials, states=finished)
    # a HarnessError (bad config, data) would fail every trial alike: it stops the search with its one-line message
    study.optimize(objective, n_trials=trials - done, callbacks=[total, _progress], gc_after_trial=True)


def tune(task: TaskSpec, *, space_path: Optional[Path], study_name: Optional[str], storage_url: Optional[str],
         trials: int, workers: int, pruner: str, seed: Optional[int], overrides: list[str],
         retrain_best: bool = False) -> dict[str, Any]:
    from harness.config import resolve_run_config
    from harness.runner import configure_runtime

    if trials < 1:
        raise ConfigError(f"--trials {trials}: need at least one trial", "pass --trials N with N >= 1")
    if workers < 1 or workers > trials:
        raise ConfigError(f"--workers {workers} with --trials {trials}: need 1 <= workers <= trials",
                          "use fewer workers than trials (each worker runs whole trials)")
    space = load_space(space_path or default_space_path(task))
    check_space(space, task, overrides)
    base = resolve_run_config(task, [*space.fixed_overrides(), *overrides])
    configure_runtime(base)
    seed = base.seed if seed is None else seed
    study_name = study_name or f"{task.name}-{Path(space.path or 'space').stem}"
    storage_url = storage_url or os.environ.get("OPTUNA_STORAGE") or DEFAULT_STORAGE
    tracking_uri = base.tracking.tracking_uri or "sqlite:///mlruns.db"

    storage = open_storage(storage_url)
    metric, direction = search_objective(task)
    study = open_study(study_name, storage, direction, seed, pruner)
    parent = _parent_run(study, task, tracking_uri, space, storage_url, seed, pruner, trials, workers)
    print(f"study '{study_name}' in {redact_uri(storage_url)} · {direction} val_{metric} · "
          f"{trials} trial(s), {workers} worker(s), pruner {pruner} · MLflow parent run {parent}", flush=True)
    started = time.perf_counter()
    status = "FINISHED"
    try:
        if workers == 1:
            worker_main(task, space, overrides, study_name, storage_url, seed, pruner, trials, 0)
        else:
            _run_workers(task, space, overrides, study_name, storage_url, seed, pruner, trials, workers)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        summary = _summarize(study_name, storage, tracking_uri, parent, time.perf_counter() - started)
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri).set_terminated(parent, status=status)
    if retrain_best and summary.get("best_params"):
        summary["retrain"] = retrain(task, space, overrides, summary, tracking_uri)
    return summary


def retrain(task: TaskSpec, space: SearchSpace, overrides: list[str], summary: dict[str, Any],
            tracking_uri: str) -> dict[str, Any]:
    """The best parameters, trained on train + validation, evaluated once on test, logged and registered as
    `<task>-best` in the MLflow model registry."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from harness.config import resolve_run_config
    from harness.runner import run

    best = [f"{k}={_yaml_value(v)}" for k, v in summary["best_params"].items()]
    cfg = resolve_run_config(task, [*space.fixed_overrides(), *overrides, *best, "data.train_on_validation=true", "log_model=true",
                                    f"tracking.run_name=study-{summary['study']}-best"])
    cfg.tracking.tags = {**cfg.tracking.tags, "mlflow.parentRunId": summary["parent_run_id"],
                         "optuna.study": summary["study"], "optuna.retrain_of_trial": str(summary["best_trial"])}
    print(f"retraining trial {summary['best_trial']}'s parameters on train + validation, then test", flush=True)
    result = run(cfg, task)
    client = MlflowClient(tracking_uri)
    name = f"{task.name}-best"
    try:
        client.create_registered_model(name, description=f"best {task.name} model from Optuna studies")
    except MlflowException:
        pass  # it exists: add a version
    source = client.get_run(result.run_id).info.artifact_uri.rstrip("/") + "/model"
    version = client.create_model_version(name, source=source, run_id=result.run_id,
                                          tags={"optuna.study": summary["study"]})
    metric = f"test_{task.main_metric}"
    value = result.report.estimates[task.main_metric].value if result.report is not None else float("nan")
    client.set_tag(summary["parent_run_id"], "optuna.retrain_run_id", result.run_id)
    client.log_metric(summary["parent_run_id"], f"best_{metric}", value)
    print(f"best parameters on test: {task.main_metric} {value:.4f} · run {result.run_id} · registered as "
          f"'{name}' version {version.version}", flush=True)
    return {"run_id": result.run_id, "test": value, "model": name, "version": version.version}


def _run_workers(task: TaskSpec, space: SearchSpace, overrides: list[str], study_name: str, storage_url: str,
                 seed: int, pruner: str, trials: int, workers: int) -> None:
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = []
    for w in range(workers):
        cmd = [sys.executable, "-m", "harness.cli", "tune", task.name, "--space", space.path or "",
               "--study", study_name, "--storage", storage_url, "--trials", str(trials), "--pruner", pruner,
               "--seed", str(seed), "--worker-index", str(w), *overrides, f"trainer.num_threads={threads}"]
        procs.append(subprocess.Popen(cmd))
    codes = [p.wait() for p in procs]
    if all(c != 0 for c in codes):
        raise ConfigError(f"all {workers} workers failed (exit codes {codes})", "see the messages above")
    lost = [i for i, c in enumerate(codes) if c != 0]
    if lost:
        print(f"worker(s) {lost} stopped early (exit codes {[codes[i] for i in lost]}); the others finished the "
              "study, and a trial left RUNNING by a dead worker was marked FAIL and retried", flush=True)


def _summarize(study_name: str, storage: Any, tracking_uri: str, parent: str, seconds: float) -> dict[str, Any]:
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=study_name, storage=storage)
    all_trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(1 for t in all_trials if t.state == s) for s in TrialState}
    epochs = sum(float(t.user_attrs.get("epochs", 0)) for t in all_trials)
    client = MlflowClient(tracking_uri)
    _close_failed_trial_runs(client, parent, {str(t.number) for t in all_trials if t.state == TrialState.FAIL})
    metrics = {f"trials_{k.lower()}": float(v) for k, v in counts.items() if v}
    metrics["trial_epochs"] = epochs
    metrics["wall_seconds"] = seconds
    summary: dict[str, Any] = {"study": study_name, "counts": counts, "trial_epochs": epochs, "parent_run_id": parent}
    try:
        best = study.best_trial
    except ValueError:
        best = None
    if best is not None:
        metrics["best_value"] = float(best.value)
        summary.update(best_value=best.value, best_params=best.params, best_trial=best.number)
        client.set_tag(parent, "optuna.best_trial", str(best.number))
        if best.user_attrs.get("mlflow_run_id"):
            client.set_tag(parent, "optuna.best_run_id", best.user_attrs["mlflow_run_id"])
        for k, v in best.params.items():  # tags, not params: a resumed study may find a new best
            client.set_tag(parent, f"best.{k}", str(v))
        client.log_dict(parent, {"value": best.value, "trial": best.number, "params": best.params}, "tune/best.json")
    for k, v in metrics.items():
        client.log_metric(parent, k, v)
    _log_plots(study, client, parent)
    print(f"study '{study_name}': " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v)
          + (f" · best val {best.value:.4f} (trial {best.number}): {best.params}" if best else "")
          + f" · {epochs:g} trial-epochs", flush=True)
    return summary


def _close_failed_trial_runs(client: Any, parent: str, failed: set[str]) -> None:
    """A trial whose worker died left its MLflow run RUNNING; mark it FAILED, and tag every failed trial's run."""
    if not failed:
        return
    exp = client.get_run(parent).info.experiment_id
    for r in client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'"):
        if r.data.tags.get("optuna.trial") in failed and r.data.tags.get("optuna.state") != "FAIL":
            client.set_tag(r.info.run_id, "optuna.state", "FAIL")
            if r.info.status == "RUNNING":
                client.set_tag(r.info.run_id, "error", "the worker running this trial stopped (no heartbeat)")
                client.set_terminated(r.info.run_id, status="FAILED")


def _log_plots(study: Any, client: Any, parent: str) -> None:
    """Optimization history, parameter importances, parallel coordinates, intermediate values: HTML + PNG."""
    import tempfile
    import warnings

    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vmpl

    plots = {
        "optimization_history": (vis.plot_optimization_history, vmpl.plot_optimization_history),
        "param_importances": (vis.plot_param_importances, vmpl.plot_param_importances),
        "parallel_coordinate": (vis.plot_parallel_coordinate, vmpl.plot_parallel_coordinate),
        "intermediate_values": (vis.plot_intermediate_values, vmpl.plot_intermediate_values),
    }
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import matplotlib.pyplot as plt

        for name, (html_fn, png_fn) in plots.items():
            try:
                html_fn(study).write_html(str(Path(tmp) / f"{name}.html"), include_plotlyjs=True)
                ax = png_fn(study)
                fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                fig.savefig(Path(tmp) / f"{name}.png", dpi=110, bbox_inches="tight")
                plt.close(fig)
            except Exception:  # too few finished trials for this plot (e.g. importances need 2 with varied params)
                continue
        if any(Path(tmp).iterdir()):
            client.log_artifacts(parent, tmp, "tune")

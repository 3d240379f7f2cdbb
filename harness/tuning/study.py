"""A search: the `Study` (what is searched, where it is stored), its workers and trials, the summary at the end."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.config import RunConfig, TaskSpec, redact_uri, resolve_run_config
from harness.errors import ConfigError
from harness.families import search_objective
from harness.models.loading import BASELINE_PREFIX
from harness.tracking.study import StudyTracker
from harness.tuning.pruning import OptunaPruning
from harness.tuning.space import SearchSpace, as_overrides, check_space, default_space_path, load_space, suggest

DEFAULT_STORAGE = "sqlite:///optuna.db"
HEARTBEAT_S = int(os.environ.get("HARNESS_TUNE_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("HARNESS_TUNE_GRACE_S", "30"))  # a trial without heartbeat this long is FAIL
PRUNERS = ("median", "sha", "hyperband", "none")

# how a DDP rank started by Lightning's launcher (which re-runs the command) learns the trial it takes part in
TRIAL_PARAMS_ENV, TRIAL_NUMBER_ENV, PARENT_RUN_ENV = (
    "HARNESS_TRIAL_PARAMS",
    "HARNESS_TRIAL_NUMBER",
    "HARNESS_PARENT_RUN_ID",
)


@dataclass
class Study:
    """One search: every worker process, trial and DDP rank works from the same one."""

    task: TaskSpec
    space: SearchSpace
    name: str
    storage_url: str
    seed: int
    pruner: str = "sha"
    trials: int = 20
    workers: int = 1
    overrides: list[str] = field(default_factory=list)  # key=value for every trial, after the space's `config:`
    tracking_uri: str = ""
    _storage: Any = field(default=None, repr=False)

    @property
    def metric(self) -> str:
        return search_objective(self.task)[0]

    @property
    def direction(self) -> str:
        return search_objective(self.task)[1]

    @property
    def monitor(self) -> str:
        return f"val_{self.metric}"

    @property
    def storage(self) -> Any:
        if self._storage is None:
            self._storage = open_storage(self.storage_url)
        return self._storage

    def open(self, worker: int = 0) -> Any:
        """The Optuna study (created on first use); each worker samples with its own seed."""
        return open_study(
            self.name, self.storage, self.direction, self.seed, self.pruner, worker, self.reports, self.monitor
        )

    @property
    def reports(self) -> int:
        """Validations (pruning reports) a trial that is not pruned makes."""
        cfg = resolve_run_config(self.task, [*self.space.fixed_overrides(), *self.overrides])
        return _validations_per_epoch(cfg) * cfg.trainer.max_epochs

    def trial_config(self, number: int, params: dict[str, Any], parent_run_id: str) -> RunConfig:
        cfg = resolve_run_config(
            self.task,
            [
                *self.space.fixed_overrides(),
                *self.overrides,
                *as_overrides(params),
                f"tracking.run_name=trial-{number}",
                f"tracking.output_dir={Path('.harness') / 'tune' / self.name / f'trial-{number}'}",
            ],
        )
        # nested under the study's parent run in the MLflow UI
        cfg.tracking.tags = {
            **cfg.tracking.tags,
            "mlflow.parentRunId": parent_run_id,
            "optuna.study": self.name,
            "optuna.trial": str(number),
        }
        return cfg

    def worker_command(self, index: int, threads: int) -> list[str]:
        """The command line of worker process `index` (`--workers N`): the same study, its own sampler seed."""
        return [
            sys.executable,
            "-m",
            "harness.cli",
            "tune",
            self.task.name,
            "--space",
            self.space.path or "",
            "--study",
            self.name,
            "--trials",
            str(self.trials),
            "--pruner",
            self.pruner,
            "--seed",
            str(self.seed),
            "--worker-index",
            str(index),
            *self.overrides,
            f"trainer.num_threads={threads}",
        ]


def make_study(
    task: TaskSpec,
    *,
    space_path: Optional[Path],
    study_name: Optional[str],
    storage_url: Optional[str],
    trials: int,
    workers: int,
    pruner: str,
    seed: Optional[int],
    overrides: list[str],
) -> Study:
    """A Study from the command line's values, checked before anything is created or trained."""
    if trials < 1:
        raise ConfigError(f"--trials {trials}: need at least one trial", "pass --trials N with N >= 1")
    if workers < 1 or workers > trials:
        raise ConfigError(
            f"--workers {workers} with --trials {trials}: need 1 <= workers <= trials",
            "use fewer workers than trials (each worker runs whole trials)",
        )
    if pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner '{pruner}'", f"use {', '.join(PRUNERS)}")
    space = load_space(space_path or default_space_path(task))
    check_space(space, task, overrides)
    base = resolve_run_config(task, [*space.fixed_overrides(), *overrides])
    check_trial_config(base)
    return Study(
        task,
        space,
        name=study_name or f"{task.name}-{Path(space.path or 'space').stem}",
        storage_url=storage_url or os.environ.get("OPTUNA_STORAGE") or DEFAULT_STORAGE,
        seed=base.seed if seed is None else seed,
        pruner=pruner,
        trials=trials,
        workers=workers,
        overrides=list(overrides),
        tracking_uri=base.tracking.uri,
    )


def check_trial_config(cfg: RunConfig) -> None:
    """What a trial cannot be: untrained (nothing to search), or without a validation split to be judged on."""
    if not cfg.train or cfg.model.name.startswith(BASELINE_PREFIX):
        raise ConfigError("a search trial needs training", "tune a trainable model with train=true")
    if cfg.data.train_on_validation:
        raise ConfigError(
            "data.train_on_validation=true leaves a search trial nothing to validate on",
            "use it only for the final fit (harness tune --retrain-best does)",
        )


# ---- storage ---------------------------------------------------------------------------------------------------------


JOURNAL = "journal:"  # journal:<file>: Optuna's JournalFileBackend, several processes on one host, no database
POOL_SIZE, POOL_OVERFLOW = 1, 1  # database connections per worker process: at most 2 (trials + heartbeat thread)


def open_storage(url: str) -> Any:
    """The study storage: sqlite (the default), any SQLAlchemy database URL, or `journal:<file>`."""
    import optuna
    from optuna.storages import RDBStorage

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if url.startswith(JOURNAL):
        return _journal(url[len(JOURNAL) :])
    try:  # Optuna >= 4.9 renamed the retry-a-dead-worker's-trial callback
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        retry = {"heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=1)}
    except ImportError:  # pragma: no cover - older Optuna
        from optuna.storages import RetryFailedTrialCallback

        retry = {"failed_trial_callback": RetryFailedTrialCallback(max_retry=1)}
    if url.startswith("sqlite"):
        # parallel workers: wait for the write lock instead of failing with "database is locked"
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            _check_writable(url, Path(path).expanduser())
    else:  # a server database shared by workers on many hosts: keep each worker's pool small and bounded
        engine_kwargs = {"pool_pre_ping": True, "pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW}
    try:
        return RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, **retry
        )
    except Exception as e:  # sqlalchemy: bad URL, unreachable host, missing driver...
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else e.__class__.__name__
        raise ConfigError(
            f"cannot open the study storage {redact_uri(url)} ({e.__class__.__name__}: {first})",
            "check the URL, that the database is reachable, and its driver is installed",
        ) from None
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)


def _check_writable(url: str, path: Path) -> None:
    """A study file (or its folder) that cannot be written, named as such (SQLite would say "unable to open")."""
    where = path if path.exists() else path.parent
    if not os.access(where, os.W_OK):
        what = f"{path} is read-only" if path.exists() else f"the folder {where} is read-only"
        raise ConfigError(
            f"cannot use the study storage {redact_uri(url)}: {what} (trials cannot be recorded)",
            f"make {where} writable, or pass --storage (or OPTUNA_STORAGE) a storage that works; "
            "sqlite:///optuna.db needs no server",
        )


def _journal(path: str) -> Any:
    """A journal file: no database server; no heartbeats either (a dead worker's trial stays RUNNING)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not path:
        raise ConfigError("journal storage needs a file: journal:<path>", "e.g. --storage journal:optuna.log")
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        return JournalStorage(JournalFileBackend(str(p)))
    except OSError as e:
        raise ConfigError(f"cannot open the journal {p} ({e.strerror or e})", "give a writable file path") from None


def make_pruner(name: str, reports: int = 4) -> Any:
    """`reports`: validations per unpruned trial, to which successive halving's rungs are tuned."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "sha":  # rungs at 1/8, 3/8 (and 9/8: never) of a trial's validations; a third goes on at each
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, round(reports / 8)), reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=reports, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner '{name}'", f"use {', '.join(PRUNERS)}")


def open_study(
    name: str,
    storage: Any,
    direction: str,
    seed: int,
    pruner: str,
    worker: int = 0,
    reports: int = 4,
    metric: Optional[str] = None,
) -> Any:
    import optuna

    sampler = optuna.samplers.TPESampler(seed=seed + worker, n_startup_trials=5)
    try:
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    except Exception as e:
        raise ConfigError(
            f"cannot read studies from the storage ({e.__class__.__name__}: {str(e).splitlines()[0][:200]})",
            "check the storage URL and that the database is reachable",
        ) from None
    if name in existing:
        have = existing[name].direction.name.lower()
        if have != direction:
            raise ConfigError(
                f"study '{name}' exists with direction '{have}', but this task's metric is to '{direction}'",
                "use another --study name, or the task the study was made for",
            )
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction=direction,
        sampler=sampler,
        pruner=make_pruner(pruner, reports),
        load_if_exists=True,
    )
    if metric and study.metric_names != [metric]:
        # optuna-dashboard names the objective axis after it (else "Objective 0")
        study.set_metric_names([metric])
    return study


# ---- trials ----------------------------------------------------------------------------------------------------------


def run_trial(study: Study, trial: Any, parent_run_id: str, params: Optional[dict[str, Any]] = None) -> float:
    """One trial as a nested MLflow run. `params` given: a DDP follower rank replaying rank 0's trial."""
    import optuna

    from harness.run.runner import run

    if params is None:
        params = suggest(trial, study.space)
    number = trial.number if trial is not None else int(os.environ.get(TRIAL_NUMBER_ENV, "0"))
    cfg = study.trial_config(number, params, parent_run_id)
    callback = OptunaPruning(trial, study.monitor)
    # DDP: Lightning starts the other ranks by re-running this command; they replay this trial from the environment
    os.environ[TRIAL_PARAMS_ENV] = json.dumps(params)
    os.environ[TRIAL_NUMBER_ENV] = str(number)
    os.environ[PARENT_RUN_ENV] = parent_run_id
    os.environ.pop("HARNESS_RUN_ID", None)
    result = run(cfg, study.task, extra_callbacks=[callback], objective=True)
    value = (result.validation or {}).get(study.monitor)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(
            f"trial {number} produced no '{study.monitor}' (task '{study.task.name}' has no validation split?)",
            "tune tasks with a validation split (dataset.splits or dataset.derive)",
        )
    if trial is not None and result.run_id:
        StudyTracker(cfg.tracking.uri).record_trial(result.run_id, "PRUNED" if callback.pruned else "COMPLETE", value)
        trial.set_user_attr("mlflow_run_id", result.run_id)
        if result.experiment_id:  # optuna-dashboard lists user attributes: the trial's run, one click away
            from harness.tracking import links

            base = links.ui_base(cfg.tracking.uri)
            trial.set_user_attr("mlflow_run_url", links.run_url(base, result.experiment_id, result.run_id))
        trial.set_user_attr("validations", callback.reports)
        trial.set_user_attr("epochs", _epochs_run(cfg, callback.reports))
    if callback.pruned:
        raise optuna.TrialPruned(f"pruned after {callback.reports} validation(s)")
    return value


def replay_trial(study: Study) -> None:
    """A DDP rank other than 0: take part in the trial rank 0 is running (its parameters come by environment).

    A pruned trial ends this rank normally: a non-zero exit here would make Lightning's process observer on rank 0
    kill the whole study (SIGKILL) although pruning is a result, not a fault.
    """
    import optuna

    try:
        run_trial(study, None, os.environ[PARENT_RUN_ENV], params=json.loads(os.environ[TRIAL_PARAMS_ENV]))
    except optuna.TrialPruned:
        pass


def is_ddp_follower() -> bool:
    return bool(os.environ.get(TRIAL_PARAMS_ENV)) and int(os.environ.get("LOCAL_RANK", "0") or 0) > 0


def _validations_per_epoch(cfg: RunConfig) -> int:
    v = cfg.trainer.val_check_interval
    return max(round(1 / v) if isinstance(v, float) and v < 1 else 1, 1)


def _epochs_run(cfg: RunConfig, reports: int) -> float:
    """Training epochs a trial ran, from its validation count (validations per epoch from val_check_interval)."""
    return reports / _validations_per_epoch(cfg)


def _progress(study: Any, trial: Any) -> None:
    """One line per finished trial: its parameters, its value named by the study's metric, and what a pruned trial's
    number is (the last intermediate value it reported, at the rung where the pruner stopped it: not a final value,
    and not comparable with the best)."""
    import optuna

    metric = (study.metric_names or ["value"])[0]
    state = trial.state.name
    reports = trial.intermediate_values
    if state == "PRUNED" and reports:
        value = f"stopped at validation {len(reports)}: {metric} {reports[max(reports)]:.4f} there (intermediate)"
    else:
        value = f"{metric} {trial.value:.4f}" if trial.value is not None else f"{metric} -"
    try:
        best = study.best_trial
        best_s = f"best {metric} {best.value:.4f} (trial {best.number})"
    except ValueError:
        best_s = "no complete trial yet"
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    params = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    print(f"trial {trial.number:>3} {state:<8} {value} · {params} · {best_s} · {done} finished", flush=True)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ---- workers ---------------------------------------------------------------------------------------------------------


def worker_main(study: Study, worker: int = 0) -> None:
    """Run trials until the study has `study.trials` finished ones (shared with any other workers)."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    optuna_study = study.open(worker)
    parent = optuna_study.user_attrs["mlflow_parent_run_id"]
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(optuna_study.get_trials(deepcopy=False, states=finished))
    if done >= study.trials:
        print(
            f"study '{study.name}' already has {done} finished trial(s) (asked for {study.trials}); raise --trials "
            "to continue it",
            flush=True,
        )
        return
    # a HarnessError (bad config, data) would fail every trial alike: it stops the search with its one-line message.
    # Optuna's own "trial failed" warning (with a traceback, also for Ctrl-C) is not shown: the error is, once.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        optuna_study.optimize(
            lambda trial: run_trial(study, trial, parent),
            n_trials=study.trials - done,
            callbacks=[MaxTrialsCallback(study.trials, states=finished), _progress],
            gc_after_trial=True,
        )
    except Exception as e:
        # Ctrl-C / SIGTERM while Optuna records a finished trial: its bookkeeping then fails with an error of its
        # own (an unset local), with the KeyboardInterrupt as the context. It is still the interrupt.
        if _caused_by_interrupt(e):
            raise KeyboardInterrupt(str(e)) from None
        raise


def _caused_by_interrupt(e: BaseException) -> bool:
    seen: set[int] = set()
    cur: Optional[BaseException] = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def join(study: Study) -> None:
    """A worker for a study that a coordinator (`harness tune` without --join) created and summarizes: it runs trials
    until the study has its finished trials; its sampler seed differs from every other worker's."""
    import optuna

    from harness.tracking.store import check_store

    check_store(study.tracking_uri)
    names = [s.study_name for s in optuna.get_all_study_summaries(study.storage, include_best_trial=False)]
    if study.name not in names or not study.open().user_attrs.get("mlflow_parent_run_id"):
        raise ConfigError(
            f"study '{study.name}' has not been started in {redact_uri(study.storage_url)}",
            "start it with harness tune (without --join) on one host, then join from the others",
        )
    worker_main(study, worker=1000 + os.getpid() % 100000)


WORKER_ENV = "HARNESS_TUNE_WORKER"


def _run_workers(study: Study) -> None:
    threads = max(1, (os.cpu_count() or 1) // study.workers)
    env = {**os.environ, "OPTUNA_STORAGE": study.storage_url}  # not on the command line: it may hold a password
    env[WORKER_ENV] = "1"  # a worker stopped by a signal leaves the one line about it to this process
    procs = [subprocess.Popen(study.worker_command(w, threads), env=env) for w in range(study.workers)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the workers close their trials' runs as KILLED, then we stop
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    if all(c != 0 for c in codes):
        raise ConfigError(f"all {study.workers} workers failed (exit codes {codes})", "see the messages above")
    lost = [i for i, c in enumerate(codes) if c != 0]
    if lost:
        _fail_orphans(study)
        print(
            f"worker(s) {lost} stopped early (exit codes {[codes[i] for i in lost]}); the others finished the "
            "study, and a trial left RUNNING by a dead worker was marked FAIL and retried",
            flush=True,
        )


def _fail_orphans(study: Study) -> None:
    """Trials a dead worker left RUNNING, marked FAIL once their heartbeat is past the grace period (the study's
    callback enqueues their retry). The other workers check at each new trial; when they had finished the study
    before the grace period ran out, nobody else would (a remote worker's live trial keeps its heartbeat and stays)."""
    import optuna
    from optuna.trial import TrialState

    storage = study.storage
    if getattr(storage, "get_heartbeat_interval", lambda: None)() is None:  # journal files keep no heartbeats
        return
    s = optuna.load_study(study_name=study.name, storage=storage)
    deadline = time.monotonic() + GRACE_S + 2 * HEARTBEAT_S
    while s.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) and time.monotonic() < deadline:
        optuna.storages.fail_stale_trials(s)
        time.sleep(1)


# ---- the search ------------------------------------------------------------------------------------------------------


def tune(study: Study, retrain_best: bool = False) -> dict[str, Any]:
    from harness.runtime import configure_runtime
    from harness.tracking.store import check_store

    configure_runtime(resolve_run_config(study.task, [*study.space.fixed_overrides(), *study.overrides]))
    check_store(study.tracking_uri)
    optuna_study = study.open()
    tracker = StudyTracker(study.tracking_uri)
    parent = tracker.open_parent(
        optuna_study,
        study.task.name,
        tags={
            "task": study.task.name,
            "family": study.task.family,
            "mode": "tune",
            "optuna.study": study.name,
            "optuna.storage": redact_uri(study.storage_url),
            "optuna.sampler": type(optuna_study.sampler).__name__,
            "optuna.pruner": study.pruner,
            "optuna.direction": study.direction,
        },
        params={
            "tune.seed": study.seed,
            "tune.trials": study.trials,
            "tune.workers": study.workers,
            "tune.space": study.space.path or "",
        },
        space=study.space.model_dump(mode="json"),
    )
    print(
        f"study '{study.name}' in {redact_uri(study.storage_url)} · {study.direction} {study.monitor} · "
        f"{study.trials} trial(s), {study.workers} worker(s), pruner {study.pruner} · MLflow parent run {parent}",
        flush=True,
    )
    print(f"open it: {tracker.open_line(parent)}", flush=True)
    started = time.perf_counter()
    status = "FINISHED"
    try:
        if study.workers == 1:
            worker_main(study)
        else:
            _run_workers(study)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        summary = summarize(study, tracker, parent, time.perf_counter() - started)
        tracker.close_parent(parent, status)
    if retrain_best and summary.get("best_params"):
        summary["retrain"] = retrain(study, summary, tracker)
    return summary


def summarize(study: Study, tracker: StudyTracker, parent: str, seconds: float) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    # the summary says itself what there is (no complete trial yet, say); Optuna's own warnings would repeat it
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna_study = optuna.load_study(study_name=study.name, storage=study.storage)
    all_trials = optuna_study.get_trials(deepcopy=False)
    counts = {s.name: sum(1 for t in all_trials if t.state == s) for s in TrialState}
    epochs = sum(float(t.user_attrs.get("epochs", 0)) for t in all_trials)
    tracker.close_failed_trials(parent, {str(t.number) for t in all_trials if t.state == TrialState.FAIL})
    metrics = {f"trials_{k.lower()}": float(v) for k, v in counts.items() if v}
    metrics.update(trial_epochs=epochs, wall_seconds=seconds)
    summary: dict[str, Any] = {"study": study.name, "counts": counts, "trial_epochs": epochs, "parent_run_id": parent}
    try:
        best = optuna_study.best_trial
    except ValueError:
        best = None
    if best is not None:
        metrics["best_value"] = float(best.value)
        summary.update(best_value=best.value, best_params=best.params, best_trial=best.number)
    tracker.log_summary(parent, metrics, best)
    tracker.log_plots(parent, optuna_study)
    print(
        f"study '{study.name}': "
        + ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v)
        + (f" · best val {best.value:.4f} (trial {best.number}): {best.params}" if best else "")
        + f" · {epochs:g} trial-epochs",
        flush=True,
    )
    return summary


def retrain(study: Study, summary: dict[str, Any], tracker: StudyTracker) -> dict[str, Any]:
    """The best parameters, trained on train + validation, evaluated once on test, logged and registered as
    `<task>-best` in the MLflow model registry."""
    from harness.run.runner import run

    task = study.task
    cfg = resolve_run_config(
        task,
        [
            *study.space.fixed_overrides(),
            *study.overrides,
            *as_overrides(summary["best_params"]),
            "data.train_on_validation=true",
            "log_model=true",
            f"tracking.run_name=study-{summary['study']}-best",
        ],
    )
    cfg.tracking.tags = {
        **cfg.tracking.tags,
        "mlflow.parentRunId": summary["parent_run_id"],
        "optuna.study": summary["study"],
        "optuna.retrain_of_trial": str(summary["best_trial"]),
    }
    print(
        f"retraining trial {summary['best_trial']}'s parameters on the training rows with the validation rows folded "
        "back in (data.train_on_validation=true), then test once",
        flush=True,
    )
    result = run(cfg, task)
    est = result.report.estimates.get(task.main_metric) if result.report is not None else None
    value = est.value if est is not None else float("nan")
    name = f"{task.name}-best"
    version = tracker.register_best(
        name, result.run_id, summary["study"], summary["parent_run_id"], f"test_{task.main_metric}", value
    )
    conf = int(round(cfg.eval.confidence * 100))
    ci = f" [{est.low:.4f}, {est.high:.4f}] ({conf}% CI)" if est is not None else ""
    test = f"{result.report.n:,} {result.test_label} examples" if result.report is not None else "test"
    print(
        f"best parameters on {test}: {task.main_metric} {value:.4f}{ci} · trained on {result.train_rows} · run "
        f"{result.run_id} · registered as '{name}' version {version}",
        flush=True,
    )
    print(f"open it: {tracker.open_line(result.run_id, registered=(name, version))}", flush=True)
    return {"run_id": result.run_id, "test": value, "model": name, "version": version}

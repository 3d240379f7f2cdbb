"""One run: task + model + data + Trainer + MLflow, start to finish.

    start (or resume) the MLflow run -> resolve the model -> load and check the data
    -> a baseline is scored right away; otherwise: build tokenizer, DataModule, module and Trainer
    -> [score the test split before training] -> fit (resumable) -> test -> score with intervals -> log -> close

Each step is a function over one `RunContext`; `run` below reads as that pipeline. Under DDP every rank runs it,
and only rank 0 (the one with a tracker) talks to MLflow and the console.

Resume: a run's checkpoints and its MLflow run id live under `<output_dir>/runs/<task>/<config hash>/`. Running the
same command again after a kill continues from the last checkpoint inside the same MLflow run; once a run has
finished, the same command starts a new one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from transformers import AutoTokenizer

from harness.config import GENERATION_MODES, TRANSFER_FAMILIES, RunConfig, TaskSpec, redact_uri
from harness.data.sources import TaskData, load_task_data
from harness.errors import ConfigError, user_error
from harness.families import get_family
from harness.families.base import EvalReport, Family
from harness.models.loading import ResolvedModel, load_pretrained, resolve_model
from harness.models.sharding import check_shardable, full_state_dict, is_sharded
from harness.run.callbacks import quiet_mode
from harness.run.checkpoints import unreadable
from harness.run.launch import OwnProcessGroup, join, launched_world, share
from harness.run.training import CHECKPOINT_DIR, build_trainer
from harness.runtime import (
    check_combinations,
    check_devices,
    configure_runtime,
    device_type,
    resolve_device_settings,
)
from harness.tracking.env import describe_device
from harness.tracking.logger import MlflowStepLogger
from harness.tracking.mlflow_run import Tracker, is_global_zero
from harness.tracking.store import check_store, uri_key

LAST = "last.ckpt"


@dataclass
class RunResult:
    run_id: Optional[str]
    experiment: str
    report: Optional[EvalReport]
    resumed: bool
    wall_seconds: float
    device: str
    tracking_uri: str
    official: bool = True  # every split is the official one (no fallback was used)
    validation: Optional[dict[str, float]] = None  # last validation metrics (objective runs)
    test_label: str = "test"  # what the test rows are, in words (`your file x.jsonl (sha256 ...)` for a user's file)
    test_file: Optional[str] = None  # the user's file scored in place of the test split
    subset: bool = False  # the test rows are a subset of the split (a profile's test_size)
    train_rows: Optional[str] = None  # what training saw, in words (`256 of 67,349 rows: stratified subset ...`)
    experiment_id: Optional[str] = None  # for the links that open the run in the MLflow UI
    model_id: Optional[str] = None  # the run's LoggedModel (log_model=true), once the server has it


# ---- resume state ----------------------------------------------------------------------------------------------------


class RunState:
    """`state.json` beside a run's checkpoints: which MLflow run they belong to and whether it finished."""

    def __init__(self, cfg: RunConfig):
        self.dir = Path(cfg.tracking.output_dir) / "runs" / cfg.task / cfg.identity_hash()
        self.file = self.dir / "state.json"

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}

    def write(self, **fields: Any) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = {**self.read(), **fields}
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.file)  # atomic: a kill never leaves half a state file

    @property
    def checkpoint(self) -> Path:
        return self.dir / CHECKPOINT_DIR / LAST

    def resumable_run(self, tracking_uri: str) -> Optional[str]:
        """The MLflow run id to continue, if this command was interrupted after writing a checkpoint. A checkpoint
        that cannot be read is not resumed from: `self.damaged` says why, and the interrupted run is closed."""
        self.damaged: Optional[str] = None
        state = self.read()
        run_id = state.get("run_id")
        if not run_id or state.get("status") == "finished" or not self.checkpoint.exists():
            return None
        if state.get("tracking") != uri_key(tracking_uri):
            return None
        client = MlflowClient(tracking_uri)
        try:
            run = client.get_run(run_id)
        except MlflowException:
            return None
        if run.info.status == "FINISHED":
            return None
        self.damaged = unreadable(self.checkpoint)
        if self.damaged:
            client.set_tag(
                run_id,
                "error",
                f"its checkpoint {self.checkpoint.resolve()} cannot be read ({self.damaged}); the "
                "same command started over in a new run",
            )
            client.set_terminated(run_id, "FAILED")
            return None
        return run_id

    def clear_checkpoints(self) -> None:
        shutil.rmtree(self.dir / CHECKPOINT_DIR, ignore_errors=True)

    def lock(self) -> None:
        """Hold the folder for this process: a second identical command started meanwhile must neither resume nor
        overwrite this one's checkpoints (harness/run/runlock.py)."""
        from harness.run import runlock

        self._lock_fd = runlock.hold(self.dir)

    def unlock(self) -> None:
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock
            self._lock_fd = None


# ---- the Trainer -----------------------------------------------------------------------------------------------------


# ---- the run ---------------------------------------------------------------------------------------------------------


@dataclass
class RunContext:
    """Everything one run has learned so far; each phase below reads it and adds to it."""

    cfg: RunConfig
    task: TaskSpec
    family: Family
    state: RunState
    tracker: Optional[Tracker]  # rank 0 only: the one process that talks to MLflow and the console
    say: Callable[[str], None]
    objective: bool  # a search trial: train and validate, never load the test split
    extra_callbacks: list = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    device: str = ""
    run_id: Optional[str] = None
    resumed: bool = False
    model: Optional[ResolvedModel] = None
    data: Optional[TaskData] = None
    tokenizer: Any = None
    datamodule: Any = None
    module: Any = None
    trainer: Any = None
    logger: Optional[MlflowStepLogger] = None

    @property
    def baseline(self) -> bool:
        return self.model is not None and self.model.source == "baseline"

    @property
    def official(self) -> bool:
        return self.data is None or all(s.official for s in self.data.splits.values())

    def result(self, report: Optional[EvalReport], validation: Optional[dict[str, float]] = None) -> RunResult:
        test = self.data.splits.get("test") if self.data is not None else None
        return RunResult(
            self.run_id,
            self.cfg.tracking.experiment or self.task.name,
            report,
            self.resumed,
            time.perf_counter() - self.started,
            self.device,
            self.cfg.tracking.uri,
            self.official,
            validation,
            test.label if test is not None else "test",
            test.source if test is not None and test.user_file else None,
            bool(test is not None and test.subset),
            _train_words(self.data.splits.get("train")) if self.data is not None else None,
            self.tracker.experiment_id if self.tracker is not None else None,
            self.tracker.model_id if self.tracker is not None else None,
        )


def _train_words(split: Any) -> Optional[str]:
    if split is None:
        return None
    how = "; ".join(split.selection)
    where = split.source if split.source_kind == "hub" else Path(split.source).name
    return f"{split.count} of {where}" + (f" ({how})" if how else "")


def run(
    cfg: RunConfig,
    task: TaskSpec,
    *,
    extra_callbacks: Optional[list] = None,
    console: Any = None,
    objective: bool = False,
) -> RunResult:
    """One run. `objective=True` (a hyperparameter-search trial): train and validate only — the test split is not
    even loaded, so it can never leak into selection — and return the last validation metrics."""
    group = OwnProcessGroup()
    ctx = _context(cfg, task, console, objective, extra_callbacks or [])
    try:
        _start(ctx)
        _resolve_model(ctx)
        _load_data(ctx)
        if ctx.baseline:
            return _score_baseline(ctx)
        _build(ctx)
        if ctx.family.evaluate_before_training and ctx.cfg.train and not objective and not ctx.resumed:
            _evaluate_before_training(ctx)
        if ctx.cfg.train:
            _fit(ctx)
            if objective:
                return _finish_trial(ctx)
        return _test_and_log(ctx)
    except KeyboardInterrupt as e:
        if ctx.tracker is not None:
            ctx.tracker.fail(e, killed=True)
        raise
    except BaseException as e:
        err = user_error(e) if isinstance(e, Exception) else None  # a library's exception, in the user's words
        if ctx.tracker is not None:
            ctx.tracker.fail(err or e)
            _tell_pending(ctx)
        if err is not None and err is not e:
            raise err from e
        raise
    finally:
        ctx.state.unlock()
        group.release()


def _context(cfg: RunConfig, task: TaskSpec, console: Any, objective: bool, callbacks: list) -> RunContext:
    """Checks that need no model or data (devices, the tracking store), then the context of a run not yet started."""
    configure_runtime(cfg)
    check_devices(cfg)
    if cfg.model.mode != "full" and task.family not in TRANSFER_FAMILIES:
        raise ConfigError(
            f"model.mode={cfg.model.mode} is not available for {task.family} tasks",
            f"use model.mode=full, or a task of the {', '.join(TRANSFER_FAMILIES)} families",
        )
    if cfg.model.mode not in GENERATION_MODES and task.family in ("summarization", "translation"):
        raise ConfigError(
            f"model.mode={cfg.model.mode} is not available for {task.family}: a generator has no task head to train "
            "on frozen features",
            f"use model.mode={' or '.join(GENERATION_MODES[1:])} (adapters on the frozen model), or full",
        )
    cfg = cfg.model_copy(deep=True)
    resolve_device_settings(cfg)
    check_combinations(cfg, task.family, device_type(cfg.trainer.accelerator))
    zero = is_global_zero()
    if zero:
        check_store(cfg.tracking.uri)
    state = RunState(cfg)
    if zero:
        state.lock()
    return RunContext(
        cfg,
        task,
        get_family(task.family),
        state,
        Tracker(cfg, task, journal_dir=state.dir / "journal") if zero else None,
        _printer(console if zero else None),
        objective,
        callbacks,
    )


def _start(ctx: RunContext) -> None:
    """Open the MLflow run, or re-open the one an interrupted command left; every other rank follows rank 0."""
    cfg = ctx.cfg
    ctx.device = describe_device(cfg.trainer.accelerator)
    world = launched_world(cfg.trainer.num_nodes, cfg.trainer.devices)
    if world is not None:  # started by torchrun / srun / by hand on several nodes: rank 0's decision is broadcast
        decided = share(join(*world, cfg.trainer.accelerator), lambda: _open_run(ctx))
    elif ctx.tracker is not None:
        decided = _open_run(ctx)
    else:  # a DDP worker started by Lightning's launcher: the environment carries rank 0's decision
        decided = {"run_id": os.environ.get("HARNESS_RUN_ID"), "resumed": os.environ.get("HARNESS_RESUMED") == "1"}
    ctx.run_id, ctx.resumed = decided["run_id"], decided["resumed"]
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    ctx.say(
        f"[bold]{ctx.task.name}[/] · profile [bold]{cfg.profile}[/] · device [bold]{ctx.device}[/] · model "
        f"{cfg.model.name} · seed {cfg.seed}" + (f" · [yellow]resuming run {ctx.run_id}[/]" if ctx.resumed else "")
    )
    processes = cfg.trainer.num_nodes * (cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1)
    if processes > 1 and cfg.model.dropout != 0 and cfg.train:
        note = (
            f"each of the {processes} processes draws its own dropout masks for its slice of a step, so this run "
            "takes the steps one process would take with the same global batch exactly only with model.dropout=0"
        )
        ctx.say(f"note: {note}")
        if ctx.tracker is not None:
            ctx.tracker.set_tags({"ddp.dropout": note})


def _open_run(ctx: RunContext) -> dict[str, Any]:
    """Rank 0: start or resume the MLflow run, write the resume state."""
    cfg, state, tracker = ctx.cfg, ctx.state, ctx.tracker
    assert tracker is not None
    resume_id = state.resumable_run(cfg.tracking.uri)
    if state.damaged:
        ctx.say(
            f"[yellow]warning:[/] the last checkpoint {state.checkpoint.resolve()} cannot be read "
            f"({state.damaged}); starting over in a new run"
        )
    run_id = tracker.start(run_id=resume_id)
    os.environ["HARNESS_RUN_ID"] = run_id  # for the processes Lightning's launcher starts
    os.environ["HARNESS_RESUMED"] = "1" if resume_id else "0"
    if resume_id is None:
        state.clear_checkpoints()  # older checkpoints of the same command belong to a finished or abandoned run
    state.write(run_id=run_id, tracking=uri_key(cfg.tracking.uri), status="running", task=ctx.task.name)
    return {"run_id": run_id, "resumed": resume_id is not None}


def _resolve_model(ctx: RunContext) -> None:
    cfg, tracker = ctx.cfg, ctx.tracker
    ctx.model = model = resolve_model(cfg.model.name, cfg.model.revision, Path(cfg.tracking.output_dir) / "models")
    if ctx.baseline:
        ctx.family.check_baseline(model.path)
    if tracker is None:
        return
    tracker.set_tags(
        {
            "model.source": model.source,
            "model.path": model.path,
            **({"harness.source_run_id": model.run_id} if model.run_id else {}),
        }
    )
    if not ctx.resumed:
        tracker.log_config()
        tracker.log_environment(ctx.device)


def _needed_splits(ctx: RunContext) -> tuple[str, ...]:
    if ctx.objective:
        return ("train", "validation")
    if ctx.cfg.train and not ctx.baseline:
        return ("train", "validation", "test")
    return ("test",)


def _load_data(ctx: RunContext) -> None:
    """The splits this run needs, checked by the family; their lineage and what is unusual about them on the run."""
    ctx.data = data = load_task_data(ctx.task, ctx.cfg, _needed_splits(ctx))
    ctx.say("data: " + ", ".join(f"{n} {s.count} ({s.source_kind})" for n, s in data.splits.items()))
    for s in data.splits.values():
        if s.user_file:
            ctx.say(
                f"scoring your file {s.source} (sha256 {s.source_sha256}, {s.rows:,} rows) in place of "
                f"{ctx.task.name}'s {s.name} split: published numbers for {ctx.task.name} do not apply to it"
            )
    data_tags, warnings = ctx.family.check_data(ctx.cfg, ctx.task, data)
    warnings += data.quality_warnings()
    unofficial = [n for n, s in data.splits.items() if not s.official and not s.user_file]  # a fallback's split
    if unofficial:
        which = (
            f"the {unofficial[0]} split is not the official one"
            if len(unofficial) == 1
            else f"{', '.join(unofficial[:-1])} and {unofficial[-1]} are not the official splits"
        )
        warnings.append(
            "; ".join(data.notes or ["a split is not available"])
            + f". So {which}: do not compare these numbers with published results"
        )
    for w in warnings:
        ctx.say(f"[yellow]warning:[/] {w}")
    if ctx.tracker is None or ctx.resumed:
        return
    ctx.tracker.log_datasets(data)
    # subsets are fine for development, but not comparable with full-split numbers: say so on the run
    files = {f"data.{n}_file": s.source for n, s in data.splits.items() if s.user_file}
    files.update({f"data.{n}_file.sha256": s.source_sha256 for n, s in data.splits.items() if s.user_file})
    ctx.tracker.set_tags(
        {
            "data.subset": str(any(s.subset for s in data.splits.values())).lower(),
            "data.official_split": str(all(s.official for s in data.splits.values())).lower(),
            **files,
            **data_tags,
        }
    )
    if warnings:
        ctx.tracker.set_tags({"data.warnings": " | ".join(warnings)[:4900]})
    if ctx.baseline:
        ctx.tracker.set_tags({"mode": "baseline", "harness.baseline": ctx.model.path})


def _score_baseline(ctx: RunContext) -> RunResult:
    """A rule with no weights (e.g. lead-3): its outputs are scored like a model's, in a run of its own."""
    test = ctx.data["test"]
    outputs = ctx.family.baseline_outputs(ctx.model.path, ctx.cfg, ctx.task, test)
    if ctx.tracker is None:
        return ctx.result(None)
    report = ctx.family.score(ctx.cfg, ctx.task, outputs, test)
    _log_report(ctx, report, step=0)
    _close(ctx)
    return ctx.result(report)


def _build(ctx: RunContext) -> None:
    """Tokenizer, DataModule, LightningModule and Trainer for a model with weights."""
    cfg, family, model = ctx.cfg, ctx.family, ctx.model
    model_tags = family.bind_model(cfg, ctx.task, model)
    if ctx.tracker is not None and model_tags:
        ctx.tracker.set_tags(model_tags)
    family.check_position_limit(cfg, ctx.task, model)
    tok_ref = ResolvedModel(model.ref, family.tokenizer_path(model), model.source, revision=model.revision)
    ctx.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, tok_ref)
    ctx.datamodule = family.build_datamodule(cfg, ctx.task, ctx.data, ctx.tokenizer)
    ctx.datamodule.setup()
    ctx.module = family.build_module(cfg, ctx.task, model)
    if cfg.trainer.strategy == "fsdp" and cfg.train:
        check_shardable(ctx.module.model, cfg.model.name)
    _tell_transfer(ctx)
    if ctx.tracker is not None:
        ctx.logger = MlflowStepLogger(ctx.tracker)
    ctx.trainer = build_trainer(cfg, ctx.logger, ctx.state, ctx.extra_callbacks, quiet_mode())


def _tell_transfer(ctx: RunContext) -> None:
    """What this run trains: the mode, trainable and total parameters, the head and LoRA's target modules."""
    info = getattr(ctx.module, "transfer_info", None)
    if info is None or ctx.tracker is None:
        return
    ctx.tracker.log_metrics(info.metrics(), step=0)
    ctx.tracker.set_tags(info.params())
    if info.mode != "full" or info.trainable != info.total:
        lora = f" · LoRA on {', '.join(info.lora_targets)}" if info.lora_targets else ""
        ctx.say(
            f"mode {info.mode}: {info.trainable:,} of {info.total:,} parameters train ({info.trainable_pct:.2f}%)"
            f" · head {', '.join(info.head) or '-'}{lora}"
        )


def _peak_memory_mb(accelerator: str) -> tuple[float, str]:
    """The training's peak memory: GPU memory allocated by torch, else the process's peak resident set."""
    # the CUDA allocator's statistics exist only with a GPU; a CPU run reports its resident set instead
    if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda"):
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_rss"


def _test(ctx: RunContext) -> Optional[EvalReport]:
    """Model outputs on the test split (every rank takes part), scored on rank 0."""
    _interruptible(
        ctx.trainer, lambda: ctx.trainer.test(ctx.module, dataloaders=ctx.datamodule.test_dataloader(), verbose=False)
    )
    if ctx.tracker is None:
        return None
    test = ctx.data["test"]
    outputs = ctx.family.postprocess(ctx.cfg, ctx.task, ctx.module.test_outputs, test)
    return ctx.family.score(ctx.cfg, ctx.task, outputs, test)


def _evaluate_before_training(ctx: RunContext) -> None:
    """The same test documents scored before training: what training changed, in one run."""
    ctx.say("evaluating before training")
    before = _test(ctx)
    if before is None:
        return
    ctx.tracker.log_metrics(before.metrics("test_before_"), step=0)
    main = before.estimates.get(ctx.task.main_metric)
    if main is not None:
        ctx.say(f"before training: {ctx.task.main_metric} {main.value:.4g} [{main.low:.4g}, {main.high:.4g}]")
    if before.table is not None:
        ctx.tracker.log_table(before.table, f"predictions/{before.split}_before_training.json")


def _fit(ctx: RunContext) -> None:
    ckpt = str(ctx.state.checkpoint) if ctx.resumed else None
    if ckpt:
        ctx.say(f"resuming from {ckpt}")
        if ctx.tracker is not None:
            ctx.tracker.set_tags({"harness.resumed": "true"})
    if torch.cuda.is_available():  # the CUDA allocator's statistics: nothing to reset without a GPU
        torch.cuda.reset_peak_memory_stats()
    _interruptible(
        ctx.trainer,
        lambda: ctx.trainer.fit(
            ctx.module, datamodule=ctx.datamodule, ckpt_path=ckpt, weights_only=True if ckpt else None
        ),
    )
    if ctx.tracker is not None:
        peak, kind = _peak_memory_mb(ctx.cfg.trainer.accelerator)
        ctx.tracker.log_metrics({"train_peak_memory_mb": peak}, step=ctx.trainer.global_step)
        ctx.tracker.set_tags({"train_peak_memory": kind})
        _tell_sharding(ctx)


def _tell_sharding(ctx: RunContext) -> None:
    info = getattr(ctx.module, "shard_info", None)
    if info is None:
        return
    ctx.say(info.line())
    ctx.tracker.log_metrics({"shard_params_per_rank": info.local, "shard_processes": info.processes}, step=0)
    ctx.tracker.set_tags({"fsdp.sharding": info.line()})


def _finish_trial(ctx: RunContext) -> RunResult:
    """A search trial ends after training: its result is the last validation metrics."""
    validation = {k: float(v) for k, v in ctx.trainer.callback_metrics.items() if k.startswith("val_")}
    if ctx.tracker is not None:
        _close(ctx, remove_checkpoints=True)
    return ctx.result(None, validation)


def _test_and_log(ctx: RunContext) -> RunResult:
    if ctx.cfg.train:
        # training is done: a kill during evaluation resumes straight to evaluation (all ranks must call this)
        ctx.trainer.save_checkpoint(ctx.state.checkpoint)
    report = _test(ctx)
    whole = _gathered(ctx) if ctx.cfg.log_model and is_sharded(ctx.trainer) else ctx.module  # every rank gathers
    if report is not None:
        _log_report(ctx, report, step=ctx.trainer.global_step)
        if ctx.cfg.log_model:
            _log_model(ctx, whole)
        _close(ctx, remove_checkpoints=not ctx.cfg.tracking.keep_checkpoints)
    return ctx.result(report)


def _close(ctx: RunContext, remove_checkpoints: bool = False) -> None:
    """Rank 0: flush step metrics, mark the MLflow run FINISHED and the resume state finished."""
    if ctx.logger is not None:
        ctx.logger.flush()
    tags = {"wall_seconds": f"{time.perf_counter() - ctx.started:.1f}"}
    if getattr(ctx.datamodule, "resident", None):  # data.device_resident as decided per split (auto: where it fit)
        tags["data.resident_splits"] = ctx.datamodule.resident_splits()
    ctx.tracker.set_tags(tags)
    ctx.tracker.finish()
    ctx.state.write(status="finished")
    _tell_pending(ctx)
    if remove_checkpoints:
        ctx.state.clear_checkpoints()


def _tell_pending(ctx: RunContext) -> None:
    """One line when the tracking server went away and did not come back in time to take everything."""
    if ctx.tracker is None or not ctx.tracker.went_away:
        return
    if not ctx.tracker.pending:
        ctx.say("note: the tracking server stopped answering during the run; what it missed was sent when it was back")
        return
    j = ctx.tracker.journal
    ctx.say(
        f"[yellow]warning:[/] the tracking server {redact_uri(ctx.cfg.tracking.uri)} is away: "
        f"{ctx.tracker.pending} records of run {ctx.run_id} are kept in {j.folder}; "
        "when it answers again, run: harness sync"
    )


def _log_report(ctx: RunContext, report: EvalReport, step: int) -> None:
    for w in report.warnings:
        ctx.say(f"[yellow]warning:[/] {w}")
    ctx.tracker.log_report(report, step=step)


def _gathered(ctx: RunContext) -> Any:
    """A sharded model's weights gathered on rank 0 into an ordinary, unsharded module (exports, serves and compresses
    like any other); None on the other ranks. Every rank must call this."""
    state = full_state_dict(ctx.module)
    if ctx.tracker is None:
        return None
    whole = ctx.family.build_module(ctx.cfg, ctx.task, ctx.model)
    whole.load_state_dict(state, strict=True)
    return whole


def _log_model(ctx: RunContext, module: Any) -> None:
    cfg, task = ctx.cfg, ctx.task
    meta = {
        "run_id": ctx.run_id,
        "task": task.name,
        "family": task.family,
        "labels": task.labels,
        "base_model": cfg.model.name,
        "max_length": cfg.data.max_length,
        "truncation": cfg.data.truncation,
        "head_tokens": cfg.data.head_tokens,
        "pair": "text_pair" in task.columns,
        **ctx.family.serving_meta(cfg, task),
    }
    if cfg.model.mode != "full":
        meta["mode"] = cfg.model.mode
        meta["adapter"] = cfg.model.mode in ("lora", "prompt_tuning") and not (
            cfg.model.merge and cfg.model.mode == "lora"
        )
    ctx.tracker.log_model(lambda out: ctx.family.export(module, ctx.tokenizer, out, merge=cfg.model.merge), meta)


def _interruptible(trainer: Any, fn: Callable[[], Any]) -> Any:
    """Lightning turns Ctrl-C into sys.exit(1) after a graceful shutdown; give it back its meaning, so the run is
    marked KILLED (resumable) rather than FAILED."""
    try:
        return fn()
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise


def _printer(console: Any) -> Callable[[str], None]:
    def say(text: str) -> None:
        if console is not None:
            console.print(text, highlight=False)

    return say

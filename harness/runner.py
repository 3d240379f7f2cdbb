"""One run: task + model + data + Trainer + MLflow, start to finish.

    resolve config -> open (or resume) the MLflow run -> load and check data -> build family DataModule and module
    -> fit (resumable) -> evaluate on the test split -> score with confidence intervals -> log -> close the run

Resume: a run's checkpoints and its MLflow run id live under `<output_dir>/runs/<task>/<config hash>/`. Running the
same command again after a kill continues from the last checkpoint inside the same MLflow run; once a run has
finished, the same command starts a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from harness.config import RunConfig, TaskSpec

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"


@dataclass
class RunResult:
    run_id: Optional[str]
    experiment: str
    report: Any  # EvalReport
    resumed: bool
    wall_seconds: float
    device: str
    tracking_uri: str
    official: bool = True  # every split is the official one (no fallback was used)
    validation: Optional[dict[str, float]] = None  # last validation metrics (objective runs)


# ---- process setup ---------------------------------------------------------------------------------------------------


def configure_runtime(cfg: RunConfig) -> None:
    """Quiet the libraries' console chatter and set threads; done once per process before heavy imports run."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    import lightning  # noqa: F401  (sets up its loggers on import; quiet them after)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import mlflow  # noqa: F401  (configures its loggers on import; quiet them after)

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*The number of training batches.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*introduces a better way to train encoder-decoder.*")
    warnings.filterwarnings("ignore", message=r".*no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=r".*all_gather is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*dataloader.*shuffle.*")
    warnings.filterwarnings("ignore", message=r".*Total length of .* across ranks is zero.*")  # no validation split
    # our DataModule restores the sampler position itself (state_dict/load_state_dict), which Lightning cannot see
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto`: bf16 mixed precision where the hardware does bf16 math natively, else full float32.

    On CPUs with AVX-512 BF16 / AMX, bf16 autocast trains ~1.5x and infers ~1.7x faster than float32 (MiniLM,
    length 128, measured on the 2-core CI machine); without native support it is slower, so float32 is kept.
    """
    if precision != "auto":
        return precision
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16-mixed" if native else "32-true"


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
        """The MLflow run id to continue, if this command was interrupted after writing a checkpoint."""
        state = self.read()
        run_id = state.get("run_id")
        if not run_id or state.get("status") == "finished" or not self.checkpoint.is_file():
            return None
        if state.get("tracking") != _uri_key(tracking_uri):
            return None
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            run = MlflowClient(tracking_uri).get_run(run_id)
        except MlflowException:
            return None
        return None if run.info.status == "FINISHED" else run_id


def _uri_key(uri: str) -> str:
    """The tracking URI as the state file stores it: a hash, so no credential lands on disk."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


# ---- the run ---------------------------------------------------------------------------------------------------------


def build_trainer(cfg: RunConfig, logger: Any, state: RunState, extra_callbacks: list, quiet: bool) -> Any:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from harness.callbacks import LineProgress, StepMonitor

    t = cfg.trainer
    callbacks: list = [
        ModelCheckpoint(
            dirpath=state.dir / CHECKPOINT_DIR,
            filename="step-{step}",
            every_n_train_steps=t.checkpoint_every_n_steps,
            save_top_k=0,
            save_last=True,
        ),
        StepMonitor(every=t.log_every_n_steps),
        *extra_callbacks,
    ]
    if quiet:
        callbacks.append(LineProgress(every=t.log_every_n_steps))
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        precision=t.precision,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        val_check_interval=t.val_check_interval,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        enable_progress_bar=not quiet,
        enable_model_summary=False,
        use_distributed_sampler=False,  # the bucketing sampler shards by rank itself
        num_sanity_val_steps=0,
        default_root_dir=str(state.dir),
    )


def run(
    cfg: RunConfig,
    task: TaskSpec,
    *,
    extra_callbacks: Optional[list] = None,
    console: Any = None,
    objective: bool = False,
) -> RunResult:
    """One run. `objective=True` (hyperparameter search): train and validate only — the test split is not even
    loaded, so it can never leak into selection — and return the last validation metrics."""
    configure_runtime(cfg)
    cfg = cfg.model_copy(deep=True)
    cfg.trainer.precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    import lightning as L

    from harness.callbacks import quiet_mode
    from harness.data.sources import load_task_data
    from harness.families import get_family
    from harness.models.loading import resolve_model
    from harness.tracking.env import describe_device
    from harness.tracking.logger import MlflowStepLogger
    from harness.tracking.mlflow_run import Tracker, is_global_zero

    started = time.perf_counter()
    family = get_family(task.family)
    state = RunState(cfg)
    tracking_uri = cfg.tracking.tracking_uri or "sqlite:///mlruns.db"
    zero = is_global_zero()
    say = _printer(console if zero else None)
    tracker = Tracker(cfg, task) if zero else None
    if zero:
        resume_id = state.resumable_run(tracking_uri)
        resumed = resume_id is not None
    else:  # a DDP worker started by Lightning's launcher: follow rank 0's decision (inherited environment)
        resume_id = os.environ.get("HARNESS_RUN_ID")
        resumed = os.environ.get("HARNESS_RESUMED") == "1"
    device = describe_device(cfg.trainer.accelerator)

    run_id = resume_id
    if tracker is not None:
        run_id = tracker.start(run_id=resume_id)
        os.environ["HARNESS_RUN_ID"] = run_id
        os.environ["HARNESS_RESUMED"] = "1" if resumed else "0"
        if not resumed:
            # a fresh run: older checkpoints of the same command belong to a finished or abandoned run
            shutil.rmtree(state.dir / CHECKPOINT_DIR, ignore_errors=True)
        state.write(run_id=run_id, tracking=_uri_key(tracking_uri), status="running", task=task.name)
    try:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        say(
            f"[bold]{task.name}[/] · profile [bold]{cfg.profile}[/] · device [bold]{device}[/] · model {cfg.model.name}"
            f" · seed {cfg.seed}" + (f" · [yellow]resuming run {run_id}[/]" if resumed else "")
        )
        model = resolve_model(cfg.model.name, cfg.model.revision, Path(cfg.tracking.output_dir) / "models")
        if tracker is not None:
            tracker.set_tags({"model.source": model.source, "model.path": model.path})
            if model.run_id:
                tracker.set_tags({"harness.source_run_id": model.run_id})
            if not resumed:
                tracker.log_config()
                tracker.log_environment(device)

        baseline = model.source == "baseline"
        if baseline and model.path not in family.info.baselines:
            from harness.errors import ModelError

            known = ", ".join(f"baseline:{b}" for b in family.info.baselines) or "none"
            raise ModelError(f"family '{task.family}' has no baseline '{model.path}'", f"baselines of this family: {known}")
        if objective and (baseline or not cfg.train):
            from harness.errors import ConfigError

            raise ConfigError("a search trial needs training", "tune a trainable model with train=true")
        need = ("train", "validation", "test") if cfg.train and not baseline else ("test",)
        if objective:
            need = ("train", "validation")
        if cfg.data.train_on_validation and objective:
            from harness.errors import ConfigError

            raise ConfigError("data.train_on_validation=true leaves a search trial nothing to validate on",
                              "use it only for the final fit (harness tune --retrain-best does)")
        data = load_task_data(task, cfg, need)
        say("data: " + ", ".join(f"{n} {s.rows:,} rows ({s.source_kind})" for n, s in data.splits.items()))
        data_tags, data_warnings = family.check_data(cfg, task, data)
        unofficial = [n for n, s in data.splits.items() if not s.official]
        if unofficial:
            which = (f"the {unofficial[0]} split is not the official one" if len(unofficial) == 1 else
                     f"{', '.join(unofficial[:-1])} and {unofficial[-1]} are not the official splits")
            data_warnings.append("; ".join(data.notes or ["a split is not available"])
                                 + f". So {which}: do not compare these numbers with published results")
        for w in data_warnings:
            say(f"[yellow]warning:[/] {w}")
        if tracker is not None and not resumed:
            tracker.log_datasets(data)
            # subsets are fine for development, but not comparable with full-split numbers: say so on the run
            tracker.set_tags({"data.subset": str(any(s.subset for s in data.splits.values())).lower(),
                              "data.official_split": str(not unofficial).lower(), **data_tags})
            if data_warnings:
                tracker.set_tags({"data.warnings": " | ".join(data_warnings)[:4900]})
            if baseline:
                tracker.set_tags({"mode": "baseline", "harness.baseline": model.path})

        def close(logger: Any = None, remove_checkpoints: bool = False) -> None:
            """Rank 0: flush step metrics, mark the MLflow run FINISHED and the resume state finished."""
            if logger is not None:
                logger.flush()
            tracker.set_tags({"wall_seconds": f"{time.perf_counter() - started:.1f}"})
            tracker.finish()
            state.write(status="finished")
            if remove_checkpoints:
                shutil.rmtree(state.dir / CHECKPOINT_DIR, ignore_errors=True)

        def result(report: Any, validation: Optional[dict[str, float]] = None) -> RunResult:
            return RunResult(run_id, cfg.tracking.experiment or task.name, report, resumed,
                             time.perf_counter() - started, device, tracking_uri, not unofficial, validation)

        if baseline:
            outputs = family.baseline_outputs(model.path, cfg, task, data["test"])
            report = family.score(cfg, task, outputs, data["test"]) if zero else None
            if tracker is not None:
                _log_report(tracker, report, step=0, say=say)
                close()
            return result(report)

        model_tags = family.bind_model(cfg, task, model)
        if tracker is not None and model_tags:
            tracker.set_tags(model_tags)

        from transformers import AutoTokenizer

        from harness.models.loading import ResolvedModel, load_pretrained

        tok_ref = ResolvedModel(model.ref, family.tokenizer_path(model), model.source, revision=model.revision)
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, tok_ref)
        dm = family.build_datamodule(cfg, task, data, tokenizer)
        dm.setup()
        module = family.build_module(cfg, task, model)

        logger = MlflowStepLogger(tracker.client, run_id) if tracker is not None else None
        trainer = build_trainer(cfg, logger, state, list(extra_callbacks or []), quiet_mode())
        if cfg.train and not objective and not resumed and getattr(family, "evaluate_before_training", False):
            # the same test documents scored before training: what training changed, in one run
            say("evaluating before training")
            _interruptible(trainer, lambda: trainer.test(module, dataloaders=dm.test_dataloader(), verbose=False))
            if zero and tracker is not None:
                before = family.score(cfg, task, family.postprocess(cfg, task, module.test_outputs, data["test"]),
                                      data["test"])
                tracker.log_metrics(before.metrics("test_before_"), step=0)
                main = before.estimates.get(task.main_metric)
                if main is not None:
                    say(f"before training: {task.main_metric} {main.value:.4g} [{main.low:.4g}, {main.high:.4g}]")
                if before.table is not None:
                    tracker.log_table(before.table, f"predictions/{before.split}_before_training.json")
        if cfg.train:
            ckpt = str(state.checkpoint) if resumed else None
            if ckpt:
                say(f"resuming from {ckpt}")
                if tracker is not None:
                    tracker.set_tags({"harness.resumed": "true"})
            _interruptible(trainer, lambda: trainer.fit(
                module, datamodule=dm, ckpt_path=ckpt, weights_only=True if ckpt else None))
            if objective:
                validation = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
                if tracker is not None:
                    close(logger, remove_checkpoints=True)
                return result(None, validation)
            # training is done: a kill during evaluation resumes straight to evaluation (all ranks must call this)
            trainer.save_checkpoint(state.checkpoint)

        _interruptible(trainer, lambda: trainer.test(module, dataloaders=dm.test_dataloader(), verbose=False))
        report = None
        if zero and tracker is not None:
            outputs = family.postprocess(cfg, task, module.test_outputs, data["test"])
            report = family.score(cfg, task, outputs, data["test"])
            _log_report(tracker, report, step=trainer.global_step, say=say)
            if cfg.log_model:
                _log_model(family, module, tokenizer, tracker, cfg, task)
            close(logger, remove_checkpoints=not cfg.tracking.keep_checkpoints)
        return result(report)
    except KeyboardInterrupt as e:
        if tracker is not None:
            tracker.fail(e, killed=True)
        raise
    except BaseException as e:
        if tracker is not None:
            tracker.fail(e)
        raise


def _log_report(tracker: Any, report: Any, step: int, say: Any = None) -> None:
    for w in report.warnings:
        if say is not None:
            say(f"[yellow]warning:[/] {w}")
    if report.warnings:
        tracker.set_tags({"eval.warnings": " | ".join(report.warnings)[:4900]})
    if report.tags:
        tracker.set_tags(report.tags)
    tracker.log_metrics(report.metrics("test_"), step=step)
    if report.table is not None:
        tracker.log_table(report.table, f"predictions/{report.split}.json")
    for path, fig in report.figures.items():
        tracker.log_figure(fig, path)


def _interruptible(trainer: Any, fn: Any) -> Any:
    """Lightning turns Ctrl-C into sys.exit(1) after a graceful shutdown; give it back its meaning, so the run is
    marked KILLED (resumable) rather than FAILED."""
    try:
        return fn()
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise


def _log_model(family: Any, module: Any, tokenizer: Any, tracker: Any, cfg: RunConfig, task: TaskSpec) -> None:
    from harness.tracking.mlflow_run import temp_dir

    with temp_dir() as tmp:
        out = Path(tmp) / "model"
        family.export(module, tokenizer, out)
        meta = {
            "run_id": tracker.run_id,
            "task": task.name,
            "family": task.family,
            "labels": task.labels,
            "base_model": cfg.model.name,
            "max_length": cfg.data.max_length,
            "truncation": cfg.data.truncation,
        }
        (out / "harness.json").write_text(json.dumps(meta, indent=2))
        tracker.log_dir(out, "model")


def _printer(console: Any):
    def say(text: str) -> None:
        if console is not None:
            console.print(text, highlight=False)

    return say


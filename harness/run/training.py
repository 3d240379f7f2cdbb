"""The Lightning Trainer a harness run trains and tests with, from the run's `trainer.*` settings: checkpoints every
`checkpoint_every_n_steps` (atomic writes), step timing, the divergence check, line progress when quiet.

Kept apart from the runner (and from MLflow) so a run without a tracking store (the GPU check on a bare host) trains
with exactly the same Trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint

from harness.config import RunConfig
from harness.errors import ConfigError
from harness.run.callbacks import CompileModel, DivergenceCheck, LineProgress, StepMonitor
from harness.run.checkpoints import AtomicCheckpointIO

CHECKPOINT_DIR = "checkpoints"


@dataclass
class RunFolder:
    """Where a Trainer that belongs to no harness run (a measurement, the GPU check) keeps its files."""

    dir: Path


def build_trainer(
    cfg: RunConfig, logger: Any, state: Any, extra_callbacks: list, quiet: bool, checkpoints: bool = True
) -> L.Trainer:
    """The run's Trainer; `checkpoints=False` (throughput measurements) writes none, not even the last."""
    t = cfg.trainer
    saver = ModelCheckpoint(
        dirpath=state.dir / CHECKPOINT_DIR,
        filename="step-{step}",
        every_n_train_steps=t.checkpoint_every_n_steps,
        save_top_k=0,
        save_last=True,
    )
    callbacks: list = [
        *([saver] if checkpoints else []),
        StepMonitor(every=t.log_every_n_steps),
        DivergenceCheck(every=t.log_every_n_steps, cfg=cfg),
        *extra_callbacks,
    ]
    if t.compile:
        callbacks.append(CompileModel(t.compile))
    if quiet:
        callbacks.append(LineProgress(every=t.log_every_n_steps))
    try:
        return _trainer(cfg, logger, state, callbacks, quiet, checkpoints)
    except (ValueError, TypeError, MisconfigurationException) as e:  # Lightning refuses a trainer.* combination
        raise ConfigError(
            f"Lightning refused the trainer settings: {str(e).splitlines()[0][:300]}",
            "fix the trainer.* values (harness config <task> lists them)",
        ) from None


def precision_plugins(precision: str, accelerator: str) -> tuple[Optional[str], list]:
    """Lightning's `precision` argument and the precision plugin harness builds itself, if any.

    16-mixed gets its plugin from harness on every device: Lightning would quietly train a CPU run asked for float16
    in bf16 instead, and the float16 path (its loss scaler unscaling a fused optimizer's gradients before clipping)
    would then never run without a GPU."""
    if precision not in ("16-mixed", "16"):
        return precision, []
    from lightning.pytorch.plugins.precision import MixedPrecision

    from harness.runtime import device_type

    return None, [MixedPrecision("16-mixed", device_type(accelerator))]


def _strategy(cfg: RunConfig) -> Any:
    """Lightning's strategy name, or the sharded strategy harness builds for `fsdp` (FSDP2 on every device)."""
    t = cfg.trainer
    if t.strategy == "fsdp":
        from harness.models.sharding import strategy

        return strategy(t.shard_size)
    return t.strategy


def _trainer(cfg: RunConfig, logger: Any, state: Any, callbacks: list, quiet: bool, checkpoints: bool) -> L.Trainer:
    t = cfg.trainer
    precision, plugins = precision_plugins(t.precision, t.accelerator)
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=_strategy(cfg),
        precision=precision,
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
        enable_checkpointing=checkpoints,
        use_distributed_sampler=False,  # the bucketing sampler shards by rank itself
        num_sanity_val_steps=0,
        default_root_dir=str(state.dir),
        plugins=[AtomicCheckpointIO(), *plugins],
    )

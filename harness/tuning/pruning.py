"""Pruning inside a trial: a Lightning callback that reports the validation metric to Optuna."""

from __future__ import annotations

from typing import Any, Optional

import lightning as L


class OptunaPruning(L.Callback):
    """Report `monitor` after each validation, decide on rank 0, broadcast the decision.

    Pruning stops training gracefully (`trainer.should_stop`) on every rank at once; the caller then raises
    `optuna.TrialPruned`. Ranks other than 0 get `trial=None` and only follow the broadcast. (optuna-integration's
    callback needs the `lightning.pytorch` namespace and does not broadcast; this one is small enough to own.)
    """

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned = False
        self.reports = 0
        self.last: Optional[float] = None

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        prune = False
        if trainer.is_global_zero and self.trial is not None and value is not None:
            v = float(value)
            self.last = v
            self.trial.report(v, step=self.reports)
            # after the last validation pruning saves nothing and would only hide a finished trial's value
            last = trainer.global_step >= trainer.estimated_stepping_batches
            prune = not last and self.trial.should_prune()
        self.reports += 1
        prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            self.pruned = True
            trainer.should_stop = True

"""A Lightning logger that writes step metrics to the run's MLflow run in batches.

Lightning's own MLFlowLogger writes each logging call separately and logs hyperparameters itself; here the run
lifecycle and params belong to `Tracker`, and metrics are buffered and sent in batches through it.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import Metric


class MlflowStepLogger(Logger):
    def __init__(self, tracker: Any, flush_every: int = 200):
        super().__init__()
        self.tracker = tracker
        self.flush_every = flush_every
        self._buffer: list[Metric] = []

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.tracker.run_id

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Params are logged by the Tracker from the resolved config."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            # Lightning adds `epoch` counted from 0; the console counts epochs from 1 ("epoch 1" is the first): one
            # convention, the console's, so the metric reads the epoch in progress as the console names it
            value = float(v) + 1 if k == "epoch" else float(v)
            self._buffer.append(Metric(k, value, ts, int(step or 0)))
        if len(self._buffer) >= self.flush_every:
            self.flush()

    @rank_zero_only
    def flush(self) -> None:
        """Send the buffered metrics (through the tracker: kept for later if the server is away)."""
        while self._buffer:
            chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self.tracker.log_metric_list(chunk)

    @rank_zero_only
    def save(self) -> None:
        self.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.flush()

"""A Lightning logger that writes step metrics to the run's MLflow run in batches.

Lightning's own MLFlowLogger writes each logging call separately and logs hyperparameters itself; here the run
lifecycle and params belong to `Tracker`, and metrics are buffered and sent with `log_batch`.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient


class MlflowStepLogger(Logger):
    def __init__(self, client: MlflowClient, run_id: str, flush_every: int = 200):
        super().__init__()
        self.client = client
        self.run_id = run_id
        self.flush_every = flush_every
        self._buffer: list[Metric] = []

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.run_id

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Params are logged by the Tracker from the resolved config."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            self._buffer.append(Metric(k, float(v), ts, int(step or 0)))
        if len(self._buffer) >= self.flush_every:
            self.flush()

    @rank_zero_only
    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self.client.log_batch(self.run_id, metrics=chunk)

    @rank_zero_only
    def save(self) -> None:
        self.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.flush()

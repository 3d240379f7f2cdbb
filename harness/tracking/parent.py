"""A parent MLflow run with nested child runs, resumable: seeds of one config (`harness run ... seeds=N`) and the
tasks of a suite (`harness suite`). The same command finds its unfinished parent again by a key tag, and the children
it already finished are not run again."""

from __future__ import annotations

from typing import Any, Optional

import mlflow
from mlflow.entities import Metric, RunTag

from harness.interrupts import tracking_client

KEY_TAG = "harness.parent_key"


class ParentRun:
    def __init__(self, uri: str, experiment: str):
        self.uri = uri
        self.client = tracking_client(uri)
        mlflow.set_tracking_uri(uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
        self.run_id: Optional[str] = None
        self.resumed = False

    def open(self, key: str, name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
        """The unfinished parent run with this key (the same command run again), or a new one."""
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{KEY_TAG}` = '{key}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if found and found[0].info.status != "FINISHED":
            self.run_id, self.resumed = found[0].info.run_id, True
            self.client.update_run(self.run_id, status="RUNNING")
            for stale in ("error", "error_type"):
                if stale in found[0].data.tags:
                    self.client.delete_tag(self.run_id, stale)
            return self.run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={**tags, KEY_TAG: key})
        self.run_id = run.info.run_id
        for k, v in params.items():
            self.client.log_param(self.run_id, k, str(v))
        return self.run_id

    def children(self) -> list[Any]:
        """The runs nested under this one, in any experiment (a suite's task runs live in their tasks' experiments)."""
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        return self.client.search_runs(experiments, filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'")

    def finished_child(self, tag: str, value: str) -> Optional[Any]:
        """The child run already FINISHED for this seed / suite entry, if any."""
        done = [c for c in self.children() if c.data.tags.get(tag) == value and c.info.status == "FINISHED"]
        return done[0] if done else None

    def child_tags(self, **extra: str) -> dict[str, str]:
        return {"mlflow.parentRunId": self.run_id or "", **extra}

    def set_tags(self, tags: dict[str, Any]) -> None:
        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float]) -> None:
        import time

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, 0) for k, v in metrics.items() if v == v]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_artifact_dir(self, folder: str) -> None:
        self.client.log_artifacts(self.run_id, folder)

    def close(self, status: str, error: Optional[str] = None) -> None:
        if self.run_id is None:
            return
        if error:
            self.client.set_tag(self.run_id, "error", error[:5000])
        self.client.set_terminated(self.run_id, status)

"""A run recorded where there is no MLflow (a bare, offline GPU host): the same journal records a run keeps while its
tracking server is away, written from the start, with a first record that creates the run. `harness sync <folder>`
back on a machine with the tracking store creates the run and sends the rest in order.

Only the standard library is used here: the host has no MLflow.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from harness.tracking.journal import PENDING, Journal, record

CREATE = "create_run"


class OfflineRun:
    """Params, metrics, tags and artifacts of one run, appended to `<folder>/pending.jsonl`."""

    def __init__(self, folder: Path, experiment: str, run_name: str, tags: Optional[dict[str, str]] = None):
        self.folder = Path(folder)
        if (self.folder / PENDING).exists():
            raise FileExistsError(f"{self.folder} already holds a recorded run")
        self.run_id = f"offline-{uuid.uuid4().hex}"  # replaced by the store's id when synced
        self.journal = Journal(self.folder, self.run_id, "")
        self.journal.add(CREATE, experiment=experiment, run_name=run_name, start_time=_now(), tags=tags or {})

    def log_params(self, params: dict[str, Any]) -> None:
        self.journal.add("log_batch", params=[[k, str(v)[:6000]] for k, v in params.items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.journal.add("log_batch", tags=[[k, str(v)[:8000]] for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = _now()
        self.journal.add("log_batch", metrics=[[k, float(v), now, int(step)] for k, v in metrics.items()])

    def log_artifact(self, local: Path, path: Optional[str] = None) -> None:
        self.journal.add("log_artifact", local=str(local), path=path)

    def log_json(self, name: str, obj: Any, path: Optional[str] = None) -> None:
        tmp = self.folder / "tmp" / name
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(obj, indent=1, default=str))
        self.log_artifact(tmp, path)
        tmp.unlink()

    def end(self, status: str = "FINISHED") -> None:
        self.journal.add("set_terminated", status=status, end_time=_now())


def _now() -> int:
    return int(time.time() * 1000)


def create_run(client: Any, rec: dict) -> str:
    """The run a `create_run` record asks for, in its experiment (created if new); returns its id."""
    exp = client.get_experiment_by_name(rec["experiment"])
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(rec["experiment"])
    tags = {**rec.get("tags", {}), "mlflow.runName": rec["run_name"], "harness.recorded_offline": "true"}
    run = client.create_run(exp_id, start_time=rec.get("start_time"), tags=tags, run_name=rec["run_name"])
    return run.info.run_id


def adopt(folder: Path, client: Any) -> Optional[str]:
    """If the journal at `folder` starts with a `create_run` record: create the run, and rewrite the journal for it
    (the record dropped, every other record addressed to the new run). Returns the new run id, or None."""
    file = folder / PENDING
    lines = [ln for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    first = record(lines[0], file, 1) if lines else None
    if first is None or first.get("op") != CREATE:
        return None
    run_id = create_run(client, first)
    # every record is addressed to the new run; a damaged line keeps its text (with the id replaced where it can be
    # read), so the replay sends what comes before it and then names it
    rest = [ln.replace(first["run_id"], run_id) for ln in lines[1:]]
    tmp = file.with_suffix(".tmp")
    tmp.write_text("".join(ln + "\n" for ln in rest), encoding="utf-8")
    tmp.replace(file)
    return run_id

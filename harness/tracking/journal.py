"""What a run could not send to its tracking server, kept in order on local disk and sent when the server is back.

When the server stops answering in the middle of a run, training goes on: every metric batch, tag, artifact and the
run's end that cannot be sent is appended to `<run folder>/journal/pending.jsonl` (artifacts copied beside it) and
replayed, in order and with the original steps and timestamps, as soon as the server answers again. If it never does,
the run ends with one line naming the folder, and `harness sync` sends it later. Nothing measured is lost, and a
record is sent once (a batch is dropped from the journal only after the server took it).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Optional

PENDING = "pending.jsonl"


def unreachable(e: BaseException) -> bool:
    """A failure of the server or the network (worth keeping the call for later), not of the call itself."""
    import requests

    if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
        return True
    text = str(e)
    return any(
        s in text
        for s in (
            "Max retries exceeded",
            "Connection refused",
            "failed with exception",
            "error code 502",
            "error code 503",
            "error code 504",
            "Read timed out",
        )
    )


class Journal:
    def __init__(self, folder: Path, run_id: str, uri: str):
        self.folder = folder
        self.run_id = run_id
        self.uri = uri
        self.file = folder / PENDING
        self._next_try = 0.0

    def pending(self) -> bool:
        return self.file.exists() and self.file.stat().st_size > 0

    def count(self) -> int:
        return sum(1 for line in self.file.read_text().splitlines() if line.strip()) if self.pending() else 0

    def add(self, op: str, **args: Any) -> None:
        """Keep one call for later; files named in `files` are copied now (the originals may be temporary)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if "local" in args:
            n = len(list((self.folder / "files").glob("*"))) if (self.folder / "files").exists() else 0
            dst = self.folder / "files" / f"{n:05d}"
            dst.mkdir(parents=True)
            src = Path(args["local"])
            target = dst / src.name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, target)
            args["local"] = str(target.relative_to(self.folder))
        with open(self.file, "a", encoding="utf-8") as f:
            f.write(json.dumps({"op": op, "run_id": self.run_id, **args}) + "\n")
            f.flush()

    def due(self) -> bool:
        """Whether to try the server again now: not at every call while it is away, and only once it answers a
        quick probe (a call through MLflow's client would wait out its retries first)."""
        if time.monotonic() < self._next_try:
            return False
        if answers(self.uri):
            return True
        self._next_try = time.monotonic() + 15.0
        return False

    def replay(self, client: Any, retry_in: float = 15.0) -> bool:
        """Send what is kept, in order; True when nothing is left. Stops at the first call the server cannot take,
        and at a damaged record (one line naming the file and the line; what came before it is sent, once)."""
        if not self.pending():
            return True
        lines = [ln for ln in self.file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        done = 0
        try:
            for line in lines:
                send(client, record(line, self.file, done + 1, sent=done), self.folder)
                done += 1
        except Exception as e:
            if not unreachable(e):
                raise
            self._next_try = time.monotonic() + retry_in
        finally:
            rest = lines[done:]
            tmp = self.file.with_suffix(".tmp")
            tmp.write_text("".join(ln + "\n" for ln in rest), encoding="utf-8")
            tmp.replace(self.file)  # a record leaves the journal only once the server has it
        if not lines[done:]:
            shutil.rmtree(self.folder / "files", ignore_errors=True)
            return True
        return False


RECORD_OPS = ("create_run", "log_batch", "log_artifact", "log_input", "log_model", "set_terminated", "delete_tag")


def record(line: str, file: Path, number: int, sent: int = 0) -> dict:
    """One journal line as a record, or one line saying which line of which file is damaged and what to do (the
    records before it were sent, the file keeps it and what follows; nothing is sent twice)."""
    from harness.errors import DataError

    try:
        rec = json.loads(line)
    except ValueError as e:
        problem = f"is not JSON ({e.msg} at column {e.colno})"
    else:
        missing = [k for k in ("op", "run_id") if not isinstance(rec, dict) or k not in rec]
        if isinstance(rec, dict) and rec.get("op") == "create_run":
            missing = [k for k in ("experiment", "run_name") if k not in rec]
        if not missing and rec["op"] in RECORD_OPS:
            return rec
        problem = (
            f"is not a journal record (no {' or '.join(missing)})"
            if missing
            else f"is a record of an unknown kind ('{rec['op']}')"
        )
    before = f"the {sent} record(s) before it were sent; " if sent else ""
    raise DataError(
        f"{file}, line {number - sent}: {problem}",
        f"{before}fix or delete that line, then run harness sync again (nothing is sent twice)",
    )


def answers(uri: str, timeout: float = 3.0) -> bool:
    """Whether a tracking server at `uri` answers at all (any HTTP status will do); True for local stores."""
    if not uri.startswith(("http://", "https://")):
        return True
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        return True
    except requests.exceptions.RequestException:
        return False


def send(client: Any, rec: dict, folder: Optional[Path] = None) -> None:
    from mlflow.entities import Param, RunTag

    run_id, op = rec["run_id"], rec["op"]
    if op == "log_batch":
        client.log_batch(
            run_id,
            metrics=[metric(m) for m in rec.get("metrics", [])],
            params=[Param(*p) for p in rec.get("params", [])],
            tags=[RunTag(*t) for t in rec.get("tags", [])],
        )
    elif op == "log_artifact":
        local = (folder / rec["local"]) if folder is not None else Path(rec["local"])
        if local.is_dir():
            client.log_artifacts(run_id, str(local), rec.get("path"))
        else:
            client.log_artifact(run_id, str(local), rec.get("path"))
        if rec.get("table"):
            mark_table(client, run_id, rec["table"])
    elif op == "log_input":
        send_input(client, run_id, rec["dataset"], rec["context"], rec["tags"])
    elif op == "log_model":
        local = (folder / rec["local"]) if folder is not None else Path(rec["local"])
        send_model(client, run_id, local, rec["model"])
    elif op == "set_terminated":  # the end time the run had, not the time it was synced (journals before it: now)
        client.set_terminated(run_id, rec["status"], end_time=rec.get("end_time"))
    elif op == "delete_tag":
        client.delete_tag(run_id, rec["key"])
    else:  # pragma: no cover - a journal written by a newer harness
        raise ValueError(f"unknown journal record '{op}'")


def mark_table(client: Any, run_id: str, path: str) -> None:
    """What MLflow's `log_table` adds beside the file: the run's `mlflow.loggedArtifacts` tag, which makes the UI
    open it as a table (a table kept while the server was away is sent as a file, then marked)."""
    tags = client.get_run(run_id).data.tags
    known = json.loads(tags.get("mlflow.loggedArtifacts", "[]"))
    entry = {"path": path, "type": "table"}
    if entry not in known:
        client.set_tag(run_id, "mlflow.loggedArtifacts", json.dumps(known + [entry]))


def metric(m: Any) -> Any:
    """A metric from its journal form: (key, value, timestamp, step[, dataset name, dataset digest[, model id]])."""
    from mlflow.entities import Metric

    key, value, ts, step, *rest = m
    dataset_name, dataset_digest, model_id = (list(rest) + [None, None, None])[:3]
    return Metric(key, value, ts, step, model_id=model_id, dataset_name=dataset_name, dataset_digest=dataset_digest)


def metric_record(m: Any) -> list:
    """A metric in its journal form (see `metric`)."""
    out = [m.key, m.value, m.timestamp, m.step]
    if m.dataset_name or m.model_id:
        out += [m.dataset_name, m.dataset_digest, m.model_id]
    return out


def send_model(client: Any, run_id: str, folder: Path, spec: dict) -> str:
    """An MLflow model folder as a LoggedModel (MLflow 3): created in the run's experiment with the run as its
    source, its `MLmodel` naming it, its files uploaded, marked READY, recorded as the run's output at `spec["step"]`,
    and the run's test metrics linked to it and to their dataset (the experiment's Models tab lists them by
    dataset). A replay after a failure part-way reuses the model it had created (its `harness.upload` tag)."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
    from mlflow.models import Model

    run = client.get_run(run_id)
    exp_id = run.info.experiment_id
    upload = spec["upload"]
    found = client.search_logged_models(
        experiment_ids=[exp_id], filter_string=f"name = '{spec['name']}'", max_results=1000
    )
    mine = [m for m in found if m.source_run_id == run_id and m.tags.get("harness.upload") == upload]
    linked = {o.model_id for o in (getattr(run.outputs, "model_outputs", None) or [])}
    if mine and mine[0].model_id in linked and str(mine[0].status) == "READY":
        return mine[0].model_id  # sent whole before (a replay of a record the server had taken)
    if mine:
        model = mine[0]
    else:
        model = client.create_logged_model(
            exp_id,
            name=spec["name"],
            source_run_id=run_id,
            # as MLflow's own log_model does: the run's params (the resolved config) with the model's own
            params={k: str(v)[:6000] for k, v in {**run.data.params, **spec.get("params", {})}.items()},
            tags={**{k: str(v)[:5000] for k, v in spec.get("tags", {}).items()}, "harness.upload": upload},
            model_type=spec.get("model_type"),
        )
    mlmodel = Model.load(str(folder / "MLmodel"))
    mlmodel.model_id = model.model_id
    mlmodel.model_uuid = model.model_id
    mlmodel.run_id = run_id
    mlmodel.artifact_path = model.artifact_location
    mlmodel.save(str(folder / "MLmodel"))
    client.log_model_artifacts(model.model_id, str(folder))
    step = int(spec.get("step", 0))
    metrics = []
    for m in spec.get("metrics", []):
        key, value, ts, mstep, *rest = m
        name, digest = (list(rest) + [None, None])[:2]
        metrics.append(Metric(key, value, ts, mstep, model_id=model.model_id, dataset_name=name, dataset_digest=digest))
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i : i + 500])
    if model.model_id not in linked:
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)  # last: READY means all of it was sent
    return model.model_id


def logged_model_id(client: Any, run_id: str) -> Optional[str]:
    """The LoggedModel a run produced (its last model output), or None (no model, or one logged before MLflow 3's
    logged models: a `model/` artifact of the run)."""
    outputs = getattr(client.get_run(run_id), "outputs", None)
    models = list(getattr(outputs, "model_outputs", None) or [])
    return models[-1].model_id if models else None


def find(root: Path) -> list[Path]:
    """Journal folders with something left to send, under a runs folder (`.harness` by default)."""
    return sorted(p.parent for p in root.rglob(PENDING) if p.stat().st_size > 0)


def send_input(client: Any, run_id: str, dataset: dict, context: str, tags: dict) -> None:
    """A dataset input (lineage) of the run, from its dictionary form."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    input_tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)] + [InputTag(k, v) for k, v in tags.items()]
    for attempt in range(3):
        try:
            client.log_inputs(run_id, datasets=[DatasetInput(Dataset.from_dictionary(dataset), tags=input_tags)])
            return
        except Exception as e:
            # two workers logging the same new dataset at once: the store's check-then-insert races and one gets a
            # unique-constraint error; again, the dataset exists and only the run's input is added
            if attempt == 2 or not any(m in str(e) for m in _DUPLICATE):
                raise
            time.sleep(0.2 * (attempt + 1))


_DUPLICATE = ("UNIQUE constraint failed", "duplicate key value violates unique constraint", "Duplicate entry")

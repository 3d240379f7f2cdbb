"""The MLflow side of a run: lifecycle, config, environment, dataset lineage, results, artifacts.

One experiment per task (named after it), one run per `harness run`. A resumed run re-opens the same MLflow run.
A run that fails is marked FAILED with the error as the tag `error`; one stopped by Ctrl-C is marked KILLED.
Every call after the start goes through `_send`: if the tracking server stops answering, the call is kept in the
run's journal (harness/tracking/journal.py) and sent when it is back, so training never waits on the server and
nothing measured is lost.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import mlflow
from mlflow.entities import Metric, Param, RunTag

from harness.config import RunConfig, TaskSpec, dump_yaml, flatten
from harness.data.sources import SplitData, TaskData
from harness.interrupts import shield, tracking_client
from harness.tracking import env
from harness.tracking.journal import Journal, answers, metric_record, send_input, send_model, unreachable

_MAX_PARAM = 6000
_MAX_TAG = 5000


WAIT_ENV = "HARNESS_TRACKING_WAIT_S"  # how long a run's end waits for a server that went away (default 60 s)


class Tracker:
    def __init__(self, cfg: RunConfig, task: TaskSpec, journal_dir: Optional[Path] = None):
        self.cfg = cfg
        self.task = task
        uri = cfg.tracking.uri
        mlflow.set_tracking_uri(uri)
        self.client = tracking_client(uri)
        self.experiment = cfg.tracking.experiment or task.name
        self.run_id: Optional[str] = None
        self.experiment_id: Optional[str] = None
        self.journal_dir = journal_dir
        self.journal: Optional[Journal] = None
        self.went_away = False  # the server stopped answering at some point of this run
        self.datasets: dict[str, tuple[str, str]] = {}  # split -> (dataset name, digest) as logged as run inputs
        self.test_metrics: dict[str, float] = {}  # what log_report logged, linked again to a logged model
        self.test_step = 0
        self.model_id: Optional[str] = None  # the LoggedModel of log_model, once the server has it

    # ---- sending, or keeping for later -----------------------------------------------------------------------------
    def _send(self, op: str, call: Callable[[], Any], record: Any) -> None:
        """One tracking call; while the server is away (or calls are waiting), kept in the journal, in order.
        `record` is what the journal keeps: a dict, or a function that makes it (only called when needed)."""
        j = self.journal
        if j is not None and j.pending() and not (j.due() and j.replay(self.client)):
            j.add(op, **(record() if callable(record) else record))
            return
        try:
            call()
        except Exception as e:
            if j is None or not unreachable(e):
                raise
            self.went_away = True
            j.add(op, **(record() if callable(record) else record))

    def _batch(self, metrics: list = (), params: list = (), tags: list = ()) -> None:  # type: ignore[assignment]
        def record() -> dict[str, Any]:
            return {
                "metrics": [metric_record(m) for m in metrics],
                "params": [(p.key, p.value) for p in params],
                "tags": [(t.key, t.value) for t in tags],
            }

        self._send(
            "log_batch", lambda: self.client.log_batch(self.run_id, metrics=metrics, params=params, tags=tags), record
        )

    def _artifact(self, local: Path, artifact_path: Optional[str]) -> None:
        if local.is_dir():
            call = lambda: self.client.log_artifacts(self.run_id, str(local), artifact_path)  # noqa: E731
        else:
            call = lambda: self.client.log_artifact(self.run_id, str(local), artifact_path)  # noqa: E731
        self._send("log_artifact", call, {"local": str(local), "path": artifact_path})

    def _file(self, name: str, content: str) -> None:
        """A text artifact at `name` (folders included), written to a temporary file and sent."""
        folder, _, base = name.rpartition("/")
        with temp_dir() as tmp:
            path = Path(tmp) / base
            path.write_text(content, encoding="utf-8")
            self._artifact(path, folder or None)

    @property
    def pending(self) -> int:
        """Records still waiting for the server."""
        return self.journal.count() if self.journal is not None else 0

    # ---- lifecycle -----------------------------------------------------------------------------------------------
    def start(self, run_id: Optional[str] = None) -> str:
        exp = mlflow.set_experiment(self.experiment)
        self.experiment_id = exp.experiment_id
        if not exp.tags.get("harness.task"):
            self.client.set_experiment_tag(exp.experiment_id, "harness.task", self.task.name)
            self.client.set_experiment_tag(exp.experiment_id, "harness.family", self.task.family)
            self.client.set_experiment_tag(exp.experiment_id, "mlflow.note.content", self.task.description)
            # show the experiment in the UI's model-training view (MLflow 3 otherwise guesses GenAI)
            self.client.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", "custom_model_development")
        if self.cfg.tracking.system_metrics:
            mlflow.set_system_metrics_sampling_interval(self.cfg.tracking.system_metrics_interval)
            mlflow.set_system_metrics_samples_before_logging(1)
        with shield():
            run = mlflow.start_run(
                run_id=run_id,
                run_name=None if run_id else self.run_name(),
                log_system_metrics=self.cfg.tracking.system_metrics,
            )
        self.run_id = run.info.run_id
        if self.journal_dir is not None:
            self.journal = Journal(self.journal_dir, self.run_id, self.cfg.tracking.uri)
        if run_id is None:
            self.set_tags(self.base_tags())
        else:  # resumed after Ctrl-C or a kill: the interruption is history, not this run's error
            for key in ("error", "error_type"):
                if key in run.data.tags:
                    self._send("delete_tag", lambda k=key: self.client.delete_tag(self.run_id, k), {"key": key})
        return self.run_id

    def run_name(self) -> str:
        if self.cfg.tracking.run_name:
            return self.cfg.tracking.run_name
        name = self.cfg.model.name
        # runs on different numbers of rows get different names (the sizes asked for, where a subset was)
        d = self.cfg.data
        trains = self.cfg.train and not name.startswith("baseline:")  # a baseline trains nothing
        sizes = (f"-train{d.train_size}" if d.train_size and trains else "") + (
            f"-test{d.test_size}" if d.test_size and not d.test_file else ""
        )
        if name.startswith("baseline:"):
            return f"{self.task.name}-baseline-{name.split(':', 1)[1]}{sizes}"
        model = name.rstrip("/").split("/")[-1]
        mode = "train" if self.cfg.train else "eval"
        return f"{self.task.name}-{model}-{self.cfg.profile}-{mode}-s{self.cfg.seed}{sizes}"

    def base_tags(self) -> dict[str, str]:
        c = self.cfg
        tags = {
            "task": self.task.name,
            "family": self.task.family,
            "model": c.model.name,
            "profile": c.profile,
            "seed": str(c.seed),
            "mode": "baseline" if c.model.name.startswith("baseline:") else ("train+eval" if c.train else "eval"),
            "harness.config_hash": c.identity_hash(),
            "main_metric": self.task.main_metric or "",
        }
        tags.update(c.tracking.tags)
        return tags

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        batch = [RunTag(k, str(v)[:_MAX_TAG]) for k, v in tags.items()]
        for i in range(0, len(batch), 100):
            self._batch(tags=batch[i : i + 100])

    def finish(self) -> None:
        self._end("FINISHED")

    def fail(self, error: BaseException, killed: bool = False) -> None:
        if mlflow.active_run() is None:
            return
        message = getattr(error, "message", None) or f"{error.__class__.__name__}: {error}"
        try:
            self.set_tags({"error": message, "error_type": error.__class__.__name__})
        finally:
            self._end("KILLED" if killed else "FAILED", wait=False)

    def _end(self, status: str, wait: bool = True) -> None:
        """Close the run: first send what the journal kept (waiting a while for a server that went away), then the
        status. If the server does not come back, the status is kept too, for `harness sync`."""
        from mlflow.tracking.fluent import run_id_to_system_metrics_monitor

        ended = int(time.time() * 1000)  # the run's end, whenever the server takes it
        j = self.journal
        deadline = time.monotonic() + (float(os.environ.get(WAIT_ENV, "60")) if wait else 0)
        while j is not None and j.pending():
            if answers(j.uri) and j.replay(self.client, retry_in=0):
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(2)
        if j is None or not j.pending():
            try:
                with shield():
                    mlflow.end_run(status)
                return
            except Exception as e:
                if j is None or not unreachable(e):
                    raise
        self.went_away = True
        j.add("set_terminated", status=status, end_time=ended)
        monitor = run_id_to_system_metrics_monitor.pop(self.run_id, None)
        if monitor is not None:
            monitor._shutdown_event.set()  # stop sampling; what it could not send is not retried by MLflow
        while mlflow.active_run() is not None:
            try:
                mlflow.end_run(status)
            except Exception:
                continue  # popped from MLflow's stack; the status waits in the journal

    # ---- content -------------------------------------------------------------------------------------------------
    def log_config(self) -> None:
        """The resolved config (the settings of other families left out) and the task definition, as params and as
        `config/resolved.yaml`."""
        run_cfg = self.cfg.resolved(self.task.family)
        task_cfg = self.task.model_dump(mode="json", by_alias=True)
        params = {f"{k}": v for k, v in flatten(run_cfg).items() if k != "task"}
        params.update({f"task.{k}": v for k, v in flatten(task_cfg).items() if not k.startswith(("references",))})
        params["task"] = self.task.name
        items = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in params.items()]
        items = [Param(p.key, p.value[:_MAX_PARAM]) for p in items]
        for i in range(0, len(items), 100):
            self._batch(params=items[i : i + 100])
        self._file("config/resolved.yaml", dump_yaml({"run": run_cfg, "task": task_cfg}))

    def log_environment(self, device: str) -> None:
        versions = env.package_versions()
        git = env.git_state()
        info = {"packages": versions, "git": git, "device": device, **env.device_info()}
        self._file("environment.json", json.dumps(info, indent=2))
        tags = {f"version.{k}": v for k, v in versions.items()}
        tags["device"] = device
        if git.get("commit"):
            tags["mlflow.source.git.commit"] = git["commit"]
            tags["git.dirty"] = str(git["dirty"]).lower()
        self.set_tags(tags)

    def log_datasets(self, data: TaskData) -> None:
        from mlflow.data.meta_dataset import MetaDataset

        lineages = data.lineage()
        for name, split in data.splits.items():
            lin = lineages[name]
            src = _dataset_source(split)
            # the lineage record: source, digest of exactly the rows used, and their count
            # a user's file is named as what it is, never as the task's split
            title = f"{self.task.name}-{name}" if not split.user_file else f"file:{Path(split.source).name}"
            context = name if not split.user_file else f"{name} (user file)"
            ds = MetaDataset(source=src, name=title, digest=lin["digest"])
            self.datasets[name] = (title, lin["digest"])
            tags = {k: str(v) for k, v in lin.items() if v is not None}
            entity = ds._to_mlflow_entity().to_dictionary()
            self._send(
                "log_input",
                lambda e=entity, c=context, t=tags: send_input(self.client, self.run_id, e, c, t),
                {"dataset": entity, "context": context, "tags": tags},
            )
            params = [
                Param(f"split.{name}.rows", str(split.rows)),
                Param(f"split.{name}.source", lin["source"][:_MAX_PARAM]),
                Param(f"split.{name}.digest", lin["digest"]),
                Param(f"split.{name}.selection", lin["selection"][:_MAX_PARAM]),
                Param(f"split.{name}.official", str(split.official).lower()),
            ]
            self._batch(params=params)
        self._file("data/lineage.json", json.dumps(lineages, indent=2))

    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None, split: Optional[str] = None) -> None:
        """Metrics at `step`; with `split`, each linked to that split's dataset (as MLflow 3 shows metrics per
        dataset)."""
        ts = int(time.time() * 1000)
        name, digest = self.datasets.get(split or "", (None, None))
        self.log_metric_list(
            [Metric(k, float(v), ts, step or 0, dataset_name=name, dataset_digest=digest) for k, v in metrics.items()]
        )

    def log_metric_list(self, items: list) -> None:
        for i in range(0, len(items), 500):
            self._batch(metrics=items[i : i + 500])

    def log_report(self, report: Any, step: int) -> None:
        """A family's EvalReport: warnings and tags, `test_<metric>` with its interval, the predictions table, plots."""
        if report.warnings:
            self.set_tags({"eval.warnings": " | ".join(report.warnings)[:4900]})
        if report.tags or report.floors:
            self.set_tags({**report.tags, **report.floor_tags()})
        self.test_metrics = report.metrics("test_")
        self.test_step = step
        self.log_metrics(self.test_metrics, step=step, split=report.split)
        if report.table is not None:
            self.log_table(report.table, f"predictions/{report.split}.json")
        for path, fig in report.figures.items():
            self.log_figure(fig, path)

    def log_model(self, export: Callable[[Path], None], meta: dict[str, Any], split: str = "test") -> None:
        """The trained model as an MLflow 3 LoggedModel named `model` (so `runs:/<run id>/model` finds it), linked to
        this run: an MLflow model (harness/serving.py) holding what `export(folder)` writes plus `harness.json`
        (`meta`), with the run's test metrics and their interval bounds linked to it and to the test dataset.
        While the server is away, it waits in the journal like every other record (harness sync sends it)."""
        import uuid

        from harness import serving

        name, digest = self.datasets.get(split, (None, None))
        step = self.test_step
        ts = int(time.time() * 1000)
        tags = {k: v for k, v in self.base_tags().items() if k != "harness.config_hash" and not k.startswith("mlflow.")}
        tags["harness.run_name"] = self.run_name()
        spec = {
            "name": "model",
            "upload": uuid.uuid4().hex,
            "step": step,
            "model_type": self.task.family,
            "params": {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) and k != "run_id"},
            "tags": tags,
            "metrics": [[k, float(v), ts, step, name, digest] for k, v in self.test_metrics.items()],
        }
        with temp_dir() as tmp:
            weights = Path(tmp) / "weights"
            export(weights)
            (weights / "harness.json").write_text(json.dumps(meta, indent=2))
            folder = Path(tmp) / "model"
            serving.save(weights, folder, meta)
            self._send(
                "log_model",
                lambda: setattr(self, "model_id", send_model(self.client, self.run_id, folder, spec)),
                {"local": str(folder), "model": spec},
            )

    def log_table(self, df: Any, path: str) -> None:
        """A table as MLflow stores one (`{"columns": [...], "data": [...]}`, shown by its UI)."""

        def keep() -> dict[str, Any]:  # the server is away: the table as a file, for the journal to copy
            table = df.to_dict(orient="split")
            folder, _, base = path.rpartition("/")
            tmp = Path(tempfile.mkdtemp(prefix="harness-")) / base
            tmp.write_text(json.dumps({"columns": table["columns"], "data": table["data"]}, default=str))
            return {"local": str(tmp), "path": folder or None, "table": path}  # sent as MLflow's table when back

        self._send("log_artifact", lambda: self.client.log_table(self.run_id, df, path), keep)

    def log_figure(self, fig: Any, path: str) -> None:
        import matplotlib.pyplot as plt

        folder, _, base = path.rpartition("/")
        with temp_dir() as tmp:
            fig.savefig(Path(tmp) / base)
            plt.close(fig)
            self._artifact(Path(tmp) / base, folder or None)

    def log_dir(self, local: Path, artifact_path: str) -> None:
        self._artifact(local, artifact_path)


def _dataset_source(split: SplitData) -> Any:
    if split.source_kind == "hub":
        from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

        ref = split.source[len("hf://datasets/") :]
        path, _, rest = ref.partition("@")
        revision, _, hub_split = rest.partition(":")
        return HuggingFaceDatasetSource(path=path, split=hub_split, revision=revision)
    from mlflow.data.sources import LocalArtifactDatasetSource

    return LocalArtifactDatasetSource(Path(split.source).as_uri())


def temp_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="harness-")


def is_global_zero() -> bool:
    """False in the extra processes a DDP launcher starts; only rank 0 talks to MLflow."""
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def record_run(
    uri: str,
    experiment: str,
    run_name: str,
    *,
    tags: dict[str, str],
    params: dict[str, Any],
    metrics: dict[str, float],
    folder: Optional[Path] = None,
) -> str:
    """A finished MLflow run made in one go (a comparison, a report): tags, params, metrics, a folder of files."""
    client = tracking_client(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run_id = client.create_run(
        exp_id, run_name=run_name, tags={k: str(v)[:_MAX_TAG] for k, v in tags.items()}
    ).info.run_id
    try:
        items = [Param(k, str(v)[:_MAX_PARAM]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=items[i : i + 100])
        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, 0) for k, v in metrics.items() if v == v]
        for i in range(0, len(ms), 500):
            client.log_batch(run_id, metrics=ms[i : i + 500])
        if folder is not None:
            client.log_artifacts(run_id, str(folder))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id

"""The MLflow side of a run: lifecycle, config, environment, dataset lineage, results, artifacts.

One experiment per task (named after it), one run per `harness run`. A resumed run re-opens the same MLflow run.
A run that fails is marked FAILED with the error as the tag `error`; one stopped by Ctrl-C is marked KILLED.
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
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from harness.config import RunConfig, TaskSpec, dump_yaml, flatten
from harness.data.sources import SplitData, TaskData
from harness.tracking import env

_MAX_PARAM = 6000
_MAX_TAG = 5000


class Tracker:
    def __init__(self, cfg: RunConfig, task: TaskSpec):
        self.cfg = cfg
        self.task = task
        uri = cfg.tracking.uri
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(uri)
        self.experiment = cfg.tracking.experiment or task.name
        self.run_id: Optional[str] = None

    # ---- lifecycle -----------------------------------------------------------------------------------------------
    def start(self, run_id: Optional[str] = None) -> str:
        exp = mlflow.set_experiment(self.experiment)
        if not exp.tags.get("harness.task"):
            self.client.set_experiment_tag(exp.experiment_id, "harness.task", self.task.name)
            self.client.set_experiment_tag(exp.experiment_id, "harness.family", self.task.family)
            self.client.set_experiment_tag(exp.experiment_id, "mlflow.note.content", self.task.description)
            # show the experiment in the UI's model-training view (MLflow 3 otherwise guesses GenAI)
            self.client.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", "custom_model_development")
        if self.cfg.tracking.system_metrics:
            mlflow.set_system_metrics_sampling_interval(self.cfg.tracking.system_metrics_interval)
            mlflow.set_system_metrics_samples_before_logging(1)
        run = mlflow.start_run(
            run_id=run_id,
            run_name=None if run_id else self.run_name(),
            log_system_metrics=self.cfg.tracking.system_metrics,
        )
        self.run_id = run.info.run_id
        if run_id is None:
            self.set_tags(self.base_tags())
        else:  # resumed after Ctrl-C or a kill: the interruption is history, not this run's error
            for key in ("error", "error_type"):
                if key in run.data.tags:
                    self.client.delete_tag(self.run_id, key)
        return self.run_id

    def run_name(self) -> str:
        if self.cfg.tracking.run_name:
            return self.cfg.tracking.run_name
        name = self.cfg.model.name
        if name.startswith("baseline:"):
            return f"{self.task.name}-baseline-{name.split(':', 1)[1]}"
        model = name.rstrip("/").split("/")[-1]
        mode = "train" if self.cfg.train else "eval"
        return f"{self.task.name}-{model}-{self.cfg.profile}-{mode}-s{self.cfg.seed}"

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
            self.client.log_batch(self.run_id, tags=batch[i : i + 100])

    def finish(self) -> None:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))

    def fail(self, error: BaseException, killed: bool = False) -> None:
        if mlflow.active_run() is None:
            return
        message = getattr(error, "message", None) or f"{error.__class__.__name__}: {error}"
        try:
            self.set_tags({"error": message, "error_type": error.__class__.__name__})
        finally:
            status = RunStatus.KILLED if killed else RunStatus.FAILED
            mlflow.end_run(RunStatus.to_string(status))

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
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        text = dump_yaml({"run": run_cfg, "task": task_cfg})
        mlflow.log_text(text, "config/resolved.yaml")

    def log_environment(self, device: str) -> None:
        versions = env.package_versions()
        git = env.git_state()
        info = {"packages": versions, "git": git, "device": device, **env.device_info()}
        mlflow.log_dict(info, "environment.json")
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
            ds = MetaDataset(source=src, name=f"{self.task.name}-{name}", digest=lin["digest"])
            tags = {k: str(v) for k, v in lin.items() if v is not None}
            mlflow.log_input(ds, context=name, tags=tags)
            params = [
                Param(f"split.{name}.rows", str(split.rows)),
                Param(f"split.{name}.source", lin["source"][:_MAX_PARAM]),
                Param(f"split.{name}.digest", lin["digest"]),
                Param(f"split.{name}.selection", lin["selection"][:_MAX_PARAM]),
                Param(f"split.{name}.official", str(split.official).lower()),
            ]
            self.client.log_batch(self.run_id, params=params)
        mlflow.log_dict(lineages, "data/lineage.json")

    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_report(self, report: Any, step: int) -> None:
        """A family's EvalReport: warnings and tags, `test_<metric>` with its interval, the predictions table, plots."""
        if report.warnings:
            self.set_tags({"eval.warnings": " | ".join(report.warnings)[:4900]})
        if report.tags:
            self.set_tags(report.tags)
        self.log_metrics(report.metrics("test_"), step=step)
        if report.table is not None:
            self.log_table(report.table, f"predictions/{report.split}.json")
        for path, fig in report.figures.items():
            self.log_figure(fig, path)

    def log_model(self, export: Callable[[Path], None], meta: dict[str, Any]) -> None:
        """The trained model as the `model/` artifact: what `export(folder)` writes, plus `harness.json` (`meta`)."""
        with temp_dir() as tmp:
            out = Path(tmp) / "model"
            export(out)
            (out / "harness.json").write_text(json.dumps(meta, indent=2))
            self.log_dir(out, "model")

    def log_table(self, df: Any, path: str) -> None:
        mlflow.log_table(df, artifact_file=path)

    def log_figure(self, fig: Any, path: str) -> None:
        import matplotlib.pyplot as plt

        mlflow.log_figure(fig, path)
        plt.close(fig)

    def log_dir(self, local: Path, artifact_path: str) -> None:
        mlflow.log_artifacts(str(local), artifact_path)


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
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))


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
    client = MlflowClient(uri)
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

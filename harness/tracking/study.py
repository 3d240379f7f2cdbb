"""The MLflow side of a hyperparameter search: one parent run per study, trial runs nested under it.

The parent run carries the study's settings (params), its state (tags `optuna.*`), the best trial (tags `best.*`,
`tune/best.json`), trial counts and the best value (metrics), and Optuna's plots as HTML + PNG (`tune/`). Each
trial is an ordinary harness run (harness/tracking/mlflow_run.py) tagged `mlflow.parentRunId`, `optuna.trial` and
`optuna.state`; `record_trial` adds what only the study knows.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

import mlflow
from mlflow.exceptions import MlflowException

from harness.interrupts import tracking_client


class StudyTracker:
    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self.client = tracking_client(tracking_uri)

    def open_parent(
        self, study: Any, experiment: str, tags: dict[str, str], params: dict[str, Any], space: dict[str, Any]
    ) -> str:
        """The study's parent run: the one a resumed study recorded (re-opened), or a new one."""
        run_id = study.user_attrs.get("mlflow_parent_run_id")
        if run_id:
            try:
                self.client.get_run(run_id)
                self.client.update_run(run_id, status="RUNNING")
                return run_id
            except MlflowException:
                pass  # the study outlived its tracking store: start a new parent run
        mlflow.set_tracking_uri(self.tracking_uri)
        exp = mlflow.set_experiment(experiment)
        run = self.client.create_run(exp.experiment_id, run_name=f"study-{study.study_name}", tags=tags)
        run_id = run.info.run_id
        for k, v in params.items():
            self.client.log_param(run_id, k, str(v))
        self.client.log_dict(run_id, space, "tune/space.json")
        study.set_user_attr("mlflow_parent_run_id", run_id)
        return run_id

    def open_line(self, run_id: str, registered: Optional[tuple[str, str]] = None) -> str:
        """How to open a run (and a registered model version) in the MLflow UI's Model training view."""
        from harness.tracking import links

        base = links.ui_base(self.tracking_uri)
        exp = self.client.get_run(run_id).info.experiment_id
        line = links.open_hint(self.tracking_uri) + links.run_url(base, exp, run_id)
        if registered is not None:
            line += " · registered version: " + links.registered_url(base, *registered)
        return line

    def record_trial(self, run_id: str, state: str, value: float) -> None:
        self.client.set_tag(run_id, "optuna.state", state)
        self.client.log_metric(run_id, "objective", value)

    def close_parent(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def close_failed_trials(self, parent: str, failed: set[str]) -> None:
        """A trial whose worker died left its MLflow run RUNNING; mark it FAILED, and tag every failed trial's run."""
        if not failed:
            return
        exp = self.client.get_run(parent).info.experiment_id
        for r in self.client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'"):
            if r.data.tags.get("optuna.trial") in failed and r.data.tags.get("optuna.state") != "FAIL":
                self.client.set_tag(r.info.run_id, "optuna.state", "FAIL")
                if r.info.status == "RUNNING":
                    self.client.set_tag(r.info.run_id, "error", "the worker running this trial stopped (no heartbeat)")
                    self.client.set_terminated(r.info.run_id, status="FAILED")

    def log_summary(self, parent: str, metrics: dict[str, float], best: Optional[Any]) -> None:
        if best is not None:
            self.client.set_tag(parent, "optuna.best_trial", str(best.number))
            if best.user_attrs.get("mlflow_run_id"):
                self.client.set_tag(parent, "optuna.best_run_id", best.user_attrs["mlflow_run_id"])
            for k, v in best.params.items():  # tags, not params: a resumed study may find a new best
                self.client.set_tag(parent, f"best.{k}", str(v))
            self.client.log_dict(
                parent, {"value": best.value, "trial": best.number, "params": best.params}, "tune/best.json"
            )
        for k, v in metrics.items():
            self.client.log_metric(parent, k, v)

    def log_plots(self, parent: str, study: Any) -> None:
        """Optimization history, parameter importances, parallel coordinates, intermediate values: HTML + PNG."""
        import optuna.visualization as vis
        import optuna.visualization.matplotlib as vmpl

        from harness.tracking.plots import plt  # pyplot on the Agg backend

        kinds = {
            "optimization_history": (vis.plot_optimization_history, vmpl.plot_optimization_history),
            "param_importances": (vis.plot_param_importances, vmpl.plot_param_importances),
            "parallel_coordinate": (vis.plot_parallel_coordinate, vmpl.plot_parallel_coordinate),
            "intermediate_values": (vis.plot_intermediate_values, vmpl.plot_intermediate_values),
        }
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, (html_fn, png_fn) in kinds.items():
                try:
                    html_fn(study).write_html(str(Path(tmp) / f"{name}.html"), include_plotlyjs=True)
                    ax = png_fn(study)
                    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                    fig.savefig(Path(tmp) / f"{name}.png", dpi=110, bbox_inches="tight")
                    plt.close(fig)
                except Exception:  # too few finished trials for this plot (importances need 2 with varied params)
                    continue
            if any(Path(tmp).iterdir()):
                self.client.log_artifacts(parent, tmp, "tune")

    def register_best(self, name: str, run_id: str, study_name: str, parent: str, metric: str, value: float) -> str:
        """Register `run_id`'s logged model as a new version of `name`; note it on the parent run."""
        try:
            self.client.create_registered_model(
                name, description=f"best {name.removesuffix('-best')} model from Optuna studies"
            )
        except MlflowException:
            pass  # it exists: add a version
        from harness.tracking.journal import logged_model_id

        model_id = logged_model_id(self.client, run_id)
        # MLflow 3: the version is of the run's LoggedModel (its page links the two); a run logged before logged
        # models holds its model as the `model/` artifact
        source = f"models:/{model_id}" if model_id else self.client.get_run(run_id).info.artifact_uri + "/model"
        version = self.client.create_model_version(
            name, source=source, run_id=run_id, tags={"optuna.study": study_name}, model_id=model_id
        )
        if model_id:  # the logged model's page lists its registered versions (what mlflow.register_model records)
            import json

            known = json.loads(self.client.get_logged_model(model_id).tags.get("mlflow.modelVersions") or "[]")
            known.append({"name": name, "version": str(version.version)})
            self.client.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps(known)})
        self.client.set_tag(parent, "optuna.retrain_run_id", run_id)
        self.client.log_metric(parent, f"best_{metric}", value)
        return str(version.version)

"""Links into the MLflow UI that open what they name in its Model training view.

MLflow 3's UI shows every experiment in one of two views, "GenAI" (traces, judges, an Overview of LLM calls) or
"Model training" (runs, models, metrics). The choice is one switch kept in the browser (GenAI by default), not the
experiment's `mlflow.experimentKind` tag; the query parameter `workflowType=machine_learning` selects Model training
for the page it opens. Every link harness prints or writes carries it, so it opens the run, experiment or model it
names from a fresh browser as well.

Where the UI is: the tracking server itself for an `http(s)://` store (credentials left out); for a local store
(`sqlite:///...`) the UI `make ui` serves, http://127.0.0.1:5000. `HARNESS_UI_URL` overrides both (another port,
a proxy). Light on purpose: no MLflow import.

>>> run_url("http://127.0.0.1:5000", "3", "ab12")
'http://127.0.0.1:5000/#/experiments/3/runs/ab12?workflowType=machine_learning'
>>> ui_base("https://user:secret@mlflow.example.com/")
'https://mlflow.example.com'
"""

from __future__ import annotations

import json
import os
import re
from urllib.parse import quote

UI_ENV = "HARNESS_UI_URL"
VIEW = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"


def ui_base(tracking_uri: str) -> str:
    """The MLflow UI that shows `tracking_uri`'s runs."""
    explicit = os.environ.get(UI_ENV, "").strip()
    if explicit:
        return explicit.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return re.sub(r"//[^/@]*@", "//", tracking_uri).rstrip("/")
    return LOCAL_UI


def experiments_url(base: str) -> str:
    return f"{base}/#/experiments?{VIEW}"


def experiment_url(base: str, experiment_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs?{VIEW}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{VIEW}"


def models_url(base: str, experiment_id: str) -> str:
    """The experiment's Models tab: each logged model with its metrics per dataset."""
    return f"{base}/#/experiments/{experiment_id}/models?{VIEW}"


def model_url(base: str, experiment_id: str, model_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/models/{model_id}?{VIEW}"


def registered_url(base: str, name: str, version: str) -> str:
    return f"{base}/#/models/{quote(name, safe='')}/versions/{version}?{VIEW}"


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's side-by-side page of several runs."""
    runs = quote(json.dumps(run_ids, separators=(",", ":")), safe="")
    experiments = quote(json.dumps([experiment_id]), safe="")
    return f"{base}/#/compare-runs?runs={runs}&experiments={experiments}&{VIEW}"


def open_hint(tracking_uri: str) -> str:
    """How to get the UI up first, for a local store (nothing for a server, or a UI named by HARNESS_UI_URL)."""
    if tracking_uri.startswith(("http://", "https://")) or os.environ.get(UI_ENV):
        return ""
    return f"make ui (or: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000), then "

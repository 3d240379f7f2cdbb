"""`harness serve <model>` (`make serve RUN=<id>`): a logged model over REST on 127.0.0.1, through MLflow's own scoring
app (the same `/invocations`, `/ping`, `/health`, `/version` and request formats as `mlflow models serve`), with two
differences a serving endpoint needs:

- empty in, empty out: a request with no records (`{"inputs": []}`, `{"dataframe_records": []}`, an empty
  `dataframe_split` or `instances`) answers 200 with `{"predictions": []}` instead of a schema error;
- no response carries a stack trace: MLflow puts the server's traceback (file paths, library internals) in the body of
  a 4xx/5xx for an unexpected error; here the body keeps the error code and message only, and the traceback goes to
  the server's log.
"""

from __future__ import annotations

import json
import logging
from typing import Any

DATA_KEYS = ("inputs", "instances", "dataframe_records")
log = logging.getLogger("harness.serve")


def empty_request(body: bytes) -> bool:
    """A JSON request whose data holds no record at all.

    >>> [empty_request(b) for b in (b'{"inputs": []}', b'{"dataframe_split": {"columns": ["text"], "data": []}}',
    ...                             b'{"inputs": {"text": []}}', b'{"inputs": ["a"]}', b'not json')]
    [True, True, True, False, False]
    """
    try:
        payload = json.loads(body or b"null")
    except ValueError:
        return False
    if not isinstance(payload, dict):
        return False
    for key in DATA_KEYS:
        if key in payload:
            value = payload[key]
            if isinstance(value, list):
                return not value
            if isinstance(value, dict):  # the column form: {"text": [...]}
                return all(isinstance(v, list) and not v for v in value.values())
            return False
    split = payload.get("dataframe_split")
    return isinstance(split, dict) and isinstance(split.get("data"), list) and not split["data"]


def without_trace(body: bytes) -> bytes:
    """An error body with MLflow's `stack_trace` taken out (logged instead)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    if isinstance(payload, dict) and "stack_trace" in payload:
        log.warning("request failed: %s\n%s", payload.get("message", ""), payload.pop("stack_trace"))
        return json.dumps(payload).encode()
    return body


def app(model: Any) -> Any:
    """MLflow's scoring app for `model` (a loaded pyfunc model), wrapped as described above."""
    from fastapi import Request
    from fastapi.responses import Response
    from mlflow.pyfunc import scoring_server

    inner = scoring_server.init(model)

    @inner.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if request.method == "POST" and request.url.path == "/invocations":
            body = await request.body()
            if "json" in (request.headers.get("content-type") or "") and empty_request(body):
                return Response(content=b'{"predictions": []}', status_code=200, media_type="application/json")
        response = await call_next(request)
        if response.status_code < 400:
            return response
        chunks = [chunk async for chunk in response.body_iterator]
        content = without_trace(b"".join(chunks))
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return Response(content=content, status_code=response.status_code, headers=headers)

    return inner


def check_model_uri(model_uri: str) -> None:
    """One line naming what is wrong with `model_uri` and how to fix it, before MLflow's loader would answer with a
    traceback: no run id (`make serve` without RUN), a run that does not exist, a run without a logged model, a
    registered model or version that does not exist."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from harness.config import default_tracking_uri, redact_uri
    from harness.errors import ConfigError, DataError, ModelError
    from harness.tracking.journal import logged_model_id

    uri = default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    if model_uri.startswith("runs:"):
        run_id = model_uri[len("runs:/") :].split("/")[0]  # runs:/<run id>/<path>; `runs://model` names none
        if not run_id:
            raise ConfigError(
                f"'{model_uri}' names no run",
                "make serve RUN=<run id> (harness prints it at the end of a run), or MODEL=models:/<name>/<version>",
            )
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise DataError(
                f"MLflow run '{run_id}' not found in {redact_uri(uri)}",
                "check the run id (harness prints it at the end of a run) and MLFLOW_TRACKING_URI",
            ) from None
        legacy = any(a.path == "model/MLmodel" for a in client.list_artifacts(run_id, "model"))
        if logged_model_id(client, run_id) is None and not legacy:
            task = run.data.tags.get("task", "<task>")
            raise ModelError(
                f"MLflow run '{run_id}' ({run.info.run_name}) logged no model",
                f"train with log_model=true (make eval TASK={task} ARGS=log_model=true) and serve that run",
            )
    elif model_uri.startswith("models:/"):
        ref = model_uri[len("models:/") :]
        if not ref.startswith("m-"):  # a registered name/version or alias (m-...: a logged model's id)
            name, _, version = ref.partition("/")
            try:
                versions = client.search_model_versions(f"name='{name}'")
            except MlflowException:
                versions = []
            if not versions:
                raise ModelError(
                    f"no registered model '{name}' in {redact_uri(uri)}",
                    "serve a run (make serve RUN=<run id>) or a registered name (make tune ARGS=retrain_best=true "
                    "registers <task>-best)",
                )
            known = sorted({v.version for v in versions}, key=int)
            if version and not version.startswith("@") and version not in known and version != "latest":
                raise ModelError(
                    f"registered model '{name}' has no version {version} (it has {', '.join(known)})",
                    f"serve models:/{name}/{known[-1]}",
                )


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 5001) -> None:
    import mlflow.pyfunc
    import uvicorn

    from harness.errors import ModelError

    check_model_uri(model_uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as e:  # what is left: a model MLflow cannot load (a damaged folder, a missing flavor)
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:300]
        raise ModelError(f"cannot load {model_uri}: {first}", "serve a model harness logged (log_model=true)") from None
    print(f"serving {model_uri} on http://{host}:{port}/invocations (ping: /ping)", flush=True)
    uvicorn.run(app(model), host=host, port=port, log_level="warning")

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


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 5001) -> None:
    import mlflow.pyfunc
    import uvicorn

    model = mlflow.pyfunc.load_model(model_uri)
    print(f"serving {model_uri} on http://{host}:{port}/invocations (ping: /ping)", flush=True)
    uvicorn.run(app(model), host=host, port=port, log_level="warning")

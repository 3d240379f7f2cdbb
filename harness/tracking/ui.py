"""`make ui`: the MLflow UI on 127.0.0.1 over $MLFLOW_TRACKING_URI, saying at once where it will be and when it is up.

`mlflow ui` takes some 30 s to answer and prints nothing meanwhile; this prints the address first (the experiments
list in the Model training view, harness/tracking/links.py), starts it, and says "ready" once it answers. The store
reaches MLflow through the environment (MLFLOW_BACKEND_STORE_URI), never its command line: a server URL may hold a
password. Ctrl-C or SIGTERM stops it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def main(argv: list[str]) -> int:
    from harness.config import default_tracking_uri, redact_uri
    from harness.tracking import links

    port = int(argv[0]) if argv else 5000
    store = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    base = f"http://127.0.0.1:{port}"
    print(f"MLflow UI over {redact_uri(store)}: starting on {links.experiments_url(base)}", flush=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": store}
    proc = subprocess.Popen([str(mlflow), "ui", "--host", "127.0.0.1", "--port", str(port)], env=env)

    def stop(signum: int, frame: object) -> None:
        proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    try:
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    print(f"ready: {links.experiments_url(base)} (Ctrl-C stops it)", flush=True)
                    break
            except OSError:
                time.sleep(1)
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        return proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

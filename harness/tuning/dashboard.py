"""`make dashboard`: optuna-dashboard on 127.0.0.1 over $OPTUNA_STORAGE (sqlite, a database URL or journal:<file>).

The storage URL comes from the environment, never the command line, so no password shows in a process list."""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    from harness.config import redact_uri

    port = int(argv[0]) if argv else 8080
    storage = os.environ.get("OPTUNA_STORAGE") or "sqlite:///optuna.db"
    # said at once (the imports and the storage take seconds), at the address the app lives at: /dashboard/
    print(
        f"optuna-dashboard over {redact_uri(storage)}: http://127.0.0.1:{port}/dashboard/ (Ctrl-C stops it)", flush=True
    )
    import optuna_dashboard

    from harness.tuning.study import DEFAULT_STORAGE, open_storage

    optuna_dashboard.run_server(
        open_storage(os.environ.get("OPTUNA_STORAGE") or DEFAULT_STORAGE), host="127.0.0.1", port=port
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

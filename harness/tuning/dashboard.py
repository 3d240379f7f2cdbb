"""`make dashboard`: optuna-dashboard on 127.0.0.1 over $OPTUNA_STORAGE (sqlite, a database URL or journal:<file>).

The storage URL comes from the environment, never the command line, so no password shows in a process list."""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    import optuna_dashboard

    from harness.tuning.study import DEFAULT_STORAGE, open_storage

    port = int(argv[0]) if argv else 8080
    optuna_dashboard.run_server(
        open_storage(os.environ.get("OPTUNA_STORAGE") or DEFAULT_STORAGE), host="127.0.0.1", port=port
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Tracking (an engine-floor package): MLflow and the stores behind it. A run (`mlflow_run`), a study's and
seeds'/suites' parent runs (`study`, `parent`), the store check (`store`), the offline journal and its sync
(`journal`, `offline`, `sync`), step logging, plots, environment facts, UI links (`links`, `ui`).

May import: the ground (config, errors, paths, interrupts), metrics and the other engines (data, serving). Never
the run, the commands or the CLI.
"""

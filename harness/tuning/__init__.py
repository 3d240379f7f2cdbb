"""Hyperparameter search with Optuna: `harness tune <task>` (`make tune TASK=imdb TRIALS=20 WORKERS=4`).

- `space`: the search space, a YAML file (`configs/hpo/<family>.yaml` by default) of run-config keys — float
  (linear or log), int, or categorical, optionally conditional on another parameter's value (`when:`) — plus fixed
  overrides for every trial (`config:`). It is checked before anything runs: unknown keys, empty or inverted ranges,
  values the config would reject.
- `study`: one `Study` holds what a search is (task, space, storage, seed, pruner, trial budget, workers). Each
  trial is a harness run in objective mode (train + validate; the test split is never loaded) and a nested MLflow
  run under one parent run per study (harness/tracking/study.py). The objective is the task's main metric on the
  validation split, in the task's direction (generation and LM families: the validation loss, minimised, since
  generating for every validation example would dominate a trial).
- `pruning`: the validation metric is reported to Optuna at every validation; the decision is taken on rank 0 and
  broadcast, so it works under DDP. Successive halving (rungs tuned to the validations per trial) by default;
  median, Hyperband or none selectable.

Storage: a sqlite file (`optuna.db`) by default, or any SQLAlchemy URL. The same command resumes the same study.
Workers are separate processes sharing the study; sqlite waits for locks instead of failing, heartbeats mark a
killed worker's trial FAIL, and it is retried once.

On the commands floor (it drives runs). May import: the run, the engines, metrics and the ground. Never the
CLI.
"""

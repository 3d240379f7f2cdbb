"""harness: fine-tune and evaluate transformer language models, every number tracked in MLflow with its interval.

The package's folders are its floors, lowest first; a module imports its own floor and those below, never one above
(tests/test_ci_guards.py holds it; docs/layout.md says where a new command, task, family or engine goes):

- the ground, at the top of this folder: errors, paths, config, hub, runtime, interrupts
- metrics: `metrics/`, `evaluate_modules/`
- the engines: `data/`, `models/`, `families/` (with the task registry), `tracking/`, `compress/`, `probes/`, and
  `serving.py` with `pyfunc_entry.py` (the code a logged MLflow model loads, kept at this import path)
- the run: `run/`
- the commands: `commands/`, `tuning/`
- the command line: `cli.py`
"""

import os as _os

# Process-wide defaults for the libraries harness drives, set before any of them is imported (a value the user set
# wins): no tokenizer thread pools forked into DataLoader workers, no MLflow info chatter or artifact progress bars,
# and not MLflow's "View run at <tracking URI>" lines, which print the URI as given, password included (harness
# prints the run id and the URI with the password masked). A tracking server that stops answering is retried 3 times
# over ~7 s (MLflow's default is 7 times over minutes) before a run keeps its records in its journal and goes on.
for _key, _value in (
    ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3"),
    ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
    ("MLFLOW_LOGGING_LEVEL", "WARNING"),
    ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
    ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"),
):
    _os.environ.setdefault(_key, _value)

"""harness: fine-tune and evaluate transformer language models, every number tracked in MLflow with its interval."""

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

"""`harness compress <run> --method M` (`make compress RUN=... METHOD=...`): what a smaller, faster model costs.

The source run's logged model is evaluated again on the source's test examples (its data and eval settings), with
the compressed variant standing in for the model in the test loop, as a new MLflow run nested under the source
(`mlflow.parentRunId`, tags `harness.compress.*`). The run holds the usual test metrics with intervals and
per-example predictions, and beside them: size on disk, batch-1 latency p50/p95 and batch-32 throughput of the
variant and of the source model measured in the same process on this CPU (threads stated, warm-up excluded), their
ratios, a paired comparison with the source on the same examples, and a table and plot of every variant of the
source so far (`compression/`).

The package's top level stays light: the command line's parser reads `METHODS` without importing torch or Lightning;
the command itself is `harness.compress.run.compress`.
"""

from __future__ import annotations

# distill: harness/compress/distill.py; prune-structured (neurons, vocabulary rows, layers, then a recovery fine-tune):
# harness/compress/structured.py; prune: unstructured zeros in a dense file (no smaller, no faster; for comparison)
METHODS = ("onnx", "onnx-int8", "torch-int8", "prune", "prune-structured", "distill")
TRAINED = ("distill", "prune-structured")  # methods whose variant trains (on the source run's data and schedule)

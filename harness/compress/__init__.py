"""Compression engines (an engine-floor package): the variants `harness compress` builds from a run's model.

- `engines`: ONNX export and ONNX Runtime int8, torch dynamic int8, unstructured pruning; a variant's files
- `structured`: structured pruning (neurons, vocabulary rows, layers); `distill`: a shallower student
- `measure`: size on disk, batch-1 latency and batch-32 throughput in one process

The command itself (evaluating a variant as a run nested under the source, the variants table) is
`harness.commands.compress`. The package's top level stays light: the command line's parser reads `METHODS`
without importing torch or Lightning.

May import: the ground, metrics and the other engines (models, data). Never the run, the commands or the CLI.
"""

from __future__ import annotations

# distill: harness/compress/distill.py; prune-structured (neurons, vocabulary rows, layers, then a recovery fine-tune):
# harness/compress/structured.py; prune: unstructured zeros in a dense file (no smaller, no faster; for comparison)
METHODS = ("onnx", "onnx-int8", "torch-int8", "prune", "prune-structured", "distill")
TRAINED = ("distill", "prune-structured")  # methods whose variant trains (on the source run's data and schedule)

"""The run floor: one `harness run` from its config to its MLflow run, and the Lightning machinery it drives.

- `runner`: a run as named phases over a RunContext (resolve, build, fit, test, log), resume and the state file
- `training`: the Lightning Trainer a run builds (strategy, precision, checkpoints, callbacks)
- `callbacks`: progress lines, the step monitor, the divergence check, compile
- `checkpoints`: atomic checkpoint writes, unreadable checkpoints named
- `launch`: torchrun / SLURM / by-hand nodes joined before anything else
- `runlock`: one run per output folder at a time

May import: the ground (errors, paths, config, hub, runtime, interrupts), metrics, and the engines (data, models,
families, tracking, compress, probes, serving). Never the commands, tuning or the CLI, which build on it.
"""

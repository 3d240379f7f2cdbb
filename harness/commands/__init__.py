"""The commands floor: what each `harness <command>` does beyond a single run, one module per command.

check, compare (with systems: runs and files as compared systems), score, seeds, suite, report, probe, serve,
server (PostgreSQL + MLflow), compress, and the GPU check with its measurements (gpucheck, benchtrain,
stepprofile). `harness tune` lives in `harness.tuning`, on this floor as well.

May import: everything below it: the run (`harness.run`), the engines, metrics and the ground. Never the CLI; the
CLI (`harness/cli.py`) imports a command's module only when that command runs, so the parser stays light.
A new command: a module here, a subparser in `harness/cli.py`, a make target if users reach it by make.
"""

"""Bias probes (an engine-floor package): one module per probe, the shared spec and result types, LM scoring
and the templates. The `harness probe` command is `harness.commands.probe`.

May import: the ground, metrics and the other engines (models, families with the task registry, tracking). Never
the run, the commands or the CLI.
"""

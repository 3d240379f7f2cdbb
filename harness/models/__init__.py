"""Models (an engine-floor package): LightningModules, one per model family, on one base (`base`); resolving
model.name to weights (`loading`); transfer modes (`transfer`: frozen, LoRA, prompt tuning); distillation students
(`distill`); sharding for trainer.strategy=fsdp (`sharding`: FSDP2 per layer, its Lightning strategy).

May import: the ground, metrics and the other engines (data, compress). Never the run, the commands or the CLI.
"""

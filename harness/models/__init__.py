"""LightningModules, one per model family, and resolving model.name to weights."""

"""Bias probes: one module per probe, the shared spec and result types, and LM scoring."""

"""Data (an engine-floor package): finding, loading, checking and splitting task data; tokenization, the
length-bucketed sampler, batching per family, and splits held on the device (`resident`).

May import: the ground (config, errors, hub, runtime), metrics and the other engines (families). Never the run,
the commands or the CLI.
"""

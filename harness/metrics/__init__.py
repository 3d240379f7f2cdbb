"""Metrics: their definitions, intervals and paired tests. This package's top imports nothing heavy, so the
command line can read its defaults while it builds its parser.

The metrics floor, above the ground. May import: the ground (config, errors). Never the engines, the run,
the commands or the CLI: every floor above scores with it.
"""

PAIRED_SEED = 12345  # sacreBLEU's default (SACREBLEU_SEED)
PAIRED_RESAMPLES = 1000  # sacreBLEU's defaults

"""Metrics: their definitions, intervals and paired tests. This package's top imports nothing heavy, so the
command line can read its defaults while it builds its parser."""

PAIRED_SEED = 12345  # sacreBLEU's default (SACREBLEU_SEED)
PAIRED_RESAMPLES = 1000  # sacreBLEU's defaults

"""harness bleu as an `evaluate` module, offline: `evaluate.load(harness.evaluate_modules.path("bleu"))`.
The metric itself is harness/evaluate_modules/base.py over harness/metrics/generation.py."""

from harness.evaluate_modules import base


class HarnessBleu(base.HarnessMetric):
    metric = "bleu"

"""harness chrf as an `evaluate` module, offline: `evaluate.load(harness.evaluate_modules.path("chrf"))`.
The metric itself is harness/evaluate_modules/base.py over harness/metrics/generation.py."""

from harness.evaluate_modules import base


class HarnessChrf(base.HarnessMetric):
    metric = "chrf"

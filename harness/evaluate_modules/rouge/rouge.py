"""harness rouge as an `evaluate` module, offline: `evaluate.load(harness.evaluate_modules.path("rouge"))`.
The metric itself is harness/evaluate_modules/base.py over harness/metrics/generation.py."""

from harness.evaluate_modules import base


class HarnessRouge(base.HarnessMetric):
    metric = "rouge"

"""The examples in the metric modules' docstrings are tests: each one's printed output must be exact."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import harness.metrics

# the metric modules, and the modules whose words and links users read (system labels, MLflow UI links)
MODULES = sorted(m.name for m in pkgutil.iter_modules(harness.metrics.__path__, "harness.metrics.")) + [
    "harness.commands.compare",
    "harness.commands.benchtrain",
    "harness.config",
    "harness.commands.gpucheck",
    "harness.data.resident",
    "harness.commands.report",
    "harness.tracking.links",
]


def test_every_metric_module_is_collected():
    assert {
        "harness.metrics.bootstrap",
        "harness.metrics.classification",
        "harness.metrics.generation",
        "harness.metrics.rouge",
        "harness.metrics.squad",
    } <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed (see above)"

"""User-facing errors.

A `HarnessError` is a mistake the user can fix (bad config, missing data, unknown model). The CLI prints it as
one line with its fix and exits non-zero, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class HarnessError(Exception):
    """A problem in the user's input, stated with how to fix it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.problem} — {self.fix}" if self.fix else self.problem


class ConfigError(HarnessError):
    """A config file, task file or override is invalid."""


class DataError(HarnessError):
    """Data could not be found, or a row does not fit the task's schema."""


class ModelError(HarnessError):
    """Model weights could not be resolved or loaded."""

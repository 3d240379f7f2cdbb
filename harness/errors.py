"""User-facing errors.

A `HarnessError` is a mistake the user can fix (bad config, missing data, unknown model). The CLI prints it as
one line with its fix and exits non-zero, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import pickle
import re

# a SQLite tracking store another process keeps locked
LOCKED_FIX = (
    "let the other writer finish (a long query in an MLflow UI, another run) and run the same command again; for "
    "several writers at once use a tracking server (make server, then MLFLOW_TRACKING_URI)"
)


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


class TrackingError(HarnessError):
    """The MLflow tracking store cannot be used (unreachable, read-only, corrupt, missing driver)."""


class RunFailed(HarnessError):
    """A run started but cannot give a result that means anything (e.g. training diverged)."""


def unsafe_weights_error(path: object, detail: str) -> ModelError:
    """A weights file the safe loader refused: it would need to run pickled code. Never suggest loading it anyway."""
    found = re.search(r"GLOBAL ([\w.]+)", detail)
    what = f" ({found.group(1)})" if found else ""
    return ModelError(
        f"{path}: the weights were refused as unsafe: the file holds pickled Python objects{what} that only an unsafe "
        "load would run",
        "use the model's safetensors weights (model.safetensors), or convert them to safetensors where you trust "
        "their source",
    )


def user_error(exc: BaseException) -> HarnessError | None:
    """The user's problem inside an exception a library raised on their behalf, as one HarnessError; None when the
    exception is a bug (it keeps its traceback). The one place library errors become user errors: the CLI calls it
    for what reaches it, and a run calls it before marking itself FAILED."""
    if isinstance(exc, HarnessError):
        return exc
    if isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in str(exc).lower():
        return unsafe_weights_error("a weights file", str(exc))
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        where = f" writing {exc.filename}" if exc.filename else ""
        return RunFailed(
            f"no space left on the device{where} ({os.strerror(exc.errno)})",
            "free some space or point tracking.output_dir at a disk with room, then run the same command again "
            "(it resumes from the last complete checkpoint)",
        )
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES) and exc.filename:
        return RunFailed(
            f"cannot write {exc.filename} ({os.strerror(exc.errno)})",
            "run from a folder you can write to, or set tracking.output_dir to one",
        )
    name = type(exc).__name__
    if name in ("MlflowException", "OperationalError") and "database is locked" in str(exc):
        return RunFailed(
            "the tracking store (an SQLite file) stayed locked by another process past SQLite's wait of 20 s",
            LOCKED_FIX,
        )
    # the GPU's words, and the CPU's (its attention obeys the same kernel switches)
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in ("No available kernel", "No viable backend")):
        return RunFailed(
            "PyTorch's scaled-dot-product attention has no kernel it may use for these inputs (model.sdpa_backend "
            "allows only one; flash, for one, takes no padding mask)",
            "set model.sdpa_backend=auto, or the kernel make gpu-check kept",
        )
    if name == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return RunFailed(
            f"the GPU ran out of memory ({str(exc).splitlines()[0][:200]})",
            "lower data.batch_size (and data.eval_batch_size), or data.max_length; trainer.accumulate_grad_batches "
            "keeps the effective batch",
        )
    return None

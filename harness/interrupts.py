"""Ctrl-C and SIGTERM stop a command between tracking writes, never inside one.

Python raises KeyboardInterrupt wherever the main thread happens to be when the signal comes. Inside a tracking
write that can be halfway through a SQL transaction on the run's store: the interrupted connection keeps its lock,
and every write after it (closing the run as KILLED, the study's trial tags) waits out SQLite's busy timeout and
fails with "database is locked". Here a signal that arrives while the main thread is inside `shield()` is held
until the write is done and raised as soon as it returns; a second signal during the same write stops at once (a
write that hangs on a server that went away can still be interrupted).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Iterator
from typing import Any, Optional

_depth = 0  # nesting of shield() on the main thread
_held: Optional[int] = None  # a signal that came during a write, raised when it returns
terminated = False  # SIGTERM (not Ctrl-C) stopped the command


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def shield() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM until the block returns (main thread only; signals only ever interrupt that one)."""
    global _depth, _held
    if not _on_main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _held is not None:
            signum, _held = _held, None
            raise KeyboardInterrupt(f"signal {signum}")


def _interrupt(signum: int, frame: Any) -> None:
    global _held, terminated
    if signum == signal.SIGTERM:
        terminated = True
    if _depth and _held is None:
        _held = signum  # raised when the write in flight returns
        return
    _held = None
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interrupts_between_writes() -> Iterator[None]:
    """SIGTERM (a scheduler's time limit, `kill`) stops a command the way Ctrl-C does, and both wait for the
    tracking write in flight. Only in the main thread, where signal handlers can be set; DDP workers started by
    Lightning get theirs from Lightning."""
    global terminated
    if not _on_main_thread():
        yield
        return
    terminated = False
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class ShieldedClient:
    """An MlflowClient whose calls are never cut in half by Ctrl-C or SIGTERM (see the module's docstring)."""

    def __init__(self, client: Any):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            with shield():
                return attr(*args, **kwargs)

        return call


def tracking_client(uri: Optional[str] = None) -> Any:
    """An MlflowClient for `uri`, shielded from interrupts."""
    from mlflow.tracking import MlflowClient

    return ShieldedClient(MlflowClient(uri))
